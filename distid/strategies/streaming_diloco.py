"""`dist.strategy = "streaming_diloco"`: DiLoCo whose model is synchronised a fragment at a time
(Streaming DiLoCo, Douillard et al. 2025), on torchft's schedule (torchft.local_sgd.DiLoCo).

The trainable tensors, in parameter order, are cut into P = `streaming.fragments` contiguous groups,
at the tensor boundaries nearest to k·T/P (k = 1 … P−1; each fragment at least one tensor). Each
fragment p keeps a global copy g_p (alike on every rank) and its own outer optimizer. With
H = `local_sgd.every`, S = H/P and τ = `streaming.delay`, fragments take turns every S steps:
    after step m·S − τ:  start   Δ_p = g_p − θ_p  (θ_p: this rank's fragment now), all-reduce its mean
    after step m·S:      apply   θ_p ← g_p; outer step on mean Δ_p (Nesterov: v ← μ·v + Δ;
                                 θ_p ← g_p − η·(Δ + μ·v)); g_p ← θ_p; θ_p ← (1 − α)·g_p + α·θ_p^local
with p = (m − 1) mod P and α = `streaming.mix` (θ_p^local: the fragment just before the apply, its
last τ inner steps included). Each fragment is thus synchronised once every H steps, fragment p
after steps p·S + S, p·S + S + H, …; the all-reduce runs for τ inner steps (`async_op`) before it
is waited on. Between synchronisations the replicas differ, one fragment or another: the run's
replica check compares the global copies (`digest`), which every rank holds alike.

At the end of the run, an all-reduce still in flight is applied, and every fragment whose
parameters are not its global copy (all but those applied at the last step, and those too when
α > 0) is synchronised once more at once and set to its new global copy (no mix): the run ends as
one model. torchft's DiLoCo does neither (its context manager leaves the replicas as they are).

Bytes: a fragment's synchronisation hands in 4·T_p (2·T_p with `local_sgd.outer_dtype`
bfloat16/float16); per training step 4·T/H in the steady state (every fragment once per H steps),
over the steps a process ran with the final synchronisations included: Σ 4·T_p over the
all-reduces started ÷ steps. Each in ledger phase "sync" (there the ledger waits at once: booked
synchronisations do not overlap the inner steps). State per rank: the global copies (4·T), the
outer momenta (4·T, Nesterov), the fragment in flight (4·T_p, 2·T_p in half precision).
"""

from __future__ import annotations

from itertools import accumulate

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from distid.config import ConfigError
from distid.parallel.consistency import check_replicas, tensors_digest, trainable_digest
from distid.strategies.base import Strategy, tensor_bytes


def split(sizes: list[int], parts: int) -> list[range]:
    """Tensor indices of `parts` contiguous fragments of tensors of `sizes` numbers (len ≥ parts):
    each cut at the tensor boundary nearest to k·T/parts, every fragment at least one tensor."""
    cum, total, ends = list(accumulate(sizes)), sum(sizes), [0]
    for k in range(1, parts):
        room = range(ends[-1] + 1, len(sizes) - (parts - k) + 1)  # ends that leave a tensor for each later one
        ends.append(min(room, key=lambda e: abs(cum[e - 1] - k * total / parts)))
    ends.append(len(sizes))
    return [range(a, b) for a, b in zip(ends, ends[1:])]


