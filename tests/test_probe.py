"""distid.probe: the recommended budgets from a bisection's records, the table's wire bytes, one
whole probe on MNIST (its recommendations trained on every seed and reaching the target, a rerun
training nothing), and bad input refused in one line."""

import json
import sys

import pytest

from datasets_for_tests import DATA_ROOT, REPO, have_mnist
from distid.config import load_config
from distid.experiments.intrinsic.probe import checks, prepare, recommended, table
from procs import run

needs_mnist = pytest.mark.skipif(not have_mnist(), reason="MNIST not fetched (python -m distid.data fetch mnist)")


def _cfg(*over):
    return prepare(load_config(f"{REPO}/configs/mnist_fc_id.toml", ["sweep.seeds=2", *over]))


def _rec(kind, x, seed, acc, trainable=0, step=0.01):
    return dict(kind=kind, x=x, seed=seed, test_accuracy=acc, trainable_params=trainable or x, step_time_s=step)


BASE = [_rec("full", 0, 0, 0.98, 199_210), _rec("full", 0, 1, 0.98, 199_210)]  # target 0.882


def test_prepare_searches_lora_up_to_the_largest_rank_the_targets_take():
    cfg = _cfg()
    assert (cfg.sweep.search, cfg.sweep.mode, cfg.sweep.lora_max) == ("bisect", "ddp", 10)  # 200×10 output layer
    assert _cfg("sweep.lora_max=4").sweep.lora_max == 4


def test_the_recommendation_is_the_largest_first_budget_reaching_the_target_and_every_seed_is_checked_there():
    cfg = _cfg()
    recs = BASE + [_rec("subspace", 478, 0, 0.87), _rec("subspace", 516, 0, 0.89),
                   _rec("subspace", 516, 1, 0.87), _rec("subspace", 560, 1, 0.885)]
    assert recommended(cfg, recs, "subspace") == 560 and recommended(cfg, recs, "lora") is None
    assert checks(cfg, recs) == [dict(kind="subspace", x=560, seed=0)]
    recs.append(_rec("subspace", 560, 0, 0.9))
    assert checks(cfg, recs) == []


def test_the_table_gives_ring_all_reduce_wire_bytes_at_4_and_64_ranks():
    cfg = _cfg()
    recs = BASE + [_rec("subspace", 500, s, 0.9) for s in (0, 1)] + [
        _rec("lora", 1, 0, 0.80, 1_594), _rec("lora", 2, 0, 0.95, 3_188), _rec("lora", 2, 1, 0.85, 3_188),
        _rec("lora", 3, 1, 0.90, 4_782), _rec("lora", 3, 0, 0.87, 4_782)]  # the check at r = 3 fails on seed 0
    text = table(cfg, recs, 2)
    full = next(line for line in text.splitlines() if line.startswith("| full"))
    assert f"{2 * 3 / 4 * 4 * 199_210:,.0f} | {2 * 63 / 64 * 4 * 199_210:,.0f}" in full
    sub = next(line for line in text.splitlines() if line.startswith("| subspace"))
    assert "| d = 500 | 500 |" in sub and "0.9000 ✓, 0.9000 ✓" in sub and "| 3,000 | 3,938 |" in sub
    lora_row = next(line for line in text.splitlines() if line.startswith("| LoRA"))
    assert "0.8700 ✗, 0.9000 ✓" in lora_row and "| r = 3 | 4,782 |" in lora_row


@needs_mnist
def test_a_probe_on_mnist_checks_its_recommendations_on_every_seed_and_resumes(tmp_path):
    args = [sys.executable, "-m", "distid.probe", "--config", "configs/mnist_fc_id.toml", "--out", str(tmp_path)] + [
        a for o in ("sweep.seeds=2", "sweep.d_min=10", "sweep.d_max=1000", "sweep.lora_max=4", "train.steps=40",
                    "train.global_batch=500", "sweep.threshold=0.6", f"data.root={DATA_ROOT}") for a in ("--set", o)]
    first = run(args, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    text = (tmp_path / "probe.md").read_text()
    rows = {line.split(" |")[0]: line for line in text.splitlines() if line.startswith("| ")}
    for name in ("| full training", "| subspace (fastfood)", "| LoRA on every layer"):
        assert name in rows, text
    for name in ("| subspace (fastfood)", "| LoRA on every layer"):
        assert rows[name].count("✓") == 2, rows[name]  # the recommendation, trained on both seeds, reached it
    points = json.loads((tmp_path / "sweep.json").read_text())["points"]
    assert {p["kind"] for p in points.values()} == {"full", "subspace", "lora"}
    again = run(args, timeout=300)
    assert again.returncode == 0 and "[rank 0]" not in again.stdout and "0 points trained" in again.stdout


@pytest.mark.parametrize("over, message", [
    (["sweep.threshold=1.2"], "sweep.threshold must be in (0, 1]; got 1.2"),
    (["sweep.d_max=500000"], "sweep: d = 500,000 is above the model's D = 199,210 (mlp)"),
    (["sweep.lora_max=16"], "sweep.lora_min/lora_max = 1/16: rank r=16 exceeds"),
])
def test_bad_probe_input_is_one_line_and_exit_2(tmp_path, over, message):
    out = run([sys.executable, "-m", "distid.probe", "--config", "configs/mnist_fc_id.toml", "--out",
               str(tmp_path / "p"), *[a for o in over for a in ("--set", o)]], timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert not (tmp_path / "p" / "sweep.json").exists()


@needs_mnist
def test_a_fixed_target_the_baseline_cannot_reach_is_refused_after_the_baselines(tmp_path):
    out = run([sys.executable, "-m", "distid.probe", "--config", "configs/mnist_fc_id.toml", "--out", str(tmp_path)]
              + [a for o in ("sweep.seeds=1", "train.steps=3", "train.global_batch=500", "sweep.bisect_on=fixed_1.0",
                             f"data.root={DATA_ROOT}") for a in ("--set", o)], timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "below the fixed target 0.9, so no d can be expected to reach it" in out.stderr
