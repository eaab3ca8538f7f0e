"""Data parallelism by hand (lesson 2): every rank holds the whole model, computes gradients on
its slice of the global batch, and the ranks average them with the hand-written ring all-reduce:
g ← (1/N) Σ_r g_r, one flat bucket of D floats, 2(N−1)/N·4D bytes sent per rank per step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from distid.primitives import ByteMeter, ring_all_reduce, tree_broadcast


class HandDataParallel:
    """Keeps a model's replicas identical across ranks without DistributedDataParallel.

    1. At construction, rank 0's parameters are broadcast (binomial tree), as DDP does.
    2. After loss.backward(), sync_gradients() averages .grad over ranks in one flat buffer.
    """

    def __init__(self, module: nn.Module, group: dist.ProcessGroup | None = None):
        self.module, self.group = module, group
        self.meter = ByteMeter()  # bytes of gradient sync since the last reset
        self.setup_meter = ByteMeter()
        for p in module.parameters():
            tree_broadcast(p.data, src=0, group=group, meter=self.setup_meter)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def sync_gradients(self) -> None:
        """grad ← mean over ranks of grad, for every parameter that has one."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        ring_all_reduce(flat, group=self.group, meter=self.meter)
        flat /= dist.get_world_size(self.group)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
