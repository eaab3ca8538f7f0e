"""The suite's own guard (tests/writes_nowhere.py) fails a session that writes into the repository."""

import sys

from procs import REPO, run


def _session(tmp_path, body: str):
    (tmp_path / "root" / "runs").mkdir(parents=True)
    (tmp_path / "test_inner.py").write_text(f"from pathlib import Path\n\ndef test_inner():\n    {body}\n")
    env_root = str(tmp_path / "root")
    import os

    env = dict(os.environ, DISTID_WATCH_ROOT=env_root, PYTHONPATH=f"{REPO}/tests")
    return run([sys.executable, "-m", "pytest", "-q", "-p", "writes_nowhere", "--rootdir", str(tmp_path),
                "-c", "/dev/null", str(tmp_path / "test_inner.py")], timeout=120, env=env)


def test_a_session_writing_into_runs_fails(tmp_path):
    out = _session(tmp_path, f"Path({str(tmp_path / 'root' / 'runs' / 'x')!r}).mkdir(); "
                             f"Path({str(tmp_path / 'root' / 'runs' / 'x' / 'summary.json')!r}).write_text('{{}}')")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "wrote into" in out.stdout and "runs/x/summary.json" in out.stdout


def test_a_session_writing_into_tmp_passes(tmp_path):
    out = _session(tmp_path, f"Path({str(tmp_path / 'elsewhere.txt')!r}).write_text('x')")
    assert out.returncode == 0, out.stdout + out.stderr
