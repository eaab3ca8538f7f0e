"""tests/forkrun.py stands in for torchrun and `python -m` in the tests: each rank sees what a real one
sees (torchrun's variables, argv, sys.path, folder, environment), the first failure stops the others
as torchrun does, a timeout kills the whole run, and what a fork cannot give runs as a real process."""

import json
import os
import re
import sys
import time

import pytest

import forkrun
from procs import REPO, finish, start, user_env

TESTS = os.path.dirname(os.path.abspath(__file__))
RUN_ONLY = ("TORCHELASTIC_RUN_ID", "MASTER_PORT")  # a new value each run
AGENT = ("TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE")  # torchrun's agent holds the store and
# names an error file; a fork has no agent: rank 0 holds the store (torch's static rendezvous) and no error file


pytestmark = pytest.mark.skipif(not forkrun.enabled(), reason="DISTID_TEST_FORK=0 or not Linux: every command "
                                                               "runs as a real process")


def env(**extra) -> dict:
    return user_env(PYTHONPATH=TESTS, **extra)


def torchrun_cmd(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", *args]


def forked(cmd, timeout=60, **extra):
    res = forkrun.run(cmd, timeout, env(**extra), REPO, server_env=user_env(), modules=("fork_probe",))
    assert res is not None, "the probe should run as forks"
    return res


def gone(pid: int) -> bool:
    """The process has ended (a zombie no one has reaped yet has ended too)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def reports(folder) -> dict[int, dict]:
    return {int(p[4:-5]): json.loads(open(os.path.join(folder, p)).read()) for p in os.listdir(folder)}


def test_a_forked_rank_sees_what_a_torchrun_worker_sees(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "fork").mkdir()
    real = finish(start(torchrun_cmd(2, "fork_probe", str(tmp_path / "real"), "ok"), env(FORK_PROBE="x")), 120)
    fork = forked(torchrun_cmd(2, "fork_probe", str(tmp_path / "fork"), "ok"), FORK_PROBE="x")
    assert real.returncode == fork.returncode == 0, real.stderr[-2000:] + fork.stderr[-2000:]
    said = [sorted(re.findall(r"rank \d started", r.stdout)) for r in (real, fork)]  # unbuffered (`python -u`):
    assert said[0] == said[1] == ["rank 0 started", "rank 1 started"]  # two ranks' text and newline may interleave
    them, us = reports(tmp_path / "real"), reports(tmp_path / "fork")
    assert sorted(them) == sorted(us) == [0, 1]
    for rank in (0, 1):
        a, b = them[rank], us[rank]
        assert set(a["env"]) - set(AGENT) == set(b["env"]) - set(AGENT)
        assert {k: v for k, v in a["env"].items() if k not in RUN_ONLY + AGENT} == \
               {k: v for k, v in b["env"].items() if k not in RUN_ONLY + AGENT}
        assert b["env"]["TORCHELASTIC_USE_AGENT_STORE"] == "False"
        assert a["argv"][2:] == b["argv"][2:] == ["ok"]
        assert a["argv"][0] == b["argv"][0] == os.path.join(TESTS, "fork_probe.py")
        assert a["path0"] == b["path0"] == a["cwd"] == b["cwd"] == REPO
        assert a["probe"] == b["probe"] == "x"  # the request's own environment
    assert len({us[0]["env"]["MASTER_PORT"], us[1]["env"]["MASTER_PORT"]}) == 1


def test_a_plain_run_has_no_torchrun_variables_and_keeps_its_exit_code(tmp_path):
    res = forked([sys.executable, "-m", "fork_probe", str(tmp_path), "ok"])
    assert res.returncode == 0 and res.stdout == "rank 0 started\n"
    assert reports(tmp_path)[0]["env"] == {"OMP_NUM_THREADS": "1"}
    res = forked([sys.executable, "-m", "fork_probe", str(tmp_path), "raise"])
    assert res.returncode == 1 and res.stderr.rstrip().endswith("RuntimeError: the probe raised")
    assert "Traceback" in res.stderr


def test_the_first_failing_rank_stops_the_others_and_the_run_exits_1(tmp_path):
    t = time.monotonic()
    res = forked(torchrun_cmd(3, "fork_probe", str(tmp_path), "fail"))
    assert res.returncode == 1 and time.monotonic() - t < 30  # the others sleep 120 s
    assert sorted(reports(tmp_path)) == [0, 1, 2] and all(gone(r["pid"]) for r in reports(tmp_path).values())


def test_a_timeout_kills_every_rank_and_says_what_they_printed(tmp_path):
    with pytest.raises(TimeoutError, match="timed out after 3 s:\n(.|\n)*rank . started"):
        forked(torchrun_cmd(2, "fork_probe", str(tmp_path), "hang"), timeout=3)
    time.sleep(0.5)
    assert sorted(reports(tmp_path)) == [0, 1] and all(gone(r["pid"]) for r in reports(tmp_path).values())


def test_what_a_fork_cannot_give_runs_as_a_real_process(monkeypatch):
    py = sys.executable
    assert forkrun.parse([py, "-m", "distid.train", "--set", "a=1"]) == (0, "distid.train", ["--set", "a=1"])
    assert forkrun.parse(torchrun_cmd(4, "distid.train", "--x")) == (4, "distid.train", ["--x"])
    assert forkrun.parse([py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                          "distid.probe"]) == (2, "distid.probe", [])
    for cmd in ([py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1", "-m",
                 "distid.train"],  # restarts need torchrun's agent
                [py, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2", "-m", "distid.train"],
                [py, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "distid.train"],  # not standalone
                [py, "-m", "pytest"], [py, "tests/torchft_diloco.py"], ["bash", "launch/local.sh"],
                torchrun_cmd(2, "fork_probe")):  # not a distid module
        assert forkrun.parse(cmd) is None, cmd
    cmd = [py, "-m", "distid.train", "--help"]
    base = user_env()
    assert forkrun.run(cmd, 60, user_env(PYTHONHASHSEED="7"), REPO, server_env=base) is None  # read when Python starts
    assert forkrun.run(cmd, 60, user_env(TORCH_LOGS="dynamo"), REPO, server_env=base) is None  # when torch is imported
    assert forkrun.run(cmd, 60, base, REPO, server_env=base).returncode == 0  # the same command, forked
    monkeypatch.setenv("DISTID_TEST_FORK", "0")
    assert forkrun.run(cmd, 60, base, REPO, server_env=base) is None
