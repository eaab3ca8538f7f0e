"""The lessons as users run them: under torchrun, with real processes and exit codes."""

import os
import subprocess
import sys

import pytest

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.primitives.__main__ import count_failures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(nproc: int, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_primitives_lesson_passes_on_three_ranks():
    out = torchrun(3, "-m", "distid.primitives", "--sizes", "12,1200,12000", "--reps", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deprecated" not in out.stderr
    assert "90 of 90 rank-checks passed" in out.stdout
    assert out.stdout.count(" ok") == 30 and "FAIL" not in out.stdout


def test_primitives_lesson_counts_failures():
    good = {"ok": True, "sent": 8, "expected_sent": 8}
    assert count_failures([[good], [good]]) == 0
    assert count_failures([[good], [dict(good, ok=False)]]) == 1
    assert count_failures([[dict(good, sent=12)], [good]]) == 1


@pytest.mark.skipif(not have_mnist(), reason="MNIST not fetched (python -m distid.data fetch mnist)")
def test_data_parallel_lesson_agrees_on_four_ranks():
    out = torchrun(4, "-m", "distid.parallel", "--steps", "30", "--data-root", DATA_ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "parameters agree" in out.stdout
    assert "1,195,256" in out.stdout  # measured ring bytes of rank 0 for D = 199,210 on 4 ranks
