"""Faults under torchrun (gloo, 2 ranks): a rank killed mid-run is restarted from the last checkpoint
and the run ends where an uninterrupted one does; a crash between writing and renaming a checkpoint
leaves the previous one in use; a rank that dies or hangs never hangs the other, which names it; a
NaN loss stops the run at its step with the last good checkpoint kept; a rank that keeps its own
gradient for one step is named by the replica check. The time limit given to
`finish` is each test's bound: past it the test fails."""

import sys

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from procs import run, user_env

pytestmark = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
STEPS = 16


def torchrun(out, *extra, restarts=0, fault="", timeout=240, steps=STEPS, resume=False, nproc=2, agent=False):
    """distid.train on 2 ranks, d = 64, a checkpoint every 5 steps; DISTID_FAULT = `fault`. With
    restarts, or `agent` (a test of what torchrun's agent prints), under torchrun itself, else as forks
    (tests/forkrun.py: torchrun's worker environment and its rule that a failed rank stops the others).
    With a store per restart (TORCH_DISABLE_SHARE_RDZV_TCP_STORE) the workers meet at the agent's
    address, by default the host's name: 127.0.0.1 instead, whatever this machine's name resolves to."""
    agent = agent or restarts > 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    if agent:
        cmd += [f"--max-restarts={restarts}", "--monitor-interval=0.5", "--local-addr=127.0.0.1"]
    cmd += ["-m", "distid.train", "--config", "configs/mnist_fc_subspace.toml", "--out", str(out)]
    cmd += ["--resume"] if resume else []
    for kv in (f"data.root={DATA_ROOT}", f"train.steps={steps}", "subspace.d=64", "checkpoint.every=5",
               "train.log_every=100", *extra):
        cmd += ["--set", kv]
    env = user_env(DISTID_FAULT=fault, **({"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if agent else {}))
    return run(cmd, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    res = torchrun(out)
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(out / "trainable.pt")["d"]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_restart_after_a_killed_rank_resumes_and_ends_the_same(tmp_path, uninterrupted):
    res = torchrun(tmp_path, restarts=1, fault="rank=1,step=12")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 1: DISTID_FAULT: exit after 12 steps" in res.stderr
    assert f"resuming from {tmp_path}/checkpoints/step_000010.pt" in res.stdout  # 2 steps lost, < 5
    assert torch.equal(torch.load(tmp_path / "trainable.pt")["d"], uninterrupted)


def test_crash_between_write_and_rename_keeps_the_previous_checkpoint(tmp_path, uninterrupted):
    res = torchrun(tmp_path, fault="rank=0,step=10,mode=rename")
    assert res.returncode != 0 and "dying before renaming checkpoint 10" in res.stderr
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [".tmp-step_000010", "step_000005.pt"]
    assert not (tmp_path / "summary.json").exists()
    res = torchrun(tmp_path, resume=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {ckpts}/step_000005.pt" in res.stdout
    assert torch.equal(torch.load(tmp_path / "trainable.pt")["d"], uninterrupted)


def test_a_rank_that_dies_stops_the_group_and_is_named(tmp_path):
    res = torchrun(tmp_path, fault="rank=1,step=3", timeout=120, agent=True)  # bound: 120 s (docs/when_things_go_wrong.md)
    assert res.returncode != 0
    assert "rank 1: DISTID_FAULT: exit after 3 steps" in res.stderr
    assert "rank       : 1 (local_rank: 1)" in res.stderr.replace("rank      :", "rank       :")
    assert not (tmp_path / "summary.json").exists()


def test_a_rank_that_hangs_is_named_by_the_other_within_the_timeout(tmp_path):
    res = torchrun(tmp_path, "dist.timeout_s=10", fault="rank=1,step=3,mode=hang", timeout=120)  # 10 s: start-up skew on a loaded machine stays inside it
    assert res.returncode != 0
    msg = errors(res.stderr)
    assert len(msg) == 1 and msg[0].startswith("error: rank 0: a collective failed at step 4"), res.stderr[-3000:]
    assert "Timed out" in msg[0] and "rank(s) [1] did not answer" in msg[0]
    assert not (tmp_path / "summary.json").exists()


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    res = torchrun(tmp_path, fault="rank=1,step=7,mode=nan", timeout=120)
    assert res.returncode != 0
    msg = errors(res.stderr)
    assert len(msg) == 1 and "at step 8: training diverged" in msg[0], res.stderr[-3000:]
    assert f"the last good checkpoint is {tmp_path}/checkpoints/step_000005.pt" in msg[0]
    assert not (tmp_path / "summary.json").exists()
    d = torch.load(tmp_path / "checkpoints" / "step_000005.pt", weights_only=True)["trainable"]["d"]
    assert torch.isfinite(d).all()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000005.pt"]
    said = (tmp_path / "error.txt").read_text()  # the folder of a failed run says why
    assert "step 8: Diverged:" in said and "training diverged" in said, said


# subspace: checked every 2 steps, so after step 4; LoRA: before the checkpoint of step 5 (ckpt_every = 5)
@pytest.mark.parametrize("method,every,found_after", [("subspace", 2, 4), ("lora", 0, 5)])
def test_a_rank_that_skips_a_synchronisation_is_named_by_the_replica_check(tmp_path, method, every, found_after):
    res = torchrun(tmp_path, f"train.method={method}", f"dist.check_replicas_every={every}",
                   "train.global_batch=120", fault="rank=1,step=3,mode=unsynced", steps=8, nproc=3, timeout=120)
    assert res.returncode != 0 and "rank 1: DISTID_FAULT: keeping its own gradient in step 4" in res.stderr
    msg = errors(res.stderr)
    assert len(msg) == 1, res.stderr[-3000:]
    assert f"after {found_after} steps the replicas' trainable states differ: rank(s) 1 differ from the other 2" \
        in msg[0], msg[0]
    assert not (tmp_path / "summary.json").exists()
    assert not (tmp_path / "checkpoints" / f"step_{found_after:06d}.pt").exists()  # no replica's copy kept
