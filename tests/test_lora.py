"""LoRA: W = W₀ + (α/r)·B·A — exact at init, merge ≡ wrapped model, only factors trainable, budgets."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distid.lora import (
    LoRAConv2d,
    LoRALinear,
    contiguous_runs,
    inject,
    layers,
    lora_param_count,
    lora_state_dict,
    match_budget,
    match_budget_targets,
    merge,
)
from distid.config import ConfigError
from distid.models import build_model, count_params
from distid.train import train_step


class Custom(nn.Module):
    """A user-defined module: nested, strided/padded/dilated conv, a 3-D Linear input, an unadapted grouped conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1)
        self.block = nn.ModuleDict({"conv": nn.Conv2d(8, 8, (3, 2), padding=(2, 1), dilation=2, bias=False),
                                    "dw": nn.Conv2d(8, 8, 3, padding=1, groups=8)})
        self.head = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 5))

    def forward(self, x):
        h = self.block["dw"](F.relu(self.block["conv"](F.relu(self.stem(x)))))
        return self.head(h.flatten(2).transpose(1, 2)).mean(1)


def mlp_input(n=4):
    return torch.randn(n, 1, 28, 28)


CASES = {"mlp": (lambda: build_model("mlp"), mlp_input),
         "lenet": (lambda: build_model("lenet"), mlp_input),
         "custom": (lambda: Custom(), lambda n=4: torch.randn(n, 3, 12, 12))}


