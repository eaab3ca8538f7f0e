"""distid.experiments.intrinsic.sweep and .dimension: d_int interpolation, the shares, sweep.json, and whole
sweeps under torchrun."""

import json
import math
import multiprocessing as mp
import random
import statistics
from pathlib import Path

import pytest

from datasets_for_tests import DATA_ROOT, REPO, have_mnist
from distid.experiments.intrinsic import store
from distid.config import ConfigError, load_config
from distid.experiments.intrinsic.dimension import Crossing, analyse, crossing, fitted
from distid.experiments.intrinsic.points import grid, key, plan
from distid.experiments.intrinsic.sweep import share
import sys

from procs import run, torchrun

needs_mnist = pytest.mark.skipif(not have_mnist(), reason="MNIST not fetched (python -m distid.data fetch mnist)")


def test_crossing_interpolates_in_log_d():
    c = crossing([100, 1000], [0.8, 0.9], 0.85)  # half-way up → geometric mean of the two d
    assert c.d == pytest.approx(math.sqrt(100 * 1000)) and not c.below_grid
    assert crossing([100, 1000], [0.8, 0.9], 0.9).d == pytest.approx(1000)
    assert crossing([100, 1000], [0.91, 0.95], 0.9) == crossing([100, 1000], [0.91, 0.99], 0.9)
    assert crossing([100, 1000], [0.91, 0.95], 0.9).below_grid
    assert crossing([100, 1000], [0.5, 0.6], 0.9).d is None


def test_crossing_takes_the_first_rise_past_the_target():
    assert crossing([10, 20, 40, 80], [0.5, 0.95, 0.7, 0.99], 0.9).d < 20


def _rec(kind, x, seed, acc):
    return dict(kind=kind, x=x, seed=seed, test_accuracy=acc)


def _line(c):
    """Accuracy rising 0.05 per e-fold of d, crossing 0.88 at d = c."""
    return lambda d: 0.88 + 0.05 * math.log(d / c)


def test_the_fitted_line_finds_the_crossing_of_points_on_a_line():
    ds = [300, 400, 450, 500, 560, 700, 5000]
    pts = [(d, _line(517)(d)) for d in ds[:-1]] + [(5000, 0.2)]  # 5000: outside the window, ignored
    start = crossing([450, 560], [_line(517)(450), _line(517)(560)], 0.88)
    got = fitted(pts, 0.88, Crossing(480.0, bracket=(450, 560)), window=1.5)
    assert got.d == pytest.approx(517) and start.d == pytest.approx(517)
    assert got.fit == (5, 400, 700) and got.bracket == (450, 560)  # 300 lies beyond 480 / 1.5


def test_the_fitted_line_averages_the_scatter_of_single_runs():
    rng, err_line, err_interp = random.Random(0), [], []
    for _ in range(200):
        ds = [400, 450, 480, 500, 530, 560, 600]
        pts = [(d, _line(500)(d) + rng.gauss(0, 0.004)) for d in ds]
        c = crossing(*zip(*pts), 0.88)
        if c.d is None or c.below_grid:
            continue
        err_line.append(abs(math.log(fitted(pts, 0.88, c).d / 500)))
        err_interp.append(abs(math.log(c.d / 500)))
    assert len(err_line) > 150 and statistics.fmean(err_line) < 0.5 * statistics.fmean(err_interp)


@pytest.mark.parametrize("pts, why", [([(400, 0.85), (500, 0.89)], "two points"),
                                      ([(400, 0.85), (400, 0.86), (400, 0.89)], "one d"),
                                      ([(400, 0.89), (450, 0.85), (500, 0.84)], "falling"),
                                      ([(400, 0.87), (500, 0.871), (600, 0.872)], "crossing far outside the window")])
def test_the_interpolation_stands_where_a_line_cannot_be_trusted(pts, why):
    start = Crossing(450.0, bracket=(400, 500))
    assert fitted(pts, 0.88, start) == start, why
    assert fitted(pts, 0.88, Crossing(400.0, below_grid=True)).d == 400.0


def test_a_bisections_headline_is_one_line_through_every_seeds_points():
    noise = {0: 0.003, 1: -0.006, 2: 0.0}  # seed 0 lucky, seed 1 unlucky: their own lines miss 500 both ways
    pts = [_rec("full", 0, s, 0.98) for s in range(3)] + [
        _rec("subspace", d, s, _line(500)(d) + noise[s]) for s, ds in
        ((0, [420, 470, 520, 610]), (1, [480, 560, 640]), (2, [380, 490, 505, 560])) for d in ds]
    m = analyse(pts, 0.88 / 0.98, search="bisect")["measured"]
    assert m["per_seed"][0] < 500 < m["per_seed"][1] and m["per_seed"][2] == pytest.approx(500)
    assert m["d_int"] == pytest.approx(500, rel=0.015) and m["seed_min"] < m["d_int"] < m["seed_max"]
    assert abs(m["d_int"] - 500) < abs(statistics.fmean(m["per_seed"]) - 500)  # 11 points weigh more than 3 lines
    assert m["interval"][0] <= m["d_int"] <= m["interval"][1] and m["fits"][1] == (3, 480, 640)


