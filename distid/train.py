"""Train a model fully, with LoRA, or in a random subspace, on one process or under DDP, FSDP or
local steps, and account for what it costs.

    python -m distid.train --config configs/mnist_fc_subspace.toml [--set subspace.d=1000] [--out DIR]
    torchrun --nproc_per_node=4 -m distid.train --config configs/mnist_fc_subspace.toml

One step: this rank's slice of the global batch → forward (subspace: θ = θ₀ + P·d inside the
model) → loss → backward, during which the strategy (dist.strategy, distid/strategies/) synchronises
the trainable gradients (DDP: all-reduce of d floats, LoRA's factors, or all D; FSDP: reduce-scatter,
after all-gathering each layer's weights) → optimizer step, after which a strategy that synchronises
less often (local_sgd: DiLoCo) does so every H steps. Output: runs/<name>-<time>/ (summary.json,
tb/, trainable.pt, checkpoints/), or --out.

This file is the loop and nothing else; what each line calls lives in the layer that owns it
(docs/design.md). Every experiment trains through `train` too.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from distid.config import Config
from distid.observe.summary import Summary
from distid.run import cli
from distid.run.job import Job


def train_step(net, opt, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on (x [B, …], y [B]): returns (loss, logits [B, classes]), detached."""
    opt.zero_grad(set_to_none=True)
    logits = net(x)  # subspace: θ = θ₀ + P·d, then the model's own forward
    loss = F.cross_entropy(logits, y)
    loss.backward()  # DDP all-reduces the trainable gradients (d floats for a subspace) bucket by
    # bucket during this call; FSDP reduce-scatters them
    opt.step()  # every rank applies the same synchronised gradient; local steps: each its own, and
    # every H steps the strategy's hook on this step all-reduces θ_start − θ and takes the outer step
    return loss.detach(), logits.detach()  # this step's graph is freed here, not held into the next


def train_model(cfg: Config, out_dir: str | None = None, resume: bool = False) -> tuple[Summary, torch.nn.Module]:
    """Train as `cfg` says; returns the summary and the trained model (in a subspace, LoRA'd or plain)."""
    with Job(cfg, out_dir, resume) as job:  # process group, data, model, strategy, optimizer, checkpoint
        batches = job.batches()
        for step in job.steps():  # from step 0, or where the checkpoint left off
            x, y = next(batches)  # this rank's slice of the global batch
            x = job.inject_faults(step, x)  # DISTID_FAULT fire drills (exit, hang, NaN); else x itself
            with job.meter.step(step):  # ledger phase, FLOP count and timer of this step
                loss, logits = train_step(job.net, job.opt, x, y)
            job.after_step(step, loss, logits, y)  # NaN stop; progress, evaluation, checkpoint when due
        return job.finish(), job.model  # final test accuracy, summary.json, the closing table


def train(cfg: Config, out_dir: str | None = None, resume: bool = False) -> Summary:
    """Train as `cfg` says; rank 0 writes summary.json (+ TensorBoard, trainable.pt) to out_dir."""
    return train_model(cfg, out_dir, resume)[0]


def train_logged(cfg: Config, out_dir: str | Path) -> Summary:
    """`train`, with what it prints (progress lines, the closing table) going to out_dir/train.log, for
    experiments that train many runs and print one line each."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.log", "a") as log, contextlib.redirect_stdout(log):
        return train(cfg, str(folder))


def main(argv=None) -> int:
    def add_args(p):
        p.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in --out (default: the newest runs/<name>-*); "
                            "automatic when torchrun restarts the group")

    def body(args, cfg):
        train(cfg, args.out, args.resume)

    return cli.main(argv, "python -m distid.train", __doc__, body, add_args, join=False)


if __name__ == "__main__":
    sys.exit(main())
