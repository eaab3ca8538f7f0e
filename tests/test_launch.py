"""launch/ recipes: one node, two torchrun "nodes" on 127.0.0.1, a node that never arrives, SLURM."""

import json
import os
import stat
import time

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.runtime import free_port
from procs import finish, run, start, user_env

TRAIN = ["distid.train", "--config", "configs/mnist_fc_subspace.toml", "--set", "train.steps=14",
         "--set", "train.log_every=7", "--set", "subspace.d=100", "--set", f"data.root={DATA_ROOT}"]


def multinode_env(port: int, job: str, **extra) -> dict:
    settings = dict(NNODES="2", NPROC_PER_NODE="2", HEAD_ADDR="127.0.0.1", HEAD_PORT=str(port), JOB_ID=job,
                    JOIN_TIMEOUT="60")
    return user_env(**{**settings, **extra})


@pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
def test_two_nodes_on_one_host_equal_one_node_of_four(tmp_path):
    port = free_port()
    nodes = [start(["bash", "launch/multinode.sh", *TRAIN, "--out", str(tmp_path / "two")],
                   multinode_env(port, f"two-{port}")) for _ in range(2)]
    done = [finish(p, timeout=300) for p in nodes]
    for out in done:
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.startswith("+ torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d")
    one = run(["bash", "launch/local.sh", "4", *TRAIN, "--out", str(tmp_path / "one")], timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert one.stdout.startswith("+ torchrun --standalone --local-addr=127.0.0.1 --nproc_per_node=4 -m distid.train")
    two_s = json.loads((tmp_path / "two" / "summary.json").read_text())
    one_s = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert (two_s["world_size"], two_s["nnodes"], two_s["local_world_size"]) == (4, 2, 2)
    assert (one_s["world_size"], one_s["nnodes"]) == (4, 1)
    assert two_s["backend"] == "gloo" and two_s["device"] == "cpu" and "peak_gpu_mb" in two_s
    d_two = torch.load(tmp_path / "two" / "trainable.pt")["d"]
    d_one = torch.load(tmp_path / "one" / "trainable.pt")["d"]
    assert d_one.abs().max() > 0
    torch.testing.assert_close(d_two, d_one, rtol=1e-5, atol=1e-7)


def test_a_node_that_never_arrives_times_out(tmp_path):
    port = free_port()
    env = multinode_env(port, f"lonely-{port}", JOIN_TIMEOUT="4", NPROC_PER_NODE="1")
    t0 = time.monotonic()
    out = run(["bash", "launch/multinode.sh", "distid.primitives", "--out", str(tmp_path)], timeout=90, env=env)
    elapsed = time.monotonic() - t0
    assert out.returncode != 0
    assert "RendezvousTimeoutError" in out.stderr
    assert "timed out after 4 s waiting for 2 nodes" in out.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s"  # join_timeout 4 s + start-up


def test_recipes_without_arguments_print_usage():
    for script in ("launch/local.sh", "launch/multinode.sh"):
        out = run(["bash", script], timeout=30)
        assert out.returncode == 2 and "usage:" in out.stderr


def test_slurm_recipe_builds_one_torchrun_per_node(tmp_path):
    assert run(["bash", "-n", "launch/slurm.sbatch"], timeout=30).returncode == 0
    fake = tmp_path / "bin"
    fake.mkdir()
    srun = fake / "srun"
    srun.write_text(f'#!/usr/bin/env bash\necho "$@" > {tmp_path}/srun_args\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = user_env(SLURM_JOB_NODELIST="gpu[03-05,09]", SLURM_JOB_NUM_NODES="4", SLURM_JOB_ID="4242",
                   SLURM_GPUS_ON_NODE="8")
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    out = run(["bash", "launch/slurm.sbatch", "distid.train", "--config", "configs/mnist_fc_subspace.toml"],
              timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    args = (tmp_path / "srun_args").read_text().split()
    assert args == ["--ntasks-per-node=1", "torchrun", "--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d",
                    "--rdzv-endpoint=gpu03:29500", "--rdzv-id=4242", "--rdzv-conf=join_timeout=600",
                    "-m", "distid.train", "--config", "configs/mnist_fc_subspace.toml"]
    assert out.stdout.startswith("+ srun --ntasks-per-node=1 torchrun --nnodes=4")