def test_analyse_reports_both_baselines_and_the_seed_spread():
    pts = [_rec("full", 0, 0, 0.98), _rec("full", 0, 1, 0.96),
           _rec("subspace", 100, 0, 0.80), _rec("subspace", 1000, 0, 0.95),
           _rec("subspace", 100, 1, 0.86), _rec("subspace", 1000, 1, 0.89)]
    a = analyse(pts, 0.9)
    assert a["baseline_accuracy"] == pytest.approx(0.97)
    m = a["measured"]
    assert m["target_accuracy"] == pytest.approx(0.873)
    assert m["per_seed"][0] == pytest.approx(100 * 10 ** ((0.873 - 0.80) / 0.15))
    assert m["per_seed"][1] == pytest.approx(100 * 10 ** ((0.873 - 0.86) / 0.03))
    assert m["d_int"] == pytest.approx(100 * 10 ** ((0.873 - 0.83) / 0.09))  # mean curve 0.83 → 0.92
    assert m["seed_min"] < m["d_int"] < m["seed_max"] and m["seeds_reached"] == 2
    fixed = a["fixed_1.0"]
    assert fixed["target_accuracy"] == 0.9 and fixed["per_seed"][1] is None and fixed["seeds_reached"] == 1
    with pytest.raises(ValueError, match="baseline"):
        analyse(pts[2:], 0.9)


def test_grid_is_log_spaced_or_the_given_list():
    cfg = load_config(None, ["sweep.d_min=100", "sweep.d_max=10000", "sweep.points=3"])
    assert grid(cfg) == [100, 1000, 10000]
    assert grid(load_config(None, ["sweep.d=[500, 100, 500]"])) == [100, 500]
    assert len(plan(load_config(None, ["sweep.d=[1,2]", "sweep.seeds=3", "sweep.lora_ranks=[1]"]))) == 3 * 4


def test_sweep_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="sweep.d.*list of integers"):
        load_config(None, ["sweep.d=[1.5]"])
    with pytest.raises(ConfigError, match="sweep.mode must be one of"):
        load_config(None, ["sweep.mode=fast"])
    with pytest.raises(ConfigError, match="sweep.d_max must be >= sweep.d_min"):
        load_config(None, ["sweep.d_min=100", "sweep.d_max=10"])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_shares_cover_every_point_once_and_balance(n):  # cut from all the points, so every rank agrees
    todo = plan(load_config(None, ["sweep.d=[10,20,30,40,50]", "sweep.seeds=2"]))
    shares = [share(todo, r, n) for r in range(n)]
    keys = sorted(key(p) for s in shares for p in s)
    assert keys == sorted(key(p) for p in todo)
    counts = [len(s) for s in shares]
    assert max(counts) - min(counts) <= 2


def _record_many(out, rank):
    for i in range(20):
        store.record(out, dict(key=f"r{rank}-{i}"))


