"""distid.train under DDP (gloo, 1–4 ranks): only d is all-reduced, ranks agree, world size does
not change the result, and the ledger's numbers are the measured ones."""

import json
import subprocess
import sys

import pytest
import torch

from datasets_for_tests import DATA_ROOT, REPO, have_mnist
from distpool import RankFailed
from procs import torchrun

pytestmark = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
D = 199_210
STEPS = 14  # 2 warm-up steps, 10 booked by the ledger, 2 timed


def base(**kv):
    over = {"data.root": DATA_ROOT, "train.steps": STEPS, "train.log_every": 7, **kv}
    return [f"{k}={v}" for k, v in over.items()]


@pytest.mark.parametrize("n,projection", [(2, "fastfood"), (4, "fastfood"), (3, "sparse")])
def test_subspace_all_reduces_exactly_d_floats(dist_pool, tmp_path, n, projection):
    d = 50
    over = base(**{"subspace.d": d, "subspace.projection": projection, "train.global_batch": 96})
    results = dist_pool(n).run("rank_targets:train_run", over,
                               str(tmp_path), timeout=180)
    s = results[0][0]
    assert s["comm_payload_bytes_per_step"] == {"all_reduce": 4 * d, "total": 4 * d}
    assert s["ddp_hook_payload_bytes_per_step"] == 4 * d
    assert s["comm_payload_bytes_setup"]["total"] < 4 * d + 2_000  # θ₀ (4·D bytes) is never broadcast
    assert (s["trainable_params"], s["total_params"], s["world_size"]) == (d, D, n)
    for _, params in results:
        assert torch.equal(params, results[0][1]), "ranks hold different d"
    assert results[0][1].abs().max() > 0, "d never moved"
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("method", "strategy", "world_size", "projection", "total_params", "trainable_params",
                "comm_payload_bytes_per_step", "comm_payload_bytes_setup", "test_accuracy", "train_loss", "step_time_s",
                "peak_rss_mb", "flops_per_step", "config"):
        assert key in saved, key
    assert saved["flops_per_step"] > 0 and saved["peak_rss_mb"] > 50


def test_full_training_all_reduces_all_D_floats(dist_pool, tmp_path):
    s, _ = dist_pool(2).run("rank_targets:train_run", base(**{"train.method": "full", "train.lr": 1e-3}),
                            str(tmp_path), timeout=180)[0]
    assert s["comm_payload_bytes_per_step"]["all_reduce"] == 4 * D == s["comm_payload_bytes_per_step"]["total"]
    assert s["ddp_hook_payload_bytes_per_step"] == 4 * D


def test_world_size_does_not_change_d(dist_pool, tmp_path):
    over = base(**{"subspace.d": 64, "train.global_batch": 96})
    (_, one), = dist_pool(1).run("rank_targets:train_run", over, str(tmp_path / "one"), timeout=180)
    four = dist_pool(4).run("rank_targets:train_run", over, str(tmp_path / "four"), timeout=180)
    torch.testing.assert_close(four[0][1], one, rtol=1e-4, atol=1e-6)


def test_ranks_that_disagree_on_theta0_fail_loudly(dist_pool, tmp_path):
    with pytest.raises(RankFailed, match="ranks disagree on theta0"):
        dist_pool(2).run("rank_targets:train_run", base(), str(tmp_path), bad_seed_rank=1, timeout=120)


def test_cli_rejects_unknown_key_with_a_suggestion():
    out = subprocess.run([sys.executable, "-m", "distid.train", "--set", "train.lrr=0.1"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and "did you mean 'train.lr'" in out.stderr


def test_torchrun_end_to_end(tmp_path):
    out = torchrun(2, "-m", "distid.train", "--config", "configs/mnist_fc_subspace.toml", "--out", str(tmp_path),
                   *sum((["--set", o] for o in base()), []), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3,000" in out.stdout and "265.6×" in out.stdout
    assert (tmp_path / "summary.json").exists() and list((tmp_path / "tb").iterdir())


def test_global_batch_not_divisible_is_one_clear_error(tmp_path):
    out = torchrun(3, "-m", "distid.train", "--out", str(tmp_path), "--set", f"data.root={DATA_ROOT}", timeout=120)
    assert out.returncode != 0
    assert out.stderr.count("error: train.global_batch = 128 is not a multiple of the world size 3") == 1
    assert not (tmp_path / "summary.json").exists()


def test_strategy_none_on_several_ranks_is_refused(dist_pool, tmp_path):
    with pytest.raises(RankFailed, match="would train 2 unsynchronised models"):
        dist_pool(2).run("rank_targets:train_run", base(**{"dist.strategy": "none"}), str(tmp_path), timeout=120)


@pytest.mark.parametrize("d", [0, 199_211])
def test_d_outside_one_to_D_is_a_config_error(d):
    from distid.config import ConfigError, load_config
    from distid.run.build import build

    with pytest.raises(ConfigError, match=r"subspace\.d"):  # d = 0: the config's own check; d > D: build's
        build(load_config(None, [f"subspace.d={d}"]), 1)




def test_one_steady_subspace_ddp_step_runs_code_in_at_most_ten_distid_files(dist_pool, tmp_path):
    """A reader following one step of the quickstart run (d = 750, Fastfood, DDP on 2 ranks) from the
    loop opens at most ten files of distid: the loop, the model's forward, the strategy, the meter and
    what happens after a step."""
    over = [f"data.root={DATA_ROOT}", "train.steps=20", "train.log_every=100", "train.global_batch=64"]
    files = dist_pool(2).run("rank_targets:trace_one_step", over, str(tmp_path), timeout=180)[0]
    assert {"train.py", "subspace/model.py", "strategies/ddp.py", "run/job.py"} <= set(files), files  # it saw the step
    assert len(files) <= 10, ", ".join(files)
