"""Communication ledger: the bytes this rank hands to every collective, by phase and by op,
counted where the collective is issued — at the dispatcher, where every c10d op passes (DDP's
buckets and set-up broadcasts, FSDP's all-gathers, user calls) — never computed from a formula.

Three figures are kept apart, never added to or divided by one another:
  wire    — the headline: bytes a rank sends for the bandwidth-optimal ring algorithms, all-reduce
            2(N−1)/N·S, reduce-scatter and all-gather (N−1)/N·S with S the full array, broadcast S
            (what NCCL sends; nccl-tests' busbw = algbw × the same factor);
  payload — bytes of the tensors handed to the op on this rank (all_gather: its 1/N shard;
            all_reduce and reduce_scatter: the whole array);
  measured — what the interface really carried, where the OS tells (`observe/interface.py`).

While booking, each collective is waited on before it returns. A dispatch mode is thread-local,
and a callback chained on a collective's future (`.then`: PowerSGD issues its P and Q all-reduces
so) would otherwise run on the backend's thread, unbooked; on a finished future it runs here,
inside the mode. Booked steps lose their communication/computation overlap: they are not timed.
Under NCCL (CUDA tensors) nothing is waited on: see `_on_cuda`.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from distid.primitives.formulas import wire_factor

# c10d op name → (collective, index of the argument holding this rank's input tensors)
C10D_OPS = {
    "allreduce_": ("all_reduce", 0), "allreduce_coalesced_": ("all_reduce", 0),
    "broadcast_": ("broadcast", 0), "reduce_": ("reduce", 0),
    "allgather_": ("all_gather", 1), "_allgather_base_": ("all_gather", 1),
    "allgather_into_tensor_coalesced_": ("all_gather", 1), "allgather_coalesced_": ("all_gather", 1),
    "reduce_scatter_": ("reduce_scatter", 1), "_reduce_scatter_base_": ("reduce_scatter", 1),
    "reduce_scatter_tensor_coalesced_": ("reduce_scatter", 1),
    "alltoall_": ("all_to_all", 1), "alltoall_base_": ("all_to_all", 1),
    "gather_": ("gather", 1), "scatter_": ("scatter", 1),
    "send": ("send", 0), "recv_": ("recv", 0), "recv_any_source_": ("recv", 0),
    "barrier": ("barrier", None), "monitored_barrier_": ("barrier", None),
}
POINT_TO_POINT = ("send", "recv")  # never waited on: a ring posts both halves before it waits


def wire_bytes(op: str, payload: float, n: int) -> float:
    """Bytes a bandwidth-optimal algorithm sends per rank for `payload` bytes handed in (all_gather:
    the payload is this rank's 1/N of the full array)."""
    if op in ("barrier", "recv"):
        return 0.0
    return wire_factor(op, n) * (payload * n if op == "all_gather" else payload)


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


@dataclass
class OpStat:
    calls: int = 0
    payload: int = 0


class _Recorder(TorchDispatchMode):
    """Books every c10d op dispatched while active into `ledger`, under `phase`."""

    def __init__(self, ledger: "CommLedger", phase: str):
        super().__init__()
        self.ledger, self.phase = ledger, phase

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.ledger.recorders[-1] is not self:  # a phase opened inside this one books its own ops
            return out
        if func.namespace == "c10d" and self.ledger.book(self.phase, func.__name__.split(".")[0], args) \
                not in POINT_TO_POINT and not _on_cuda(args):
            for work in (o for o in (out if isinstance(out, tuple) else (out,)) if hasattr(o, "wait")):
                work.wait()  # completed here, so callbacks chained on it run on this thread (see above)
        return out


def _on_cuda(args) -> bool:
    """NCCL's work objects are not waited on here: doing so inside the mode crashed (SIGSEGV,
    torch 2.11, H100); callbacks chained on NCCL futures are therefore not guaranteed to be booked."""
    return any(isinstance(t, torch.Tensor) and t.is_cuda for t in pytree.tree_leaves(args))


class CommLedger:
    """Per-phase, per-op collective payloads on this rank.

    with ledger.phase("setup"): ...                 # DDP construction, consistency checks
    with ledger.phase("step", steps=1): ...         # one optimizer step
    with ledger.phase("sync", steps=1): ...         # inside a step: a strategy's own synchronisation
    ledger.per_step("step") → {op: bytes per step, ..., "total": ...}

    Phases nest: an op is booked once, under the innermost phase open.
    """

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.stats: dict[str, dict[str, OpStat]] = defaultdict(lambda: defaultdict(OpStat))
        self.steps: dict[str, int] = defaultdict(int)
        self.recorders: list[_Recorder] = []

    def book(self, phase: str, c10d_name: str, args) -> str:
        """Book one c10d op under `phase`; returns the collective's name."""
        op, arg = C10D_OPS.get(c10d_name, (c10d_name, 0))
        stat = self.stats[phase][op]
        stat.calls += 1
        stat.payload += 0 if arg is None else _tensor_bytes(args[arg])
        return op

    @contextmanager
    def phase(self, name: str, steps: int = 0):
        recorder = _Recorder(self, name)
        self.recorders.append(recorder)
        try:
            with recorder:
                yield
        finally:
            self.recorders.pop()
        self.steps[name] += steps

    def totals(self, phase: str) -> dict[str, int]:
        """{op: payload bytes, ..., 'total': sum} over the whole phase."""
        out = {op: s.payload for op, s in sorted(self.stats[phase].items())}
        out["total"] = sum(out.values())
        return out

    def per_step(self, phase: str = "step") -> dict[str, float]:
        """{op: payload bytes per step, ..., 'total'}, averaged over the phase's booked steps."""
        n = max(self.steps[phase], 1)
        return {op: b / n for op, b in self.totals(phase).items()}

    def per_training_step(self, steps_run: int) -> dict[str, float] | None:
        """{op: payload bytes per training step, ..., 'total'}: the booked steps' average ("step"),
        plus every synchronisation a strategy ran between steps ("sync", all booked) spread over the
        `steps_run` steps of this process; None before any step is booked."""
        if not self.steps["step"] and not self.steps["sync"]:
            return None
        per = self.per_step("step") if self.steps["step"] else {"total": 0.0}
        for op, b in self.totals("sync").items():
            per[op] = per.get(op, 0.0) + b / max(steps_run, 1)
        return per

    def calls_per_step(self, phase: str = "step") -> dict[str, float]:
        n = max(self.steps[phase], 1)
        return {op: s.calls / n for op, s in sorted(self.stats[phase].items())}

    def wire_totals(self, phase: str) -> dict[str, float]:
        """{op: wire bytes, ..., 'total'} over the whole phase."""
        return to_wire(self.totals(phase), self.world_size)

    def wire_per_step(self, phase: str = "step") -> dict[str, float]:
        """{op: wire bytes per step, ..., 'total'}: what this rank sends per step for these payloads."""
        return to_wire(self.per_step(phase), self.world_size)

    def table(self, phase: str = "step", per: str = "step") -> str:
        """op | calls/step | wire B/step | payload B/step — rows only for the ops that ran; `per` names
        what the phase's count counts (a step, or a synchronisation: "sync")."""
        lines = [f"{'op':<16} {'calls/' + per:>10} {'sent B/' + per:>12} {'handed in B/' + per:>17}"]
        calls, pay, wire = self.calls_per_step(phase), self.per_step(phase), self.wire_per_step(phase)
        for op in calls:
            lines.append(f"{op:<16} {calls[op]:>10.2f} {wire[op]:>12,.0f} {pay[op]:>17,.0f}")
        return "\n".join(lines)


def to_wire(payload: dict, n: int) -> dict[str, float]:
    """{op: payload bytes, ..., 'total'} (a ledger's or a formula's) → {op: wire bytes, ..., 'total'}."""
    out = {op: wire_bytes(op, b, n) for op, b in payload.items() if op != "total"}
    out["total"] = sum(out.values())
    return out


def sent_per_step(ledger_wire: dict | None, formula_wire: dict) -> float:
    """Wire bytes a rank sends per training step: the ledger's figure once it has booked steps,
    else the formula's. Every place that quotes one number per step (the progress line, the summary,
    the closing table, compare) takes it from here."""
    return (ledger_wire or formula_wire)["total"]
