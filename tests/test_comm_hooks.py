"""DDP compression hooks (PyTorch's fp16, bf16, PowerSGD) in distid.train: the ledger sees their
real payloads — PowerSGD's P and Q all-reduces, issued in future callbacks, included."""

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.config import ConfigError, load_config
from distid.models import build_model
from distid.strategies.hooks import CPU_POWERSGD_ON_GPU_MACHINE, PowerSGD

FULL = 4 * 199_210
ROWS, COLS, VECTORS = 200 + 200 + 10, 784 + 200 + 200, 200 + 200 + 10  # the MLP's weight matrices [n, m], biases
needs_mnist = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")


def train(pool, tmp_path, hook, *extra):
    over = [f"data.root={DATA_ROOT}", "train.method=full", "train.steps=14", "train.log_every=14",
            "train.global_batch=64", f"ddp.hook={hook}", *extra]
    return pool.run("rank_targets:train_run", over, str(tmp_path / hook), timeout=240)[0][0]


def test_the_ledger_books_collectives_issued_in_a_future_callback(dist_pool):
    for stats, a, b in dist_pool(2).run("rank_targets:callback_collectives", 1 << 20, timeout=60):
        assert stats == {"all_reduce": (2, 4 * (1 << 20) + 4 * 3)}
        assert a == b == 2.0


@needs_mnist
def test_fp16_and_bf16_hooks_send_half_of_full_ddp(dist_pool, tmp_path):
    pool = dist_pool(2)
    plain = train(pool, tmp_path, "none")
    assert plain["comm_payload_bytes_per_step"]["total"] == FULL
    for hook in ("fp16", "bf16"):
        s = train(pool, tmp_path, hook)
        assert s["comm_payload_bytes_per_step"] == {"all_reduce": FULL // 2, "total": FULL // 2}
        assert s["comm_payload_bytes_per_step"] == s["comm_payload_formula"]
        assert s["ddp_hook_payload_bytes_per_step"] == FULL  # what DDP hands the hook: the float32 bucket


@needs_mnist
@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.skipif(torch.cuda.is_available(), reason=CPU_POWERSGD_ON_GPU_MACHINE)
def test_powersgd_sends_r_times_rows_plus_columns_and_the_vectors(dist_pool, tmp_path, r):
    """Once compressing, each step all-reduces the biases (not worth compressing), P [n, r] and
    Q [m, r] of every weight [n, m]: 3 all-reduces of 4·(r·(Σn + Σm) + Σ|b|) bytes in all."""
    start = 3
    s = train(dist_pool(2), tmp_path, "powersgd", f"powersgd.rank={r}", f"powersgd.start_iter={start}")
    sent = 4 * (r * (ROWS + COLS) + VECTORS)
    assert s["comm_payload_bytes_per_step"] == {"all_reduce": sent, "total": sent} == s["comm_payload_formula"]
    assert s["comm_calls_per_step"] == {"all_reduce": 3.0}
    assert s["comm_steps_booked"] == 10
    # the plain all-reduce steps before PowerSGD starts are booked as warm-up, whole gradients
    assert s["comm_steps_warmup"] == start
    assert s["comm_payload_bytes_warmup"]["all_reduce"] == start * FULL


def test_powersgd_formula_follows_pytorch_s_compression_rule():
    mlp = build_model("mlp", seed=0)
    assert PowerSGD(4).payload(mlp)["total"] == 4 * (4 * (ROWS + COLS) + VECTORS)
    # at r = 5 the 10×200 layer fails (n + m)·r·2 < n·m (2,100 ≥ 2,000) and is sent whole
    assert PowerSGD(5).payload(mlp)["total"] == 4 * (5 * (ROWS - 10 + COLS - 200) + 10 * 200 + VECTORS)


@pytest.mark.parametrize("override, pattern", [
    ("ddp.hook=int8", "ddp.hook must be one of"),
    ("powersgd.start_iter=1", r"powersgd.start_iter must be >= 2"),
    ("powersgd.rank=0", r"powersgd.rank must be >= 1"),
    ("powersgd.error_feedback=1", "expected true or false"),
])
def test_hook_settings_are_checked(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_a_hook_needs_ddp():
    with pytest.raises(ConfigError, match="ddp.hook = 'fp16' configures dist.strategy = 'ddp', but this run's "
                                          "dist.strategy is 'fsdp': set dist.strategy = 'ddp', or leave"):
        load_config(None, ["ddp.hook=fp16", "dist.strategy=fsdp"])
    assert load_config(None, ["powersgd.error_feedback=false"]).powersgd.error_feedback is False


def test_powersgd_on_cpu_tensors_where_cuda_is_visible_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        PowerSGD(device_type="cpu")
    assert PowerSGD(device_type="cuda").fn.__name__ == "powerSGD_hook"
