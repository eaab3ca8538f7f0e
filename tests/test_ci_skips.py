"""The suite's own CI guard (tests/ci_skips.py): under CI a test that skips for a reason other than
a documented gate (no CUDA GPU; the npm/apt opt-ins) fails the session; outside CI it is a skip."""

import os
import sys

from procs import REPO, run


def _session(tmp_path, reason: str, ci: bool):
    (tmp_path / "test_inner.py").write_text(
        f"import pytest\n\ndef test_ran():\n    pass\n\n"
        f"def test_skipped():\n    pytest.skip({reason!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONPATH=f"{REPO}/tests", **({"CI": "true"} if ci else {}))
    return run([sys.executable, "-m", "pytest", "-q", "-p", "ci_skips", "-p", "no:cacheprovider", "--rootdir",
                str(tmp_path), "-c", "/dev/null", str(tmp_path / "test_inner.py")], timeout=120, env=env)


def test_under_ci_a_data_skip_fails_the_session_with_one_line(tmp_path):
    out = _session(tmp_path, "needs MNIST: python -m distid.data fetch mnist", ci=True)
    assert out.returncode == 1, out.stdout + out.stderr
    said = [line for line in out.stdout.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and "1 skipped for another reason" in said[0] and "needs MNIST" in said[0], out.stdout


def test_under_ci_a_gpu_gate_is_a_skip(tmp_path):
    out = _session(tmp_path, "needs a CUDA GPU", ci=True)
    assert out.returncode == 0 and "1 skipped" in out.stdout, out.stdout + out.stderr


def test_outside_ci_a_data_skip_is_a_skip(tmp_path):
    out = _session(tmp_path, "needs MNIST: python -m distid.data fetch mnist", ci=False)
    assert out.returncode == 0 and "1 skipped" in out.stdout, out.stdout + out.stderr
