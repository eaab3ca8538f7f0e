"""Run commands the way a user does, with a hard time limit that also kills their children.

`run` runs a `python -m distid…` or `torchrun --standalone --nproc_per_node=N -m distid…` command as
forks of a process that has imported torch already (tests/forkrun.py: same environment, folder and
arguments, a fraction of the start-up); `start` and every other command start real processes.
"""

import os
import signal
import subprocess
import sys

import pytest

import forkrun

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)  # the venv's bin: torchrun, python


def user_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DISTID_BACKEND="gloo", **extra)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    return env


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start `cmd` in its own session (so it and its workers can be killed together)."""
    return subprocess.Popen(cmd, cwd=REPO, env=env or user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for `proc`; past `timeout` kill its whole process group and fail the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(proc.args)} timed out after {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(cmd: list[str], timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        forked = forkrun.run(cmd, timeout, env or user_env(), REPO, server_env=user_env())
    except TimeoutError as e:
        pytest.fail(str(e))
    return forked if forked is not None else finish(start(cmd, env), timeout)


def torchrun(nproc: int, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return run(cmd, timeout)
