"""The small ViT: its stated size, LoRA on q and v by name, the subspace wrapper, FSDP units; and the
Hugging Face models (skipped without transformers): sizes, LoRA on GPT-2's Conv1D, tied weights
counted and projected once."""

import re

import pytest
import torch
from torch import nn

from distid import lora
from distid.models import ViT, build_model, count_params, seeded
from distid.parallel.fsdp import shard_units
from distid.subspace import SubspaceModel
from distid.train import train_step


def stated_D(doc: str) -> int:
    """The 'D = 306,826' a docstring states."""
    return int(re.search(r"D = ([\d,]+)", doc).group(1).replace(",", ""))


def test_vit_size_is_the_one_its_docstring_states():
    import distid.models.vit as vit

    model = build_model("vit")
    assert count_params(model) == stated_D(vit.__doc__) == 306_826
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.patches(torch.randn(2, 1, 28, 28)).shape == (2, 16, 49)


def test_vit_patches_are_the_image_in_row_major_order():
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    p = ViT().patches(x)
    torch.testing.assert_close(p[0, 1].view(7, 7), x[0, 0, :7, 7:14])   # second patch: top row, columns 7–13
    torch.testing.assert_close(p[0, 4].view(7, 7), x[0, 0, 7:14, :7])   # fifth: second row of patches


def test_lora_targets_q_and_v_of_every_block_by_suffix_or_glob():
    qv = [f"blocks.{i}.attn.{p}" for i in range(4) for p in "qv"]
    for targets in (["q", "v"], ["*.q", "*.v"], ["attn.q", "attn.v"]):
        assert list(lora._resolve(build_model("vit"), targets)) == qv
    model = lora.inject(build_model("vit"), 2, 2.0, ["q", "v"])
    assert count_params(model, trainable_only=True) == 8 * 2 * (96 + 96)
    assert isinstance(model.blocks[0].attn.q, lora.LoRALinear) and isinstance(model.blocks[0].attn.k, nn.Linear)
    with pytest.raises(ValueError, match="matches no"):
        lora.inject(build_model("vit"), 1, 1.0, ["attn.x"])


def test_suffix_matching_needs_a_whole_name_component():
    assert list(lora._resolve(build_model("vit"), ["o"])) == [f"blocks.{i}.attn.o" for i in range(4)]
    with pytest.raises(ValueError, match="matches no"):
        lora._resolve(build_model("vit"), ["c1"])  # not a suffix after a dot


def test_vit_in_a_subspace_starts_at_theta0_and_trains_d():
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    plain = build_model("vit")
    ref = plain(x)
    sm = SubspaceModel(build_model("vit"), 50, "fastfood", seed=0)
    assert sm.D == 306_826
    torch.testing.assert_close(sm(x), ref)
    opt = torch.optim.SGD([sm.d], lr=0.1)
    train_step(sm, opt, x, y)
    assert sm.d.abs().sum() > 0 and sm.d.grad.shape == (50,)


def test_vit_fsdp_units_are_its_layers():
    units = shard_units(build_model("vit"))
    assert len(units) == 1 + 4 * 8 + 2  # embed; per block 2 norms, q k v o, fc1 fc2; norm, head
    assert all(isinstance(u, (nn.Linear, nn.LayerNorm)) for u in units)


def test_a_module_owning_a_tied_weight_is_left_to_the_root_unit():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.mid, self.out = nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

    m = Tied()
    assert shard_units(m) == [m.mid]


# ---- Hugging Face transformers (optional) ----

def _hf():
    pytest.importorskip("transformers")
    from distid.models import hf

    return hf


def test_hf_model_sizes_are_the_ones_their_docstrings_state():
    hf = _hf()
    vit, gpt2 = build_model("hf_vit"), seeded(hf.hf_gpt2, 0)
    assert count_params(vit) == stated_D(hf.hf_vit.__doc__) == 72_074
    assert count_params(gpt2) == stated_D(hf.hf_gpt2.__doc__) == 34_688
    assert vit(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    x, y = hf.byte_batch(3, context=32, seed=1)
    assert x.shape == (3, 32) and y.shape == (96,) and gpt2(x).shape == (96, 256)
    assert torch.equal(x[:, 1:].reshape(3, -1), y.view(3, 32)[:, :-1])  # y is x shifted by one


def test_gpt2_tie_is_counted_once_and_survives_subspace_training():
    hf = _hf()
    model = seeded(hf.hf_gpt2, 0)
    head, wte = model.hf.lm_head, model.hf.transformer.wte
    assert head.weight is wte.weight
    with_dup = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert with_dup == count_params(model) + wte.weight.numel()
    sm = SubspaceModel(model, 64, "fastfood", seed=0)
    assert sm.D == count_params(seeded(hf.hf_gpt2, 0)) == 34_688  # projected once, not twice
    opt = torch.optim.Adam([sm.d], lr=0.05)
    for step in range(3):
        train_step(sm, opt, *hf.byte_batch(8, seed=step))
    assert head.weight is wte.weight  # the frozen buffers are still one tensor
    theta = sm.params_dict()
    assert "hf.lm_head.weight" not in theta  # one slice of θ for both names
    fresh = seeded(hf.hf_gpt2, 1)
    fresh.load_state_dict({k: v.detach() for k, v in theta.items()}, strict=False)
    assert fresh.hf.lm_head.weight is fresh.hf.transformer.wte.weight
    x, _ = hf.byte_batch(2, seed=9)
    with torch.no_grad():  # the trained subspace model's head uses the trained embedding
        torch.testing.assert_close(sm(x), fresh(x))
        assert not torch.equal(theta["hf.transformer.wte.weight"], sm.params_dict(sm.theta0)["hf.transformer.wte.weight"])


def test_lora_on_gpt2_conv1d_is_exact_at_init_merges_and_counts():
    hf = _hf()
    model = seeded(hf.hf_gpt2, 0)
    x, y = hf.byte_batch(4, seed=0)
    before = model(x)
    assert lora.lora_param_count(model, 2, ["c_attn"]) == 2 * 2 * (32 + 96)
    model = lora.inject(model, 2, 4.0, ["c_attn"])  # PEFT's default target for GPT-2
    wrapped = [m for m in model.modules() if isinstance(m, lora.LoRAConv1D)]
    assert len(wrapped) == 2 and count_params(model, trainable_only=True) == 512
    torch.testing.assert_close(model(x), before)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        train_step(model, opt, x, y)
    assert wrapped[0].delta_weight().shape == wrapped[0].base.weight.shape == (32, 96)
    out = model(x)
    assert not torch.allclose(out, before)
    merged = lora.merge(model)
    assert not any(isinstance(m, lora.LoRAConv1D) for m in merged.modules())
    torch.testing.assert_close(merged(x), out, rtol=1e-5, atol=1e-5)


def test_lora_on_hf_vit_targets_query_and_value():
    hf = _hf()
    model = build_model("hf_vit")
    targets = hf.qv_targets(model)
    chosen = lora._resolve(model, targets)
    assert len(chosen) == 4 and all(n.rpartition(".")[2] in targets for n in chosen)
    model = lora.inject(model, 2, 2.0, targets)
    assert count_params(model, trainable_only=True) == 4 * 2 * (64 + 64)


def test_without_transformers_building_says_how_to_install(monkeypatch):
    import sys

    from distid.models import MissingDependency

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers → ImportError
    with pytest.raises(MissingDependency, match=r"pip install -e '\.\[hf\]'"):
        build_model("hf_vit")
