"""Run one hand-written collective and torch.distributed's counterpart on the same tensor, on
every rank: compare results (exact for integers, allclose for floats), bytes against the
formula, and time. Used by the lesson (`python -m distid.primitives`) and by the tests."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, asdict

import torch
import torch.distributed as dist

from distid import runtime
from distid.primitives import formulas
from distid.primitives.meter import ByteMeter
from distid.primitives.naive import naive_all_reduce
from distid.primitives.ring import chunk_bounds, ring_all_gather, ring_all_reduce, ring_reduce_scatter
from distid.primitives.tree import tree_broadcast

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclass
class CaseResult:
    op: str
    numel: int
    dtype: str
    rank: int
    world_size: int
    sent: int
    received: int
    expected_sent: int
    expected_received: int
    textbook_sent: float
    hand_s: float
    torch_s: float
    max_abs_err: float
    torch_reference: str  # the torch collective timed and compared against
    ok: bool

    def as_dict(self) -> dict:
        return asdict(self)


def make_input(numel: int, dtype: torch.dtype, seed: int, rank: int, device="cpu") -> torch.Tensor:
    """This rank's deterministic input: integers in [-100, 100) or standard normal floats."""
    g = runtime.generator(seed, "collective input", rank)
    if dtype.is_floating_point:
        return torch.randn(numel, generator=g, dtype=torch.float64).to(dtype).to(device)
    return torch.randint(-100, 100, (numel,), generator=g, dtype=dtype).to(device)


def torch_reference(op: str, numel: int, n: int) -> str:
    """Which torch collective run_torch uses: the matching one, or all_reduce for uneven chunks."""
    if op in ("all_reduce", "naive_all_reduce"):
        return "all_reduce"
    if op == "broadcast":
        return "broadcast"
    return op if numel % n == 0 else "all_reduce"


def run_hand(op: str, x: torch.Tensor, src: int = 0, meter: ByteMeter | None = None) -> torch.Tensor:
    """The hand-written collective on a copy of x; returns this rank's result."""
    rank, n = dist.get_rank(), dist.get_world_size()
    t = x.clone()
    if op == "all_reduce":
        return ring_all_reduce(t, meter=meter)
    if op == "naive_all_reduce":
        return naive_all_reduce(t, meter=meter)
    if op == "broadcast":
        return tree_broadcast(t, src=src, meter=meter)
    a, b = chunk_bounds(x.numel(), n)[rank]
    if op == "reduce_scatter":
        return ring_reduce_scatter(torch.empty(b - a, dtype=x.dtype, device=x.device), t, meter=meter)
    if op == "all_gather":
        return ring_all_gather(torch.empty_like(t), t[a:b], meter=meter)
    raise ValueError(f"unknown op {op!r}; known: {', '.join(formulas.OPS)}")


def run_torch(op: str, x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """torch.distributed's collective for the same op and layout (the reference)."""
    rank, n = dist.get_rank(), dist.get_world_size()
    t = x.clone()
    if op in ("all_reduce", "naive_all_reduce"):
        dist.all_reduce(t)
        return t
    if op == "broadcast":
        dist.broadcast(t, src=src)
        return t
    even = x.numel() % n == 0
    a, b = chunk_bounds(x.numel(), n)[rank]
    if op == "reduce_scatter":
        if even:
            out = torch.empty(b - a, dtype=x.dtype, device=x.device)
            runtime.reduce_scatter_tensor(out, t)
            return out
        dist.all_reduce(t)  # uneven chunks: torch's API needs equal ones
        return t[a:b].clone()
    if op == "all_gather":
        if even:
            out = torch.empty_like(t)
            runtime.all_gather_tensor(out, t[a:b].contiguous())
            return out
        padded = torch.zeros_like(t)
        padded[a:b] = t[a:b]
        dist.all_reduce(padded)
        return padded
    raise ValueError(f"unknown op {op!r}")


def _timed(fn, reps: int) -> float:
    """Median wall time of fn() over reps runs, each started after a barrier."""
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _close(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    if a.numel() == 0:
        return a.shape == b.shape, 0.0
    err = (a.double() - b.double()).abs().max().item()
    if not a.dtype.is_floating_point:
        return bool(torch.equal(a, b)), err
    tol = TOLERANCE.get(a.dtype, 1e-5)
    return bool(torch.allclose(a.double(), b.double(), rtol=tol, atol=tol * 10)), err


def run_case(op: str, numel: int, dtype: torch.dtype = torch.float32, seed: int = 0,
             reps: int = 1, src: int = 0) -> tuple[CaseResult, torch.Tensor]:
    """Check one op on this rank; returns (result record, hand-written output)."""
    rank, n = dist.get_rank(), dist.get_world_size()
    x = make_input(numel, dtype, seed, rank, runtime.device())
    meter = ByteMeter()
    hand = run_hand(op, x, src, meter)
    ref = run_torch(op, x, src)
    ok, err = _close(hand, ref)
    itemsize = x.element_size()
    hand_s = _timed(lambda: run_hand(op, x, src), reps) if reps else 0.0
    torch_s = _timed(lambda: run_torch(op, x, src), reps) if reps else 0.0
    v = (rank - src) % n if op == "broadcast" else rank
    expected = formulas.exact_sent(op, numel, itemsize, n, v)
    expected_recv = formulas.exact_received(op, numel, itemsize, n, v)
    res = CaseResult(op, numel, str(dtype).replace("torch.", ""), rank, n, meter.sent, meter.received,
                     expected, expected_recv, formulas.textbook_sent(op, numel * itemsize, n, v), hand_s,
                     torch_s, err, torch_reference(op, numel, n),
                     ok and meter.sent == expected and meter.received == expected_recv)
    return res, hand
