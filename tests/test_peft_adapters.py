"""PEFT's VeRA, FourierFT and Uni-LoRA through distid (models/peft_adapters.py): trainable counts by
their formulas, random parts keyed by (seed, purpose), the global generator left alone, DDP sending
4 bytes per trainable number (also with local steps), and bad targets refused in one line."""

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.config import ConfigError, load_config
from distid.run.build import build

pytest.importorskip("peft", reason="needs peft: pip install -e .[hf] (launch/setup.sh installs it)")
D = 199_210


def built(method, *more, seed=0):
    return build(load_config(None, [f"train.method={method}", f"train.seed={seed}", *more]))


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_trainable_counts_follow_each_method_s_formula():
    # VeRA: λ_d [r] and λ_b [out] per layer; FourierFT: n per layer; Uni-LoRA: the one vector θ_d [d]
    assert trainable(built("vera")) == 3 * 256 + (200 + 200 + 10)
    assert trainable(built("vera", "lora.rank=16")) == 3 * 16 + (200 + 200 + 10)
    assert trainable(built("fourierft", "lora.n_frequency=100")) == 3 * 100
    assert trainable(built("unilora", "subspace.d=1000")) == 1000
    frozen = sum(p.numel() for p in built("unilora").parameters() if not p.requires_grad)
    assert frozen == D


def test_random_parts_are_keyed_by_seed_and_leave_the_global_generator_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = built("vera"), built("vera"), built("vera", seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    buf = lambda m: next(t for name, t in m.named_buffers() if "vera_A" in name)
    assert torch.equal(buf(a), buf(b)) and not torch.equal(buf(a), buf(c))
    spec = lambda m: next(p for name, p in m.named_parameters() if "spectrum" in name).detach()
    assert torch.equal(spec(built("fourierft")), spec(built("fourierft")))
    assert not torch.equal(spec(built("fourierft")), spec(built("fourierft", seed=1)))


def test_targets_that_match_nothing_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="train.method = 'vera'") as e:
        built("vera", "lora.targets=nothing_here")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
@pytest.mark.parametrize("method,h", [("vera", 1), ("fourierft", 1), ("unilora", 1), ("vera", 3)])
def test_ddp_sends_four_bytes_per_trainable_number(dist_pool, tmp_path, method, h):
    over = [f"data.root={DATA_ROOT}", "train.global_batch=600", "train.steps=12", f"train.method={method}",
            "train.lr=1e-2", "lora.n_frequency=50", "subspace.d=300", "dist.strategy=local_sgd", f"local_sgd.every={h}"]
    results = dist_pool(2).run("rank_targets:train_run", over, str(tmp_path), timeout=240)
    for s, _ in results:
        t = s["trainable_params"]
        assert s["total_params"] == D and t == {"fourierft": 150, "unilora": 300}.get(method, 1178)
        assert s["comm_payload_bytes_per_step"]["total"] == 4 * t / h == s["comm_payload_formula"]["total"]
    assert torch.equal(results[0][1], results[1][1])
