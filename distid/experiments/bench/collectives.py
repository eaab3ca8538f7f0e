"""All-reduce time against message size: the hand-written ring (send/recv only) and the backend's
own dist.all_reduce, on the same ranks, sizes interleaved; then the α–β fit of the ring model

    t(N, S) = 2(N−1)·α + 2(N−1)/N · S · β        (α: latency per step, β: seconds per byte)

by least squares on relative error, over every world size measured.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist

from distid import runtime
from distid.experiments.bench.timing import median, sync
from distid.primitives import ring_all_reduce

SIZES_FULL = [2**k for k in range(12, 27, 2)]  # 4 KiB … 64 MiB
SIZES_QUICK = [2**12, 2**16, 2**20]
IMPLS = ("ring", "backend")


def _op(impl: str):
    return ring_all_reduce if impl == "ring" else dist.all_reduce


def time_all_reduce(impl: str, nbytes: int, calls: int, device) -> float:
    """Seconds per all-reduce of nbytes (float32), mean of `calls` back-to-back calls, slowest rank."""
    x = torch.zeros(nbytes // 4, device=device)  # zeros: sums stay finite however often they are reduced
    op = _op(impl)
    op(x)  # warm-up: connections, buffers
    dist.barrier()
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        op(x)
    sync(device)
    return runtime.reduce_scalar((time.perf_counter() - start) / calls, dist.ReduceOp.MAX)


def calls_for_size(nbytes: int, quick: bool) -> int:
    """Enough calls that small messages are timed over many, large ones over a few."""
    return max(2 if quick else 3, min(50, (2**26 if not quick else 2**22) // max(nbytes, 1)))


def bench_collectives(quick: bool, rounds: int) -> dict:
    """Per size and implementation: median over rounds of the per-call time; on this group."""
    device, n = runtime.device(), dist.get_world_size()
    sizes = SIZES_QUICK if quick else SIZES_FULL
    samples: dict[tuple[str, int], list[float]] = {(i, s): [] for i in IMPLS for s in sizes}
    for _ in range(rounds):
        for s in sizes:
            for impl in IMPLS:
                samples[(impl, s)].append(time_all_reduce(impl, s, calls_for_size(s, quick), device))
    rows = []
    for s in sizes:
        t = {i: median(samples[(i, s)]) for i in IMPLS}
        rows.append(dict(world_size=n, bytes=s, ring_ms=1e3 * t["ring"], backend_ms=1e3 * t["backend"],
                         ring_over_backend=t["ring"] / t["backend"],
                         ring_busbw_GBps=2 * (n - 1) / n * s / t["ring"] / 1e9,
                         backend_busbw_GBps=2 * (n - 1) / n * s / t["backend"] / 1e9))
    return dict(world_size=n, backend=dist.get_backend(), rows=rows)


def fit_alpha_beta(rows: list[dict], key: str) -> dict:
    """α (s), β (s/byte) of t = 2(N−1)α + 2(N−1)/N·S·β, least squares on relative error."""
    n = np.array([r["world_size"] for r in rows], dtype=float)
    s = np.array([r["bytes"] for r in rows], dtype=float)
    t = np.array([r[key] for r in rows], dtype=float) / 1e3
    A = np.stack([2 * (n - 1), 2 * (n - 1) / n * s], 1) / t[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    alpha, beta = max(alpha, 0.0), max(beta, 1e-15)
    pred = 2 * (n - 1) * alpha + 2 * (n - 1) / n * s * beta
    return dict(alpha_us=1e6 * alpha, beta_s_per_byte=beta, bandwidth_GBps=1 / beta / 1e9,
                max_rel_error=float(np.max(np.abs(pred - t) / t)), points=len(rows))