def events(done: int, every: int, fragments: int, delay: int) -> tuple[int | None, int | None]:
    """(fragment whose all-reduce starts, fragment whose outer step is applied) after `done` steps
    (None: none); a fragment starting and applied after one step (τ = 0) starts first."""
    spacing = every // fragments
    start = ((done + delay) // spacing - 1) % fragments if (done + delay) % spacing == 0 else None
    apply = (done // spacing - 1) % fragments if done % spacing == 0 else None
    return start, apply


def final(steps: int, every: int, fragments: int, delay: int, mix: float) -> list[int]:
    """Fragments synchronised once more after the last of `steps` steps: those whose parameters are
    not their global copy then (all but the one applied at the last step and those in flight, which
    are applied there; with α > 0 every fragment)."""
    applied = {events(steps, every, fragments, delay)[1]}
    applied |= {events(d, every, fragments, delay)[0] for d in range(max(steps - delay + 1, 1), steps + 1)}
    return [p for p in range(fragments) if mix > 0 or p not in applied]


def started(first: int, last: int, steps: int, every: int, fragments: int, delay: int, mix: float) -> list[int]:
    """The fragments whose all-reduce starts after steps first+1 … last (of a run of `steps`), in
    order, the final synchronisations included when last == steps."""
    out = [s for d in range(first + 1, last + 1) if (s := events(d, every, fragments, delay)[0]) is not None]
    return out + (final(steps, every, fragments, delay, mix) if last == steps else [])


class StreamingDiLoCo(Strategy):
    """DiLoCo, one fragment at a time, each fragment's all-reduce overlapping τ inner steps."""

    own_optimizer = True
    own_state = "inner optimizer state and parameters"

    def __init__(self, cfg, n, device):
        super().__init__(cfg, n, device)
        s, st = cfg.local_sgd, cfg.streaming
        self.period, self.outer, self.dtype = s.every, s.outer, getattr(torch, s.outer_dtype)
        self.outer_lr, self.outer_momentum = s.outer_lr, s.outer_momentum
        self.fragments, self.delay, self.mix = st.fragments, st.delay, st.mix
        if cfg.train.stop_plateau:
            raise ConfigError(f"train.stop_plateau = {cfg.train.stop_plateau} cannot stop Streaming DiLoCo: its "
                              f"fragments are never all synchronised at an evaluation, and a run ends as one model "
                              f"only after its last planned step; set train.stop_plateau = 0")

    @property
    def label(self) -> str:
        mix = f", α = {self.mix:g}" if self.mix else ""
        return f"Streaming DiLoCo (H = {self.period}, {self.fragments} fragments, τ = {self.delay}{mix})"

    def wrap(self, model):
        """The model itself; its trainable tensors cut into fragments, each with a global copy and an
        outer optimizer. The replicas must have been built equal."""
        params = [p for p in model.parameters() if p.requires_grad]
        if len(params) < self.fragments:
            raise ConfigError(f"streaming.fragments = {self.fragments}: more than the model's {len(params)} trainable "
                              f"tensors (a fragment is one or more whole tensors)")
        check_replicas(model, 0)  # there is no start-up broadcast
        self.groups = [[params[i] for i in r] for r in split([p.numel() for p in params], self.fragments)]
        self.globals = [[p.detach().clone() for p in g] for g in self.groups]  # g_p: every rank alike
        nesterov = self.outer == "nesterov"
        self.opts = [torch.optim.SGD(g, lr=self.outer_lr if nesterov else 1.0,
                                     momentum=self.outer_momentum if nesterov else 0.0,
                                     nesterov=nesterov and self.outer_momentum > 0) for g in self.groups]
        itemsize = torch.tensor([], dtype=self.dtype).element_size()
        self.per_sync = [sum(p.numel() for p in g) * itemsize if self.n > 1 else 0 for g in self.groups]
        self.pending: dict[int, tuple] = {}  # fragment → (work or None, flat mean Δ_p [T_p])
        self.peak_in_flight = 0  # bytes of the largest fragment in flight so far (state_bytes)
        return model  # payload: in attach, which knows the run's steps

    def _per_step(self) -> dict:
        """Bytes handed in per step over the steps this process ran (start, done] — the run's planned
        steps before the first: Σ 4·T_p over the all-reduces started ÷ steps."""
        start = self.start_step
        last = self.done if self.done > start else self.steps
        which = started(start, last, self.steps, self.period, self.fragments, self.delay, self.mix)
        each = sum(self.per_sync[p] for p in which) / max(last - start, 1)
        return {"all_reduce": each, "total": each} if self.n > 1 else {"total": 0}

    def attach(self, opt, ledger, start: int, steps: int) -> None:
        """After each optimizer step: start and apply the fragments' synchronisations as due, and at
        the last step the final ones."""
        self.ledger, self.start_step, self.done, self.steps = ledger, start, start, steps
        self.payload = self._per_step()
        opt.register_step_post_hook(lambda *_: self.after_step())

    def after_step(self) -> None:
        self.done += 1
        begin, apply = events(self.done, self.period, self.fragments, self.delay)
        if begin is not None:
            self.begin(begin)
        if apply is not None:
            self.apply(apply, self.mix)
        if self.done == self.steps:
            self.finish()
        self.payload = self._per_step()

    @torch.no_grad()
    def begin(self, p: int) -> None:
        """Start the all-reduce of fragment p's mean pseudo-gradient, Σᵢ (g_p − θ_p,i) / N."""
        deltas = [g - x for g, x in zip(self.globals[p], self.groups[p])]
        flat = _flatten_dense_tensors(deltas).div_(self.n).to(self.dtype)  # [T_p]
        with self.ledger.phase("sync", steps=1):
            work = dist.all_reduce(flat, async_op=True) if self.n > 1 else None
        self.pending[p] = (work, flat)
        self.peak_in_flight = max(self.peak_in_flight, tensor_bytes(flat))

    @torch.no_grad()
    def apply(self, p: int, mix: float) -> None:
        """Wait for fragment p's all-reduce; the outer step from g_p; g_p ← the result; mix in α of
        the local fragment."""
        work, flat = self.pending.pop(p)
        if work is not None:
            work.wait()
        params, start = self.groups[p], self.globals[p]
        local = [x.clone() for x in params] if mix else None
        for x, g, d in zip(params, start, _unflatten_dense_tensors(flat.float(), start)):
            x.copy_(g)
            x.grad = d.contiguous()
        self.opts[p].step()
        for i, (x, g) in enumerate(zip(params, start)):
            g.copy_(x)
            x.grad = None
            if local is not None:
                x.lerp_(local[i], mix)

    def finish(self) -> None:
        """After the last step: apply what is in flight, then synchronise at once every fragment not
        equal to its global copy (see the module docstring), unmixed."""
        for p in sorted(self.pending):
            self.apply(p, self.mix)
        for p in final(self.steps, self.period, self.fragments, self.delay, self.mix):
            self.begin(p)
            self.apply(p, 0.0)

    def digest(self, model) -> str:
        """The global copies' hash (alike on every rank mid-run); after the last step, the parameters'."""
        if self.done == self.steps:
            return trainable_digest(model)
        return tensors_digest((f"fragment {p}.{i}", g) for p, group in enumerate(self.globals)
                              for i, g in enumerate(group))

    def state_bytes(self) -> dict[str, int]:
        momenta = [s["momentum_buffer"] for o in self.opts for s in o.state.values() if s.get("momentum_buffer") is not None]
        return {"global copy": tensor_bytes(self.globals), "outer momentum": tensor_bytes(momenta),
                "in-flight buffer (its largest)": self.peak_in_flight}

    def state_dict(self) -> dict:
        """This rank's own: its parameters (the checkpoint's model tensors are one rank's, or under
        DCP any rank's: a checkpoint taken mid-run is one model only with these), and any fragment's
        all-reduce in flight, finished here and kept as its mean pseudo-gradient (on the CPU)."""
        for p, (work, flat) in self.pending.items():
            if work is not None:
                work.wait()
            self.pending[p] = (None, flat)
        return {"params": [x.detach().cpu().clone() for g in self.groups for x in g],
                "in_flight": {p: flat.detach().cpu().clone() for p, (_, flat) in self.pending.items()}}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for x, saved in zip((x for g in self.groups for x in g), state["params"]):
                x.copy_(saved)
        self.pending = {p: (None, flat.to(self.device).clone()) for p, flat in state["in_flight"].items()}

    def shared_state_dict(self) -> dict:
        """Alike on every rank: the global copies and the outer optimizers' state (Nesterov's momenta)."""
        return {"globals": [[g.clone() for g in group] for group in self.globals],
                "outer": [o.state_dict() for o in self.opts]}

    def load_shared_state_dict(self, state: dict) -> None:
        if not state:
            return
        with torch.no_grad():
            for group, saved in zip(self.globals, state["globals"]):
                for g, s in zip(group, saved):
                    g.copy_(s)
        for o, s in zip(self.opts, state["outer"]):
            o.load_state_dict(s)


def overrides(every: int, fragments: int, delay: int) -> tuple[str, ...]:
    """The `--set` lines that turn Streaming DiLoCo on, for experiments that build runs."""
    return ("dist.strategy=streaming_diloco", f"local_sgd.every={every}", f"streaming.fragments={fragments}",
            f"streaming.delay={delay}")
