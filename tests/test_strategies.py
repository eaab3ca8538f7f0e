"""LoRA and FSDP in distid.train (gloo, 2 and 4 ranks): FSDP and DDP end at the same parameters,
and every strategy hands its collectives exactly the bytes the formulas say."""

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distpool import RankFailed

pytestmark = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
D = 199_210
# SGD, not Adam: Adam's first steps move each coordinate by ±lr whatever the gradient's size, so
# a gradient within rounding of zero (LoRA's A factors start with exactly zero gradient) would flip
# sign between two reduction orders and the runs would part by lr — a property of Adam, not of FSDP.
METHODS = {"full": ["train.method=full", "train.optimizer=sgd", "train.lr=0.05"],
           "lora": ["train.method=lora", "train.optimizer=sgd", "train.lr=0.05"],
           "subspace": ["train.method=subspace", "subspace.d=200", "train.optimizer=sgd", "train.lr=0.5"]}


def initial(method: str) -> torch.Tensor:
    """The trainable parameters before any step, flattened in the order train_run uses."""
    from distid.config import load_config
    from distid.run.build import build

    model = build(load_config(None, METHODS[method]), 1)
    state = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    return torch.cat([state[k].reshape(-1) for k in sorted(state)])


def train(pool, tmp_path, method, strategy):
    over = [f"data.root={DATA_ROOT}", "train.steps=13", "train.log_every=13", "train.global_batch=96",
            f"dist.strategy={strategy}", *METHODS[method]]
    return pool.run("rank_targets:train_run", over, str(tmp_path / f"{method}-{strategy}"), timeout=240)


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("method", list(METHODS))
def test_fsdp_and_ddp_reach_the_same_parameters_and_the_formulas(dist_pool, tmp_path, n, method):
    pool = dist_pool(n)
    ddp, fsdp = train(pool, tmp_path, method, "ddp"), train(pool, tmp_path, method, "fsdp")
    torch.testing.assert_close(fsdp[0][1], ddp[0][1], rtol=1e-4, atol=1e-6)
    assert (ddp[0][1] - initial(method)).abs().max() > 1e-4, "training did not move the parameters"
    for results in (ddp, fsdp):
        s = results[0][0]
        assert s["comm_payload_bytes_per_step"] == pytest.approx(s["comm_payload_formula"]), s["comm_payload_bytes_per_step"]
        for _, params in results:  # every rank ends with the same (gathered) trainable parameters
            assert torch.equal(params, results[0][1])


def test_lora_under_ddp_sends_exactly_the_adapters(dist_pool, tmp_path):
    s = train(dist_pool(2), tmp_path, "lora", "ddp")[0][0]
    assert s["lora_rank"] == 1 and s["trainable_params"] == 784 + 200 + 200 + 200 + 200 + 10
    assert s["comm_payload_bytes_per_step"] == {"all_reduce": 4 * 1594, "total": 4 * 1594}


def test_fsdp_reduce_scatters_only_trainable_parameters(dist_pool, tmp_path):
    n = 4
    full = train(dist_pool(n), tmp_path, "full", "fsdp")[0][0]
    lora = train(dist_pool(n), tmp_path, "lora", "fsdp")[0][0]
    # full training: the gradients of all D parameters, padded per parameter to N equal rows
    padded = sum(-(-rows // n) * n * cols for rows, cols in [(200, 784), (200, 1), (200, 200), (200, 1),
                                                             (10, 200), (10, 1)])
    assert full["comm_payload_bytes_per_step"]["reduce_scatter"] == 4 * padded
    assert full["comm_wire_bytes_per_step"]["reduce_scatter"] == pytest.approx((n - 1) / n * 4 * padded)
    assert full["comm_payload_bytes_per_step"]["all_gather"] == 2 * 4 * padded // n  # forward and backward
    # LoRA: the frozen base is still gathered twice, but only the adapters are reduce-scattered
    assert lora["comm_payload_bytes_per_step"]["all_gather"] > full["comm_payload_bytes_per_step"]["all_gather"]
    # the adapters' gradients only, padded per factor to N rows: A [1,784] → 4 rows, [10,1] → 12
    adapters = [(1, 784), (200, 1), (1, 200), (200, 1), (1, 200), (10, 1)]
    assert lora["comm_payload_bytes_per_step"]["reduce_scatter"] == 4 * sum(-(-r // n) * n * c for r, c in adapters)
    assert lora["comm_payload_bytes_per_step"]["reduce_scatter"] == 20_592


def test_dense_subspace_under_fsdp_is_refused(dist_pool, tmp_path):
    over = [f"data.root={DATA_ROOT}", "train.steps=3", "dist.strategy=fsdp", "subspace.projection=dense", "subspace.d=8"]
    with pytest.raises(RankFailed, match="subspace.projection = .dense. cannot be sharded"):
        dist_pool(2).run("rank_targets:train_run", over, str(tmp_path), timeout=120)


def test_subspace_fsdp_keeps_only_a_slice_of_theta0(dist_pool, tmp_path):
    s = train(dist_pool(4), tmp_path, "subspace", "fsdp")[0][0]
    theta0_bytes = 4 * D
    ddp = train(dist_pool(4), tmp_path, "subspace", "ddp")[0][0]
    saved = max(ddp["state_bytes_per_rank"]) - max(s["state_bytes_per_rank"])
    assert saved == pytest.approx(theta0_bytes * 3 / 4, abs=8)  # each rank keeps 1/4 of θ₀


def test_peft_lora_trains_through_ddp_and_fsdp(dist_pool):
    pytest.importorskip("peft")
    for strategy in ("ddp", "fsdp"):
        losses = dist_pool(2).run("rank_targets:peft_steps", strategy, timeout=120)
        assert losses[0][-1] < losses[0][0]


def test_lora_checkpoint_under_fsdp_holds_every_rank_s_shard(dist_pool, tmp_path):
    """trainable.pt is gathered from all ranks: it reloads into a fresh model, whole."""
    from distid import lora
    from distid.models import build_model

    fsdp = train(dist_pool(4), tmp_path, "lora", "fsdp")
    saved = torch.load(tmp_path / "lora-fsdp" / "trainable.pt")
    fresh = lora.inject(build_model("mlp", seed=0), r=1, alpha=1.0)
    missing, unexpected = fresh.load_state_dict(saved, strict=False)
    assert not unexpected and all("lora_" not in k for k in missing)
    got = torch.cat([saved[k].reshape(-1) for k in sorted(saved)])
    torch.testing.assert_close(got, fsdp[0][1])
    assert saved["1.lora_A"].shape == (1, 784) and saved["5.lora_B"].shape == (10, 1)