def test_store_keeps_every_writers_points(tmp_path):
    procs = [mp.get_context("spawn").Process(target=_record_many, args=(tmp_path, r)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert len(json.loads((tmp_path / "sweep.json").read_text())["points"]) == 40


def test_store_survives_a_crash_between_write_and_rename(tmp_path):
    store.record(tmp_path, dict(key="a", hash="h"))
    (tmp_path / "sweep.json.tmp").write_text('{"points": {"a": ')  # a writer died mid-way
    pts = [dict(kind="subspace", x=1, seed=0)]
    assert store.finished(tmp_path, pts, lambda p: "a", lambda p: "h") == {"a": dict(key="a", hash="h")}
    assert store.finished(tmp_path, pts, lambda p: "a", lambda p: "other config") == {}
    store.record(tmp_path, dict(key="b"))
    assert set(json.loads((tmp_path / "sweep.json").read_text())["points"]) == {"a", "b"}


TINY = ["--set", "sweep.d=[20,60]", "--set", "sweep.seeds=2", "--set", "train.steps=6", "--set", "train.log_every=3",
        "--set", f"data.root={DATA_ROOT}"]


@needs_mnist
def test_split_sweep_on_two_ranks_writes_everything_and_resumes(tmp_path):
    args = ["-m", "distid.experiments.intrinsic.sweep", "--config", "configs/mnist_fc_id.toml", "--out", str(tmp_path), *TINY]
    out = torchrun(2, *args, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {"sweep.json", "sweep.md", "id_curve.png"} <= {p.name for p in tmp_path.iterdir()}
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert len(data["points"]) == 6 and {p["rank"] for p in data["points"].values()} == {0, 1}
    assert all(p["world_size"] == 1 for p in data["points"].values())
    assert data["analysis"]["grid"] == [20, 60] and "d_int (mean curve)" in out.stdout
    again = torchrun(2, *args, timeout=240)
    assert again.returncode == 0 and "6 points (6 already in" in again.stdout and ": test acc " not in again.stdout
    # which points a changed setting trains again: test_fingerprint_follows_what_decides_a_result


@needs_mnist
def test_ddp_sweep_trains_every_point_on_all_ranks(tmp_path):
    out = torchrun(2, "-m", "distid.experiments.intrinsic.sweep", "--config", "configs/mnist_fc_id.toml", "--out", str(tmp_path), *TINY,
                   "--set", "sweep.mode=ddp", "--set", "sweep.seeds=1", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    points = json.loads((tmp_path / "sweep.json").read_text())["points"]
    assert len(points) == 3 and all(p["world_size"] == 2 for p in points.values())


def test_bad_sweep_config_is_one_line_and_exit_2(tmp_path):
    out = torchrun(2, "-m", "distid.experiments.intrinsic.sweep", "--out", str(tmp_path), "--set", "sweep.seeds=0", timeout=120)
    assert out.returncode != 0 and out.stderr.count("error: sweep.seeds must be >= 1") == 1
    assert not (tmp_path / "sweep.json").exists()


def test_fingerprint_follows_what_decides_a_result():
    from distid.experiments.intrinsic.points import fingerprint

    def fp(*over):
        return fingerprint(load_config(f"{REPO}/configs/mnist_fc_id.toml", list(over)), 1)

    base = fp()
    assert fp("train.log_every=7", "sweep.seeds=9", "sweep.fit_window=2", "data.root=/elsewhere", "dist.timeout_s=5") == base
    for change in ("train.lr=0.1", "subspace.d=7", "data.dataset=fashion-mnist", "data.classes=[1]",
                   "model.init_from=x.pt", "subspace.projection=sparse"):
        assert fp(change) != base, change
    assert fingerprint(load_config(f"{REPO}/configs/mnist_fc_id.toml"), 2) != base
    assert fp("lora.targets=3") == base  # a subspace point does not depend on LoRA's settings
    full = ["train.method=full"]
    assert fp(*full, "subspace.d=7", "subspace.projection=sparse") == fp(*full)


def test_a_lora_rank_a_layer_cannot_take_is_refused_before_training(tmp_path):
    out = run([sys.executable, "-m", "distid.experiments.intrinsic.sweep", "--out", str(tmp_path), "--set", "sweep.lora_ranks=[1,16]"],
              timeout=60)
    assert out.returncode == 2 and "sweep.lora_ranks = [1, 16]: rank r=16 exceeds" in out.stderr
    assert ": test acc" not in out.stdout


def test_a_point_is_trained_again_after_a_code_or_world_size_change(monkeypatch):
    from distid import runtime
    from distid.experiments.intrinsic.points import fingerprint

    cfg = load_config(f"{REPO}/configs/mnist_fc_id.toml", [])
    first = fingerprint(cfg, 2)
    assert fingerprint(cfg, 2) == first
    assert fingerprint(cfg, 4) != first  # another world size
    assert fingerprint(load_config(f"{REPO}/configs/mnist_fc_id.toml", ["subspace.projection=sparse"]), 2) != first
    monkeypatch.setattr(runtime, "_code_version", runtime.code_version() + "-edited")  # a source file changed
    assert fingerprint(cfg, 2) != first


def test_code_version_hashes_every_source_file(tmp_path, monkeypatch):
    import shutil

    from distid import runtime

    copy = tmp_path / "distid"
    shutil.copytree(Path(runtime.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    versions = []
    module = "experiments/intrinsic/dimension.py"
    for name, edit in ((module, ""), (module, "# a comment\n"), ("subspace/kernel.c", "/* a comment */\n")):
        (copy / name).write_text((copy / name).read_text() + edit)
        monkeypatch.setattr(runtime, "__file__", str(copy / "runtime.py"))
        monkeypatch.setattr(runtime, "_code_version", None)
        versions.append(runtime.code_version())
    assert len(set(versions)) == 3 and versions[0].startswith("distid ")
