"""distid.experiments.methods.convergence: three curves at a matched budget, files written, eval_every required."""

import json
import sys

import pytest

from datasets_for_tests import DATA_ROOT, have_mnist
from procs import run, torchrun


@pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
def test_convergence_on_two_ranks_writes_three_curves(tmp_path):
    out = torchrun(2, "-m", "distid.experiments.methods.convergence", "--config", "configs/mnist_fc_id.toml", "--out", str(tmp_path),
                   "--set", f"data.root={DATA_ROOT}", "--set", "train.steps=6", "--set", "train.eval_every=3",
                   "--set", "subspace.d=1600", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    curves = json.loads((tmp_path / "convergence.json").read_text())["curves"]
    assert [c["method"] for c in curves] == ["full", "lora", "subspace"]
    assert all([s for s, _, _ in c["eval_curve"]] == [3, 6] for c in curves)
    assert curves[1]["trainable_params"] == 1594 and curves[2]["trainable_params"] == 1600
    assert (tmp_path / "convergence.png").exists() and (tmp_path / "convergence.md").exists()


def test_convergence_needs_eval_every(tmp_path):
    out = run([sys.executable, "-m", "distid.experiments.methods.convergence", "--out", str(tmp_path)], timeout=60)
    assert out.returncode == 2 and "train.eval_every must be > 0" in out.stderr
