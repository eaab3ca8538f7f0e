"""The intrinsic-dimension search (experiments/intrinsic/bisect.py), the plateau stop (run/job.py `settled`)
and the interval (experiments/intrinsic/dimension.py `resampled`), on synthetic accuracy curves; then one
bisection sweep on MNIST, resumed; and the refusals of bad input, one line each."""

import hashlib
import json
import math
import statistics
import sys

import pytest

from datasets_for_tests import DATA_ROOT, REPO, have_mnist
from distid.config import ConfigError, load_config
from distid.experiments.intrinsic.bisect import bracket, probes, search
from distid.experiments.intrinsic.dimension import resampled
from distid.experiments.intrinsic.bisect_sweep import next_points
from distid.run.after_step import settled
from procs import run, torchrun

T, LO, HI, W = 0.88, 100, 4000, 0.1


def smooth(c: float):
    """A concave accuracy curve in log d that crosses T at d = c."""
    return lambda d: min(0.98, T + 0.06 * math.log(d / c) - 0.004 * math.log(d / c) ** 2)


def noisy(c: float, amp: float = 0.006):
    """The same curve with a deterministic, non-monotone wiggle of ±amp."""
    f = smooth(c)
    return lambda d: f(d) + amp * (hashlib.sha256(str(d).encode()).digest()[0] / 127.5 - 1)


def run_search(curves_of, width=W, lo=LO, hi=HI, limit=60, interpolate=True):
    """Train (evaluate) whatever `search` asks for until it is done; returns the curves and the count."""
    curves, trained = [{} for _ in curves_of], 0
    while (step := search(curves, T, lo, hi, width, interpolate)) is not None:
        i, xs = step
        assert xs and all(lo <= x <= hi and x not in curves[i] for x in xs), (i, xs, curves[i])
        for x in xs:
            curves[i][x] = curves_of[i](x)
            trained += 1
        assert trained < limit, "the search does not converge"
    return curves, trained


@pytest.mark.parametrize("crossings, most", [((497, 513, 487), 9), ((150, 160, 140), 14), ((3500, 3300, 3800), 15),
                                             ((900, 1200, 700), 18)])  # seeds ±3 % apart (MNIST's MLP), then ±30 %
def test_bisection_brackets_each_seeds_crossing_within_the_width(crossings, most):
    curves, trained = run_search([smooth(c) for c in crossings])
    for c, curve in zip(crossings, curves):
        b = bracket(curve, T, LO, HI, W)
        assert b.settled and b.lo < c <= b.hi and b.hi / b.lo <= 1 + W, (c, sorted(curve))
    assert trained <= most, f"{trained} points for three seeds"


def test_the_warm_start_makes_later_seeds_cheap():
    curves, _ = run_search([smooth(c) for c in (497, 505, 490, 500, 495)])
    assert all(len(c) <= 3 for c in curves[1:]), [sorted(c) for c in curves]


def test_a_noisy_non_monotone_curve_still_ends_at_its_first_crossing():
    curves, trained = run_search([noisy(c) for c in (497, 513, 487, 650)])
    for curve in curves:
        b = bracket(curve, T, LO, HI, W)
        xs = sorted(curve)
        assert b.settled and curve[b.lo] < T <= curve[b.hi] and b.hi / b.lo <= 1 + W
        assert all(curve[x] < T for x in xs if x < b.hi), "a trained point below hi already reached the target"
    assert trained <= 40


def test_a_target_out_of_reach_or_below_the_range_settles_at_the_range_end():
    curves, _ = run_search([lambda d: 0.5])
    assert bracket(curves[0], T, LO, HI, W) == bracket({**curves[0]}, T, LO, HI, W)
    b = bracket(curves[0], T, LO, HI, W)
    assert b.settled and b.hi is None and b.lo == HI
    curves, _ = run_search([lambda d: 0.99])
    b = bracket(curves[0], T, LO, HI, W)
    assert b.settled and b.lo is None and b.hi == LO


