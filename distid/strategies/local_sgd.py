"""`dist.strategy = "local_sgd"`: sync less often. Every rank takes H = `local_sgd.every` local
steps alone, then the replicas synchronise once (after every H-th step, and after the last).

At a synchronisation each replica i holds θᵢ, grown from the common θ_start by its inner steps. The
pseudo-gradients Δᵢ = θ_start − θᵢ are averaged by one all-reduce (T trainable numbers: 4·T bytes
handed in, 2·T with `local_sgd.outer_dtype` bfloat16/float16), and from θ_start:
    average  (local SGD):         θ ← θ_start − mean Δ          = the replicas' mean
    nesterov (DiLoCo, Douillard et al. 2023): outer SGD with Nesterov momentum μ and rate η on the
             gradient mean Δ: v ← μ·v + mean Δ;  θ ← θ_start − η·(mean Δ + μ·v)
then θ_start ← θ: every replica holds the same numbers again, which the run's replica check
(a hash per rank, after every synchronisation) confirms.
Inner steps send nothing; each rank's inner optimizer state (Adam's moments) stays its own, as in
DiLoCo. A subspace's pseudo-gradient is Δd (4·d bytes per synchronisation), LoRA's its factors'.
Per training step: 4·T·(synchronisations ÷ steps) over the steps a process ran (a resumed run's
own, a run stopped at a plateau's), which is 4·T/H only when H divides them.

The synchronisation runs after the optimizer's step (a post-hook, as torchft's LocalSGD), inside
the loop's step: the step's time includes it; the ledger books it in its own phase, "sync".
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from distid.parallel.consistency import check_replicas
from distid.strategies.base import Strategy, tensor_bytes


def syncs(steps: int, every: int) -> int:
    """Synchronisations in a run of `steps` steps: after every H-th step and after the last."""
    return steps // every + (steps % every > 0)


class LocalSGD(Strategy):
    """H local steps, then one all-reduce of the pseudo-gradients and the outer step."""

    own_optimizer = True
    own_state = "inner optimizer state"
    rebases = True  # θ_start follows the re-drawn parameters (rebase)

    def __init__(self, cfg, n, device):
        super().__init__(cfg, n, device)
        s = cfg.local_sgd
        self.period, self.outer, self.dtype = s.every, s.outer, getattr(torch, s.outer_dtype)
        self.outer_lr, self.outer_momentum = s.outer_lr, s.outer_momentum

    @property
    def label(self) -> str:
        return f"{'DiLoCo' if self.outer == 'nesterov' else 'local SGD'} (H = {self.period})"

    def wrap(self, model):
        """The model itself: no per-step synchronisation. The replicas must have been built equal."""
        self.params = [p for p in model.parameters() if p.requires_grad]
        check_replicas(model, 0)  # there is no start-up broadcast
        nesterov = self.outer == "nesterov"
        self.opt = torch.optim.SGD(self.params, lr=self.outer_lr if nesterov else 1.0,
                                   momentum=self.outer_momentum if nesterov else 0.0,
                                   nesterov=nesterov and self.outer_momentum > 0)
        self.start = [p.detach().clone() for p in self.params]  # θ_start: what every replica held at the last sync
        itemsize = torch.tensor([], dtype=self.dtype).element_size()
        self.per_sync = sum(p.numel() for p in self.params) * itemsize if self.n > 1 else 0
        return model  # payload: in attach, which knows the run's steps

    def _per_step(self) -> dict:
        """Bytes handed in per step over the steps this process ran (start, done] — the run's planned
        steps before the first: a synchronisation's bytes × those in it ÷ its steps."""
        start, H = self.start_step, self.period
        last = self.done if self.done > start else self.steps
        syncs = last // H - start // H + (last == self.steps and last % H > 0)
        each = self.per_sync * syncs / max(last - start, 1)
        return {"all_reduce": each, "total": each} if self.per_sync else {"total": 0}

    def attach(self, opt, ledger, start: int, steps: int) -> None:
        """After each optimizer step: count it, and synchronise after every H-th and the last (the
        replicas are compared there by the run's replica check, run/after_step.py)."""
        self.ledger, self.start_step, self.done, self.steps = ledger, start, start, steps
        self.payload = self._per_step()
        opt.register_step_post_hook(lambda *_: self.after_step())

    def after_step(self) -> None:
        self.done += 1
        if self.done % self.period == 0 or self.done == self.steps:
            with self.ledger.phase("sync", steps=1):
                self.sync()
        self.payload = self._per_step()

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

    @torch.no_grad()
    def rebase(self, reset: bool) -> None:
        """θ_start ← the parameters (a re-draw has just set them, right after a synchronisation);
        `reset`: the outer momentum, which belongs to the old basis, is dropped."""
        for p, s in zip(self.params, self.start):
            s.copy_(p)
        if reset:
            self.opt.state.clear()

    def state_bytes(self) -> dict:
        return {"θ_start": tensor_bytes(self.start), "outer momentum": tensor_bytes(self.opt.state_dict()["state"])}

    def shared_state_dict(self) -> dict:
        """The outer optimizer's state (Nesterov's momentum), alike on every rank: θ_start is the model
        itself right after a synchronisation, the only place a checkpoint is written."""
        return self.opt.state_dict()

    def load_shared_state_dict(self, state: dict) -> None:
        """Restore the outer optimizer, and take θ_start from the (just restored) parameters."""
        self.opt.load_state_dict(state)
        with torch.no_grad():
            for p, s in zip(self.params, self.start):
                s.copy_(p)


def overrides(every: int, outer: str = "nesterov") -> tuple[str, ...]:
    """The `--set` lines that turn local steps on (DiLoCo by default), for experiments that build runs."""
    return ("dist.strategy=local_sgd", f"local_sgd.every={every}", f"local_sgd.outer={outer}")


def describe(cfg) -> dict:
    """The outer step's settings, for a report: {lr, momentum}."""
    return dict(lr=cfg.local_sgd.outer_lr, momentum=cfg.local_sgd.outer_momentum)
