"""Projection kernels: time of θ₀ + P·d ([d] → [D]) and of Pᵀ·g ([D] → [d]) for dense, sparse and
Fastfood over a grid of (D, d), each beside a copy of D floats timed in the same interleaved rounds
(the floor any P·d that writes θ must pay), and the machine's copy bandwidth.

A dense P·d reads 4·D·d bytes once, so its floor is 4·D·d / (copy bandwidth), where the copy
bandwidth counts bytes read plus bytes written (the STREAM convention); the ratio time / floor
says how close the kernel runs to the memory system's limit.
"""

from __future__ import annotations

import math

import torch

from distid.experiments.bench.timing import calls_for, interleaved, median
from distid.subspace import make_projection

GRID_FULL = dict(D=[10**5, 10**6, 10**7, 10**8], d=[10, 100, 1000, 10_000])
GRID_QUICK = dict(D=[10**4, 10**5], d=[10, 100])
MLP_CASE = (199_210, 750)  # the 784-200-200-10 MLP at the d the configs use


def estimate_bytes(kind: str, D: int, d: int) -> int:
    """Peak bytes a case needs while built and applied (generous: construction temporaries too)."""
    if kind == "dense":
        return 4 * D * d + 16 * D
    if kind == "fastfood":
        L = 1 << max(0, (d - 1).bit_length())
        return 24 * (-(-D // L)) * L  # q (1 B/entry), θ₀, g, the output, the copy's source and destination
    nnz = d * math.sqrt(D)
    return int(80 * nnz + 24 * D)  # sparse: the COO build's temporaries, the sorted list, θ₀, g, the output


def copy_bandwidth(nbytes: int, device: torch.device, budget_s: float) -> dict:
    """GB/s of dst.copy_(src) (bytes read + written) and of src.sum() (bytes read), medians."""
    n = nbytes // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    fns = {"copy": lambda: dst.copy_(src), "read": lambda: src.sum()}
    calls = {k: calls_for(f, budget_s / 3, device) for k, f in fns.items()}
    t = {k: median(v) for k, v in interleaved(fns, 3, calls, device).items()}
    return dict(bytes=4 * n, copy_GBps=2 * 4 * n / t["copy"] / 1e9, read_GBps=4 * n / t["read"] / 1e9,
                copy_ms=1e3 * t["copy"], read_ms=1e3 * t["read"])


def time_projection(kind: str, D: int, d: int, device: torch.device, budget_s: float) -> dict:
    """Median ms of θ₀ + P·d (as training forms θ: fused where the projection can), of Pᵀ·g and of a
    copy of D floats, interleaved in one run, with the projection's bytes per parameter."""
    p = make_projection(kind, D, d, seed=0, **({"max_bytes": 1 << 62} if kind == "dense" else {})).to(device)
    theta0, v, g = (torch.randn(D, device=device), torch.randn(d, device=device), torch.randn(D, device=device))
    dst = torch.empty_like(theta0)
    fns = {"matvec": lambda: p.matvec(v, add=theta0), "rmatvec": lambda: p.rmatvec(g),
           "copy": lambda: dst.copy_(theta0)}
    with torch.no_grad():
        calls = {k: calls_for(f, budget_s / 9, device) for k, f in fns.items()}
        t = {k: median(v) for k, v in interleaved(fns, 3, calls, device).items()}
    row = dict(kind=kind, D=D, d=d, matvec_ms=1e3 * t["matvec"], rmatvec_ms=1e3 * t["rmatvec"],
               copy_ms=1e3 * t["copy"], matvec_over_copy=t["matvec"] / t["copy"],
               rmatvec_over_copy=t["rmatvec"] / t["copy"], proj_bytes=p.nbytes(), bytes_per_param=p.nbytes() / D,
               calls=3 * sum(calls.values()))
    if kind == "dense":
        row.update(matvec_GBps=p.nbytes() / t["matvec"] / 1e9, rmatvec_GBps=p.nbytes() / t["rmatvec"] / 1e9)
    return row


def bench_kernels(device: torch.device, quick: bool, max_gb: float, budget_s: float) -> dict:
    """Every (kind, D, d) of the grid that fits in max_gb, the MLP's case, the copy bandwidth, crossovers."""
    grid = GRID_QUICK if quick else GRID_FULL
    cases = [(k, D, d) for D in grid["D"] for d in grid["d"] if d <= D for k in ("dense", "sparse", "fastfood")]
    cases += [] if quick else [(k, *MLP_CASE) for k in ("dense", "sparse", "fastfood")]
    rows, skipped = [], []
    for kind, D, d in cases:
        need = estimate_bytes(kind, D, d)
        if need > max_gb * 1e9:
            skipped.append(dict(kind=kind, D=D, d=d, need_GB=need / 1e9))
            continue
        rows.append(time_projection(kind, D, d, device, budget_s))
    copy = copy_bandwidth(int(min(max_gb * 1e9 / 4, 2**30)), device, budget_s)
    for r in rows:
        if r["kind"] == "dense":
            floor_ms = 1e3 * r["proj_bytes"] / (copy["copy_GBps"] * 1e9)
            r.update(floor_ms=floor_ms, matvec_over_floor=r["matvec_ms"] / floor_ms,
                     rmatvec_over_floor=r["rmatvec_ms"] / floor_ms)
    return dict(rows=rows, skipped=skipped, copy=copy, crossover=crossovers(rows), max_gb=max_gb)


def crossovers(rows: list[dict]) -> list[dict]:
    """Per D: the measured d at which Fastfood (P·d + Pᵀ·g) first beats dense, and the bracket."""
    out = []
    for D in sorted({r["D"] for r in rows}):
        both = {}
        for r in rows:
            if r["D"] == D and r["kind"] in ("dense", "fastfood"):
                both.setdefault(r["d"], {})[r["kind"]] = r["matvec_ms"] + r["rmatvec_ms"]
        ds = sorted(d for d, v in both.items() if len(v) == 2)
        if not ds:
            continue
        wins = [d for d in ds if both[d]["fastfood"] < both[d]["dense"]]
        first = wins[0] if wins else None
        below = max((d for d in ds if first is not None and d < first), default=None)
        out.append(dict(D=D, measured_d=ds, fastfood_wins_from_d=first, dense_wins_at_d=below,
                        ratio_dense_over_fastfood={d: both[d]["dense"] / both[d]["fastfood"] for d in ds}))
    return out
