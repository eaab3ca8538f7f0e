"""Wall-clock timing for the benchmarks: warm-up, then calls interleaved round by round (drift and
a neighbour's load hit every variant alike), medians; on a GPU, synchronised before each clock read.

time_calls(fn, k) → [seconds per call]; interleaved({name: fn}, rounds, calls) → {name: [seconds]}.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device | None) -> None:
    """Wait for queued GPU work, so that a clock read means the work is done (no-op on CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], k: int, device: torch.device | None = None) -> list[float]:
    """Seconds of each of k calls of fn (synchronised on a GPU; one sync per call, no copies)."""
    out = []
    for _ in range(k):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def calls_for(fn: Callable[[], object], budget_s: float, device=None, lo: int = 2, hi: int = 200) -> int:
    """How many calls of fn fit in budget_s, from one timed call (after one warm-up call), in [lo, hi]."""
    fn()
    t = time_calls(fn, 1, device)[0]
    return max(lo, min(hi, int(budget_s / max(t, 1e-6))))


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, calls: dict[str, int],
                device=None, before_round: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """{name: seconds of every timed call}: `rounds` rounds, each running calls[name] calls of every fn."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if before_round:
                before_round()
            times[name] += time_calls(fn, calls[name], device)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float]) -> float:
    """(75th − 25th percentile) / median: how noisy a set of timings is."""
    if len(xs) < 4:
        return float("nan")
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / statistics.median(xs)


def load() -> list[float]:
    """os.getloadavg(): 1, 5 and 15-minute load averages (a busy shared machine shows here)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