def lora_names(model):
    return [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B")]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("r", [1, 2])
def test_output_equals_base_at_init(case, r):
    build, data = CASES[case]
    torch.manual_seed(0)
    model, x = build(), data()
    before = model(x)
    inject(model, r=r, alpha=2 * r + 1.0)
    assert any(isinstance(m, (LoRALinear, LoRAConv2d)) for m in model.modules())
    assert torch.equal(model(x), before)


@pytest.mark.parametrize("case", CASES)
def test_only_lora_factors_train_and_merge_matches(case):
    build, data = CASES[case]
    torch.manual_seed(1)
    model, x = build().double(), data(8).double()
    inject(model, r=2, alpha=4.0, seed=3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and trainable == lora_names(model)  # what DDP/FSDP would all-reduce
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    y = torch.randint(0, 5, (8,))
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == (n in trainable), n
            assert p.requires_grad == (n in trainable), n
        opt.step()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n
    assert all(model.get_parameter(n).abs().sum() > 0 for n in trainable if n.endswith("lora_B"))
    with torch.no_grad():
        wrapped = model(x)
        merged = merge(model)
        assert merged is model
        assert not any(isinstance(m, (LoRALinear, LoRAConv2d)) for m in merged.modules())
        torch.testing.assert_close(merged(x), wrapped, rtol=1e-12, atol=1e-12)


def test_delta_weight_shapes_and_formula():
    conv, lin = nn.Conv2d(6, 16, 5), nn.Linear(7, 3)
    lc, ll = LoRAConv2d(conv, 2, 3.0), LoRALinear(lin, 2, 3.0)
    assert lc.lora_A.shape == (2, 6, 5, 5) and lc.lora_B.shape == (16, 2, 1, 1)
    assert ll.lora_A.shape == (2, 7) and ll.lora_B.shape == (3, 2)
    for m in (lc, ll):
        nn.init.normal_(m.lora_B)
        assert m.delta_weight().shape == m.base.weight.shape
        assert "r=2, alpha=3.0" in repr(m)
    expect = 1.5 * (ll.lora_B @ ll.lora_A)
    torch.testing.assert_close(ll.delta_weight(), expect)
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(lc(x), F.conv2d(x, conv.weight + lc.delta_weight(), conv.bias), rtol=1e-5, atol=1e-5)
    assert isinstance(lc.merged(), nn.Conv2d) and type(ll.merged()) is nn.Linear


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("r", [1, 3])
def test_lora_param_count_equals_actual(case, r):
    build, _ = CASES[case]
    model = build()
    names = list(layers(model))
    for targets in (None, names[:1], names[-2:]):
        m = build()
        expect = lora_param_count(m, r, targets)
        assert sum(p.numel() for p in m.parameters()) == count_params(build())  # not modified
        inject(m, r, 1.0, targets)
        assert count_params(m, trainable_only=True) == expect


def test_layer_names_and_patterns():
    assert list(layers(build_model("mlp"))) == ["1", "3", "5"]
    assert list(layers(build_model("lenet"))) == ["0", "3", "7", "9", "11"]
    assert list(layers(Custom())) == ["stem", "block.conv", "head.0", "head.2"]  # grouped conv skipped
    m = inject(Custom(), 1, 1.0, targets=["head.*"])
    assert isinstance(m.head[0], LoRALinear) and isinstance(m.stem, nn.Conv2d)
    m = inject(build_model("mlp"), 1, 1.0, targets=["[13]"])
    assert [type(m[i]) for i in (1, 3, 5)] == [LoRALinear, LoRALinear, nn.Linear]
    assert list(layers(m)) == ["5"]  # wrapped bases are not candidates again


def test_single_layer_model_returns_wrapper():
    lin = nn.Linear(5, 4)
    x = torch.randn(3, 2, 5)
    m = inject(lin, 2, 2.0)
    assert isinstance(m, LoRALinear) and torch.equal(m(x), lin(x))
    assert type(merge(m)) is nn.Linear


def test_budget_numbers():
    mlp, lenet = build_model("mlp"), build_model("lenet")
    assert lora_param_count(mlp, 1) == 784 + 200 + 200 + 200 + 200 + 10 == 1594
    assert lora_param_count(lenet, 1) == (25 + 6) + (150 + 16) + (256 + 120) + (120 + 84) + (84 + 10) == 871
    assert match_budget(mlp, 750) == (1, 1594)
    assert match_budget(mlp, 5000) == (3, 4782)
    assert match_budget(lenet, 750) == (1, 871)
    assert match_budget_targets(mlp, 750) == (["3"], 2, 800)
    assert match_budget_targets(lenet, 750) == (["7"], 2, 752)


@pytest.mark.parametrize("case", ["mlp", "lenet"])
@pytest.mark.parametrize("d", [1, 100, 750, 797, 2391, 5000, 12345, 10 ** 6])
def test_match_budget_against_brute_force(case, d):
    model = CASES[case][0]()
    names = list(layers(model))
    for targets in (None, names[:1], names[1:3]):
        ranks = []
        for r in itertools.count(1):
            try:
                ranks.append((abs(lora_param_count(model, r, targets) - d), r))
            except ValueError:
                break
        _, r = min(ranks)
        assert match_budget(model, d, targets) == (r, lora_param_count(model, r, targets))
        assert match_budget(model, d, targets, max_rank=1) == (1, lora_param_count(model, 1, targets))
    runs = contiguous_runs(model)
    assert len(runs) == len(names) * (len(names) + 1) // 2 and names in runs
    best = min((abs(match_budget(model, d, t)[1] - d), match_budget(model, d, t)[0], i) for i, t in enumerate(runs))
    t = runs[best[2]]
    assert match_budget_targets(model, d) == (t, *match_budget(model, d, t))
    assert match_budget_targets(model, d, [names])[0] == names


def test_errors():
    mlp = build_model("mlp")
    with pytest.raises(ValueError, match="r=0"):
        inject(mlp, 0, 1.0)
    with pytest.raises(ValueError, match=r"rank r=11 exceeds min\(in, out\)=10 of layer '5'"):
        inject(mlp, 11, 1.0)
    with pytest.raises(ValueError, match=r"rank r=7 exceeds min\(in, out\)=6 of layer '0'"):
        lora_param_count(build_model("lenet"), 7)
    with pytest.raises(ValueError, match="matches no.*available layers: '1', '3', '5'"):
        inject(mlp, 1, 1.0, targets=["fc1"])
    with pytest.raises(ValueError, match="no layer targeted"):
        inject(mlp, 1, 1.0, targets=[])
    with pytest.raises(ValueError, match="no layer targeted"):
        inject(nn.Sequential(nn.ReLU()), 1, 1.0)
    with pytest.raises(ValueError, match="groups=1"):
        LoRAConv2d(nn.Conv2d(8, 8, 3, groups=8), 1, 1.0)
    assert all(p.requires_grad for p in mlp.parameters())  # failed injects changed nothing
    with pytest.raises(ValueError, match="none"):  # available layers listed even when there are none
        inject(nn.Sequential(nn.ReLU()), 1, 1.0, targets=["x"])


def test_seed_determinism_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a, b, c = (inject(build_model("lenet"), 2, 1.0, seed=s) for s in (5, 5, 6))
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = lora_state_dict(a), lora_state_dict(b), lora_state_dict(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(not torch.equal(sa[k], sc[k]) for k in sa if k.endswith("lora_A"))
    # PEFT's rule: A ~ U(-1/√fan_in, 1/√fan_in) (Kaiming-uniform with a=√5)
    A = a[7].lora_A
    assert A.abs().max() <= 1 / 256 ** 0.5 and A.abs().max() > 0.9 / 256 ** 0.5


def test_lora_state_dict_is_a_tiny_checkpoint():
    torch.manual_seed(0)
    model = inject(build_model("mlp"), 2, 4.0)
    for n in lora_names(model):
        nn.init.normal_(model.get_parameter(n))
    sd = lora_state_dict(model)
    assert sorted(sd) == sorted(lora_names(model)) == sorted(f"{i}.lora_{f}" for i in "135" for f in "AB")
    assert sum(v.numel() for v in sd.values()) == lora_param_count(build_model("mlp"), 2)
    fresh = inject(build_model("mlp"), 2, 4.0, seed=9)
    fresh.load_state_dict(sd, strict=False)
    x = mlp_input()
    assert torch.equal(fresh(x), model(x))


def test_peft_get_peft_model_trains():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = peft.get_peft_model(build_model("mlp"), peft.LoraConfig(r=1, lora_alpha=2, target_modules=["1", "3", "5"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == lora_param_count(build_model("mlp"), 1)
    x, y = mlp_input(16), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = [train_step(model, opt, x, y)[0].item() for _ in range(20)]
    assert losses[-1] < losses[0]


def test_modules_to_save_train_the_head_fully_beside_lora():
    from distid.config import load_config
    from distid.run.build import build

    cfg = load_config(None, ["model.name=vit", "train.method=lora", "lora.targets=q,v", "lora.rank=16",
                             "lora.modules_to_save=head"])
    model = build(cfg, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    assert count_params(model, trainable_only=True) == 16 * 2 * 4 * (96 + 96) + 96 * 10 + 10
    with pytest.raises(ConfigError, match="names no module"):
        build(load_config(None, ["train.method=lora", "lora.modules_to_save=nohead"]), 1)
