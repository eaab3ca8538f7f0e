"""The run API: `run(cfg) → Summary`, for everything that trains as part of a larger experiment
(compare, sweep, frontier, convergence, bench, tests). The loop a workshop reads is distid/train.py;
this is the same loop with the step in one call, so that nothing imports train.py.
tests/test_train.py holds the two equal, bit for bit.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from distid.config import Config
from distid.observe.summary import Summary
from distid.run.job import Job


def train_step(net, opt, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on (x [B, …], y [B]): returns (loss, logits [B, classes])."""
    opt.zero_grad(set_to_none=True)
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()  # DDP/FSDP synchronise the trainable gradients during this call
    opt.step()
    return loss.detach(), logits.detach()  # the graph is freed here, not held into the next step


def run_with_model(cfg: Config, out_dir: str | None = None, resume: bool = False) -> tuple[Summary, torch.nn.Module]:
    """Train as `cfg` says; returns the summary and the trained model (SubspaceModel, LoRA'd or plain)."""
    with Job(cfg, out_dir, resume) as job:
        batches = job.batches()
        for step in job.steps():
            x, y = next(batches)
            x = job.inject_faults(step, x)
            with job.meter.step(step):
                loss, logits = train_step(job.net, job.opt, x, y)
            job.outer_sync(step)
            job.after_step(step, loss, logits, y)
        return job.finish(), job.model


def run(cfg: Config, out_dir: str | None = None, resume: bool = False) -> Summary:
    """Train as `cfg` says; rank 0 writes summary.json (+ TensorBoard, trainable.pt) to out_dir."""
    return run_with_model(cfg, out_dir, resume)[0]


def run_logged(cfg: Config, out_dir: str | Path) -> Summary:
    """`run`, with what it prints (progress lines, the closing table) going to out_dir/train.log, for
    experiments that train many runs and print one line each."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.log", "a") as log, contextlib.redirect_stdout(log):
        return run(cfg, str(folder))
