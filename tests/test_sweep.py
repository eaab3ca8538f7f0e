"""distid.experiments.sweep and distid.experiments.intrinsic: d_int interpolation, the shares, sweep.json, and whole sweeps under torchrun."""

import json
import math
import multiprocessing as mp
from pathlib import Path

import pytest

from datasets_for_tests import DATA_ROOT, REPO, have_mnist
from distid.experiments import sweep_store
from distid.config import ConfigError, load_config
from distid.experiments.intrinsic import analyse, crossing
from distid.experiments.sweep import grid, key, plan, share
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
        sweep_store.record(out, dict(key=f"r{rank}-{i}"))


def test_store_keeps_every_writers_points(tmp_path):
    procs = [mp.get_context("spawn").Process(target=_record_many, args=(tmp_path, r)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert len(json.loads((tmp_path / "sweep.json").read_text())["points"]) == 40


def test_store_survives_a_crash_between_write_and_rename(tmp_path):
    sweep_store.record(tmp_path, dict(key="a", hash="h"))
    (tmp_path / "sweep.json.tmp").write_text('{"points": {"a": ')  # a writer died mid-way
    pts = [dict(kind="subspace", x=1, seed=0)]
    assert sweep_store.finished(tmp_path, pts, lambda p: "a", lambda p: "h") == {"a": dict(key="a", hash="h")}
    assert sweep_store.finished(tmp_path, pts, lambda p: "a", lambda p: "other config") == {}
    sweep_store.record(tmp_path, dict(key="b"))
    assert set(json.loads((tmp_path / "sweep.json").read_text())["points"]) == {"a", "b"}


TINY = ["--set", "sweep.d=[20,60]", "--set", "sweep.seeds=2", "--set", "train.steps=6", "--set", "train.log_every=3",
        "--set", f"data.root={DATA_ROOT}"]


@needs_mnist
def test_split_sweep_on_two_ranks_writes_everything_and_resumes(tmp_path):
    args = ["-m", "distid.experiments.sweep", "--config", "configs/mnist_fc_id.toml", "--out", str(tmp_path), *TINY]
    out = torchrun(2, *args, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {"sweep.json", "sweep.md", "id_curve.png"} <= {p.name for p in tmp_path.iterdir()}
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert len(data["points"]) == 6 and {p["rank"] for p in data["points"].values()} == {0, 1}
    assert all(p["world_size"] == 1 for p in data["points"].values())
    assert data["analysis"]["grid"] == [20, 60] and "d_int (mean curve)" in out.stdout
    again = torchrun(2, *args, timeout=240)
    assert again.returncode == 0 and "6 points (6 already in" in again.stdout and ": test acc " not in again.stdout
    changed = torchrun(2, *args, "--set", "train.lr=0.05", timeout=240)
    assert "6 points (2 already in" in changed.stdout and changed.stdout.count(": test acc ") == 4


@needs_mnist
def test_ddp_sweep_trains_every_point_on_all_ranks(tmp_path):
    out = torchrun(2, "-m", "distid.experiments.sweep", "--config", "configs/mnist_fc_id.toml", "--out", str(tmp_path), *TINY,
                   "--set", "sweep.mode=ddp", "--set", "sweep.seeds=1", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    points = json.loads((tmp_path / "sweep.json").read_text())["points"]
    assert len(points) == 3 and all(p["world_size"] == 2 for p in points.values())


def test_bad_sweep_config_is_one_line_and_exit_2(tmp_path):
    out = torchrun(2, "-m", "distid.experiments.sweep", "--out", str(tmp_path), "--set", "sweep.seeds=0", timeout=120)
    assert out.returncode != 0 and out.stderr.count("error: sweep.seeds must be >= 1") == 1
    assert not (tmp_path / "sweep.json").exists()


def test_fingerprint_follows_what_decides_a_result():
    from distid.experiments.sweep import fingerprint

    def fp(*over):
        return fingerprint(load_config(f"{REPO}/configs/mnist_fc_id.toml", list(over)), 1)

    base = fp()
    assert fp("train.log_every=7", "sweep.seeds=9", "data.root=/elsewhere", "dist.timeout_s=5") == base
    for change in ("train.lr=0.1", "train.d=7", "data.dataset=fashion-mnist", "data.classes=[1]",
                   "model.init_from=x.pt", "train.projection=sparse"):
        assert fp(change) != base, change
    assert fingerprint(load_config(f"{REPO}/configs/mnist_fc_id.toml"), 2) != base
    assert fp("train.lora_targets=3") == base  # a subspace point does not depend on LoRA's settings
    full = ["train.method=full"]
    assert fp(*full, "train.d=7", "train.projection=sparse") == fp(*full)


def test_a_lora_rank_a_layer_cannot_take_is_refused_before_training(tmp_path):
    out = run([sys.executable, "-m", "distid.experiments.sweep", "--out", str(tmp_path), "--set", "sweep.lora_ranks=[1,16]"],
              timeout=60)
    assert out.returncode == 2 and "sweep.lora_ranks = [1, 16]: rank r=16 exceeds" in out.stderr
    assert ": test acc" not in out.stdout


def test_a_point_is_trained_again_after_a_code_or_world_size_change(monkeypatch):
    from distid import runtime
    from distid.experiments.sweep import fingerprint

    cfg = load_config(f"{REPO}/configs/mnist_fc_id.toml", [])
    first = fingerprint(cfg, 2)
    assert fingerprint(cfg, 2) == first
    assert fingerprint(cfg, 4) != first  # another world size
    assert fingerprint(load_config(f"{REPO}/configs/mnist_fc_id.toml", ["train.projection=sparse"]), 2) != first
    monkeypatch.setattr(runtime, "_code_version", runtime.code_version() + "-edited")  # a source file changed
    assert fingerprint(cfg, 2) != first


def test_code_version_hashes_every_source_file(tmp_path, monkeypatch):
    import shutil

    from distid import runtime

    copy = tmp_path / "distid"
    shutil.copytree(Path(runtime.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    versions = []
    for edit in ("", "# a comment\n"):
        (copy / "experiments" / "intrinsic.py").write_text((copy / "experiments" / "intrinsic.py").read_text() + edit)
        monkeypatch.setattr(runtime, "__file__", str(copy / "runtime.py"))
        monkeypatch.setattr(runtime, "_code_version", None)
        versions.append(runtime.code_version())
    assert versions[0] != versions[1] and versions[0].startswith("distid ")
