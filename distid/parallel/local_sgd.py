"""Sync less often: every rank takes H local steps alone, then the replicas synchronise once
(`train.sync_every = H`; H = 1 is DDP, which synchronises every gradient).

At a synchronisation each replica i holds θᵢ, grown from the common θ_start by H inner steps. The
pseudo-gradients Δᵢ = θ_start − θᵢ are averaged by one all-reduce (T trainable numbers: 4·T bytes
handed in, 2·T with `train.outer_dtype` bfloat16/float16), and from θ_start:
    average  (local SGD):         θ ← θ_start − mean Δ          = the replicas' mean
    nesterov (DiLoCo, Douillard et al. 2023): outer SGD with Nesterov momentum μ and rate η on the
             gradient mean Δ: v ← μ·v + mean Δ;  θ ← θ_start − η·(mean Δ + μ·v)
then θ_start ← θ: every replica holds the same numbers again. Inner steps send nothing; each rank's
inner optimizer state (Adam's moments) stays its own, as in DiLoCo. A subspace's pseudo-gradient is
Δd (4·d bytes per synchronisation), LoRA's its factors'.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


class OuterSync:
    """The outer loop over `params` (the trainable tensors, updated in place by the inner optimizer)."""

    def __init__(self, params, every: int, outer: str = "nesterov", lr: float = 0.7, momentum: float = 0.9,
                 dtype: str = "float32", world_size: int = 1):
        self.params, self.every, self.n = list(params), every, world_size
        self.dtype = getattr(torch, dtype)
        nesterov = outer == "nesterov"
        self.opt = torch.optim.SGD(self.params, lr=lr if nesterov else 1.0,
                                   momentum=momentum if nesterov else 0.0, nesterov=nesterov and momentum > 0)
        self.start = [p.detach().clone() for p in self.params]  # θ_start: what every replica held at the last sync

    def due(self, step: int, last: int) -> bool:
        """Synchronise after `step` (0-based)? After every H-th step, and after the last one (the run
        ends with one model)."""
        return (step + 1) % self.every == 0 or step + 1 == last

    @torch.no_grad()
    def sync(self) -> None:
        """One all-reduce of the pseudo-gradients, then the outer step (see the module docstring)."""
        deltas = [s - p for s, p in zip(self.start, self.params)]
        flat = _flatten_dense_tensors(deltas).div_(self.n).to(self.dtype)  # [T]: mean = Σ (Δᵢ / N)
        if self.n > 1:
            dist.all_reduce(flat)
        for p, s, g in zip(self.params, self.start, _unflatten_dense_tensors(flat.float(), deltas)):
            p.copy_(s)
            p.grad = g.contiguous()
        self.opt.step()
        for p, s in zip(self.params, self.start):
            s.copy_(p)
            p.grad = None

    def state_dict(self) -> dict:
        """The outer optimizer's state (Nesterov's momentum): θ_start is the model itself right after a
        synchronisation, the only place a checkpoint is written."""
        return self.opt.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the outer optimizer, and take θ_start from the (just restored) parameters."""
        self.opt.load_state_dict(state)
        with torch.no_grad():
            for p, s in zip(self.params, self.start):
                s.copy_(p)


def falls_due(done: int, every: int, h: int = 1) -> bool:
    """Is something that runs every `every` steps (an evaluation, a replica check, a checkpoint) due
    after `done` steps? With H = sync_every > 1 the replicas are one model only at a synchronisation,
    so it falls on the first synchronisation at or after each multiple of `every` (H = 1: done % every == 0)."""
    return every > 0 and done % h == 0 and done // every > (done - h) // every
