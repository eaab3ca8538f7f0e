"""Train a model fully, with LoRA, or in a random subspace, on one process or under DDP or FSDP,
and account for what it costs.

    python -m distid.train --config configs/mnist_fc_subspace.toml [--set train.d=1000] [--out DIR]
    torchrun --nproc_per_node=4 -m distid.train --config configs/mnist_fc_subspace.toml

One step: this rank's slice of the global batch → forward (subspace: θ = θ₀ + P·d inside the
model) → loss → backward, during which the strategy synchronises the trainable gradients (DDP:
all-reduce of d floats, LoRA's factors, or all D; FSDP: reduce-scatter, after all-gathering each
layer's weights) → optimizer step. With train.sync_every = H > 1 the ranks step alone and
synchronise every H steps (local SGD, DiLoCo: parallel/local_sgd.py). Output: runs/<name>-<time>/
(summary.json, tb/, trainable.pt, checkpoints/), or --out.

This file is the loop and nothing else; what each line calls lives in the layer that owns it
(docs/design.md). Experiments train through `distid.run.api.run`, the same loop in one call.
"""

from __future__ import annotations

import sys

import torch.nn.functional as F

from distid.config import Config
from distid.observe.summary import Summary
from distid.run import cli
from distid.run.job import Job


def train(cfg: Config, out_dir: str | None = None, resume: bool = False) -> Summary:
    with Job(cfg, out_dir, resume) as job:  # process group, data, model, strategy, optimizer, checkpoint
        net, opt, batches = job.net, job.opt, job.batches()
        for step in job.steps():  # from step 0, or where the checkpoint left off
            x, y = next(batches)  # this rank's slice of the global batch
            x = job.inject_faults(step, x)  # DISTID_FAULT fire drills (exit, hang, NaN); else x itself
            with job.meter.step(step):  # ledger phase, FLOP count and timer of this step
                opt.zero_grad(set_to_none=True)
                logits = net(x)  # subspace: θ = θ₀ + P·d, then the model's own forward
                loss = F.cross_entropy(logits, y)
                loss.backward()  # DDP all-reduces the trainable gradients (d floats for a
                # subspace) bucket by bucket during this call; FSDP reduce-scatters them
                opt.step()  # every rank applies the same synchronised gradient
            job.outer_sync(step)  # train.sync_every = H > 1: no DDP, each rank stepped alone; every H
            # steps one all-reduce of θ_start − θ and an outer step (DiLoCo) make the replicas one model
            job.after_step(step, loss, logits, y)  # NaN stop; progress, evaluation, checkpoint when due
            del loss, logits  # this step's autograd graph: kept into the next step, it raised peak RSS ~1.5×
        return job.finish()  # final test accuracy, summary.json, the closing table


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
