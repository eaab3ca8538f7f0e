"""Every bad input to distid.train ends the same way: exactly one line `error: …` that says what is
wrong and how to fix it, a non-zero exit, no traceback, and no summary.json (whose presence means a
finished run). Also tested elsewhere: a global batch that the world size does not divide
(test_train.py), a NaN loss (test_faults.py)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.runtime import free_port
from procs import finish, run, start, user_env

pytestmark = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
RAW = Path(DATA_ROOT) / "MNIST" / "raw"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def train(out: Path, *sets: str, resume: bool = False, env: dict | None = None):
    cmd = [sys.executable, "-m", "distid.train", "--out", str(out), *(["--resume"] if resume else [])]
    for kv in (f"data.root={DATA_ROOT}", "train.steps=2", "subspace.d=64", *sets):
        cmd += ["--set", kv]
    return run(cmd, timeout=120, env=env)


def assert_one_line_error(res, out: Path, *needles: str) -> str:
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (out / "summary.json").exists()
    return lines[0]


@pytest.mark.parametrize("sets,needles", [
    (["train.lrr=0.1"], ["unknown key 'train.lrr'", "did you mean 'train.lr'"]),
    (["subspace.d=many"], ["subspace.d", "expected int, got 'many'"]),
    (["subspace.d=0"], ["subspace.d must be >= 1; got 0"]),
], ids=["unknown-key", "wrong-type", "d-zero"])
def test_bad_config_file_or_setting(tmp_path, capsys, sets, needles):
    """Refused while the config loads: the same `cli.main` as the shell's, called in this process."""
    from distid import train as entry

    argv = ["--out", str(tmp_path)] + [a for kv in (f"data.root={DATA_ROOT}", *sets) for a in ("--set", kv)]
    code = entry.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert_one_line_error(subprocess.CompletedProcess(argv, code, "", err), tmp_path, *needles)


@pytest.mark.parametrize("sets,needles", [
    (["subspace.d=199211"], ["subspace.d = 199211 must be between 1 and D = 199,210"]),
    (["subspace.projection=dense", "subspace.d=10000", "subspace.max_dense_gb=1"],
     ["a dense projection needs 7.97 GB", "Use projection = 'fastfood'"]),
    (["train.method=lora", "lora.rank=11"], ["rank r=11 exceeds min(in, out)=10 of layer '5'"]),
], ids=["d-above-D", "dense-too-big", "lora-rank-too-big"])
def test_bad_config(tmp_path, sets, needles):
    assert_one_line_error(train(tmp_path, *sets), tmp_path, *needles)


def test_missing_data_names_the_fetch_command(tmp_path):
    root = tmp_path / "nothing"
    res = train(tmp_path / "out", f"data.root={root}")
    assert_one_line_error(res, tmp_path / "out", f"mnist data not found in {root}",
                          f"`python -m distid.data fetch mnist --root {root}`")
    assert not (tmp_path / "out").exists()  # a run that never started leaves no empty folder


def raw_with(tmp_path: Path, spoil) -> Path:
    """A data root whose MNIST/raw links the real files, except train labels: a spoiled copy."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        if name == "train-labels-idx1-ubyte":
            (raw / name).write_bytes(spoil((RAW / name).read_bytes()))
        else:
            (raw / name).symlink_to(RAW / name)
    return raw


@pytest.mark.parametrize("spoil", [lambda b: b[:-1] + bytes([b[-1] ^ 1]), lambda b: b[: len(b) // 2]],
                         ids=["wrong-checksum", "truncated"])
def test_corrupt_idx_file(tmp_path, spoil):
    raw = raw_with(tmp_path, spoil)
    res = train(tmp_path / "out", f"data.root={tmp_path / 'data'}")
    assert_one_line_error(res, tmp_path / "out", "checksum mismatch for train-labels-idx1-ubyte",
                          "renamed *.bad", f"python -m distid.data fetch mnist --root {tmp_path / 'data'}")
    assert (raw / "train-labels-idx1-ubyte.bad").exists()  # never used, kept for inspection


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The checkpoints of a finished 2-step run (without its summary.json)."""
    done = tmp_path_factory.mktemp("done")
    assert train(done).returncode == 0
    return done / "checkpoints"


def test_checkpoint_of_another_config(tmp_path, checkpoints):
    shutil.copytree(checkpoints, tmp_path / "checkpoints")
    res = train(tmp_path, "train.lr=0.5", resume=True)
    assert_one_line_error(res, tmp_path, "was written by another config (train.lr: 0.001 → 0.5)",
                          "start afresh with another --out")


def test_unreadable_checkpoint(tmp_path, checkpoints):
    shutil.copytree(checkpoints, tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "step_000002.pt").write_bytes(b"not a checkpoint")
    res = train(tmp_path, resume=True)
    assert_one_line_error(res, tmp_path, "cannot read checkpoint", "delete it to resume from the one before")


def test_ranks_that_disagree_on_theta0(tmp_path):
    """Two ranks started by hand (torchrun's environment) with different seeds: θ₀ and P differ."""
    port, procs = free_port(), []
    for rank in (0, 1):
        env = user_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "-m", "distid.train", "--out", str(tmp_path), "--set", f"data.root={DATA_ROOT}",
               "--set", "train.steps=2", "--set", f"train.seed={rank}"]
        procs.append(start(cmd, env))
    rank0, rank1 = (finish(p, timeout=120) for p in procs)
    assert rank1.returncode != 0 and "error:" not in rank1.stderr  # rank 0 speaks for both
    assert_one_line_error(rank0, tmp_path, "ranks disagree on theta0")