def test_integer_ranks_end_at_the_smallest_rank_that_reaches_the_target():
    for smallest in (1, 2, 5, 13, 64):
        curves, trained = run_search([lambda r, s=smallest: 0.9 if r >= s else 0.5], lo=1, hi=64, width=0, interpolate=False)
        b = bracket(curves[0], T, 1, 64, 0)
        assert b.hi == smallest and (b.lo is None or b.lo == smallest - 1) and trained <= 9, (smallest, curves)


def test_probes_start_in_the_middle_and_from_a_given_bracket():
    assert probes({}, T, 100, 10_000, W) == [1000]
    assert probes({}, T, 100, 10_000, W, start=(480, 520)) == [480, 520]
    assert probes({1000: 0.95}, T, 100, 10_000, W) == [100]  # one point above: the range's low end
    assert probes({1000: 0.5}, T, 100, 10_000, W) == [10_000]


def test_the_plateau_rule_stops_only_after_k_evaluations_without_a_gain():
    assert not settled([0.5, 0.6, 0.7, 0.8], 2, 0.002)  # still rising
    assert settled([0.5, 0.9, 0.9005, 0.901], 2, 0.002)  # two evaluations gained ≤ 0.002 on 0.9
    assert not settled([0.5, 0.9, 0.9005, 0.903], 2, 0.002)  # the last one gained 0.003
    assert not settled([0.9, 0.9], 2, 0.002)  # fewer than k + 1 evaluations: nothing to compare with
    assert not settled([0.9] * 10, 0, 0.002)  # k = 0: never
    assert settled([0.7, 0.95, 0.94, 0.93], 2, 0.0)  # falling counts as no gain


def test_the_interval_is_of_the_statistic_and_reproducible():
    values = [487.0, 513.0, 498.0]
    lo, hi = resampled(values, statistics.fmean)
    assert min(values) <= lo < sum(values) / 3 < hi <= max(values)
    assert resampled(values, statistics.fmean) == (lo, hi) and resampled([1.0, 2.0], statistics.fmean) is None
    assert resampled([5.0, 5.0, 5.0], statistics.fmean) == (5.0, 5.0)
    assert resampled(values, max) == (487.0, 513.0)  # three draws of 487: 1/27 = 3.7 % of resamples, over 2.5 %


def _recs(*rows):
    return [dict(kind=k, x=x, seed=s, test_accuracy=a) for k, x, s, a in rows]


def test_next_points_trains_the_baselines_first_then_one_seed_at_a_time():
    cfg = load_config(f"{REPO}/configs/mnist_fc_id.toml", ["sweep.search=bisect", "sweep.d_min=100",
                                                             "sweep.d_max=10000"])
    assert [p["kind"] for p in next_points(cfg, [])] == ["full"] * 3
    base = _recs(("full", 0, 0, 0.98), ("full", 0, 1, 0.98), ("full", 0, 2, 0.98))
    assert next_points(cfg, base) == [dict(kind="subspace", x=1000, seed=0)]
    lora = load_config(f"{REPO}/configs/mnist_fc_id.toml", ["sweep.search=bisect", "sweep.d_min=100",
                                                              "sweep.d_max=100", "sweep.lora_max=8"])
    settled_d = base + _recs(*[("subspace", 100, s, 0.99) for s in range(3)])
    assert next_points(lora, settled_d) == [dict(kind="lora", x=3, seed=0)]  # √(1·8) rounded


def test_a_fixed_target_above_the_baseline_is_refused_in_one_line():
    cfg = load_config(f"{REPO}/configs/mnist_fc_id.toml", ["sweep.search=bisect", "sweep.bisect_on=both"])
    with pytest.raises(ConfigError, match=r"full training reaches only 0\.8500, below the fixed target 0\.9"):
        next_points(cfg, _recs(*[("full", 0, s, 0.85) for s in range(3)]))
    measured = load_config(f"{REPO}/configs/mnist_fc_id.toml", ["sweep.search=bisect"])
    assert next_points(measured, _recs(*[("full", 0, s, 0.85) for s in range(3)]))  # 90 % of 0.85 is fine


BAD_SEARCH = [
    (["sweep.threshold=1.5"], "sweep.threshold must be in (0, 1]; got 1.5"),
    (["sweep.threshold=0"], "sweep.threshold must be in (0, 1]; got 0"),
    (["sweep.search=bisect", "sweep.d_max=300000"], "sweep: d = 300,000 is above the model's D = 199,210 (mlp)"),
    (["sweep.d=[100,250000]"], "sweep: d = 250,000 is above the model's D = 199,210 (mlp)"),
    (["sweep.width=0"], "sweep.width must be > 0"),
    (["train.stop_plateau=2"], "train.stop_plateau must be 0 unless train.eval_every > 0"),
]


def test_bad_search_input_from_the_shell_is_one_line_and_exit_2(tmp_path):
    """One case as a user meets it; the others go through the same `cli.main` in this process."""
    over, message = BAD_SEARCH[2]
    out = run([sys.executable, "-m", "distid.experiments.intrinsic.sweep", "--config", "configs/mnist_fc_id.toml",
               "--out", str(tmp_path / "s"), *[a for o in over for a in ("--set", o)]], timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert not (tmp_path / "s" / "sweep.json").exists()


@pytest.mark.parametrize("over, message", BAD_SEARCH)
def test_bad_search_input_is_one_line_and_exit_2(tmp_path, capsys, over, message):
    from distid.experiments.intrinsic import sweep

    args = ["--config", f"{REPO}/configs/mnist_fc_id.toml", "--out", str(tmp_path / "s")]
    assert sweep.main(args + [a for o in over for a in ("--set", o)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "s").exists()


def test_bisection_in_split_mode_on_two_ranks_is_refused(tmp_path):
    out = torchrun(2, "-m", "distid.experiments.intrinsic.sweep", "--config", "configs/mnist_fc_id.toml", "--out", str(tmp_path),
                   "--set", "sweep.search=bisect", timeout=120)
    assert out.returncode != 0 and out.stderr.count("needs sweep.mode = 'ddp'") == 1, out.stderr


@pytest.mark.skipif(not have_mnist(), reason="MNIST not fetched (python -m distid.data fetch mnist)")
def test_a_bisection_sweep_on_mnist_settles_every_seed_and_resumes(tmp_path):
    args = [sys.executable, "-m", "distid.experiments.intrinsic.sweep", "--config", "configs/mnist_fc_id.toml",
            "--out", str(tmp_path)] + [a for o in (
                "sweep.search=bisect", "sweep.d_min=10", "sweep.d_max=1000", "sweep.seeds=3", "train.steps=60",
                "train.global_batch=500", "train.eval_every=20", "train.stop_plateau=1", f"data.root={DATA_ROOT}",
                "sweep.threshold=0.7") for a in ("--set", o)]
    first = run(args, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads((tmp_path / "sweep.json").read_text())
    pts = list(data["points"].values())
    a = data["analysis"]["measured"]
    assert data["search"] == "bisect" and a["seeds_reached"] == 3 and a["interval"] is not None
    for seed, (lo, hi) in zip(range(3), a["brackets"]):
        mine = {p["x"]: p["test_accuracy"] for p in pts if p["kind"] == "subspace" and p["seed"] == seed}
        assert hi / lo <= 1.1 or hi - lo <= 1, (seed, sorted(mine))
        assert mine[lo] < a["target_accuracy"] <= mine[hi]
    assert "Search: bisection on log d in [10, 1,000]" in first.stdout and "95 % interval" in first.stdout
    again = run(args, timeout=300)
    assert again.returncode == 0 and "[rank 0]" not in again.stdout, again.stdout[-2000:]
    assert json.loads((tmp_path / "sweep.json").read_text())["invocations"][-1]["trained"] == 0
