"""The wire figure against the interface's own byte counters: all-reduce, all-gather,
reduce-scatter and broadcast of S bytes each on this group, measured with observe/interface.py.

Per op, four figures per rank: the headline wire bytes of the ring algorithms (what NCCL sends;
broadcast: S, the busiest rank of a pipelined chain); what gloo's own algorithm sends, the mean
over ranks (its reduce-scatter is an all-reduce then a copy, 2(N−1)/N·S; any broadcast moves
(N−1)·S in all, (N−1)/N·S a rank on average); and the bytes the interface carried per rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from distid import runtime
from distid.observe.interface import InterfaceWindow
from distid.primitives.formulas import wire_factor

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast")
SIZE = 16 * 2**20
INTERFACE = "lo"


def gloo_sent(op: str, nbytes: int, n: int) -> float:
    """Mean bytes a rank sends in gloo's algorithm for an op on an array of nbytes."""
    if op == "reduce_scatter":
        return wire_factor("all_reduce", n) * nbytes  # all-reduce, then each rank keeps its part
    if op == "broadcast":
        return (n - 1) / n * nbytes
    return wire_factor(op, n) * nbytes


def _call(op: str, full: torch.Tensor, part: torch.Tensor) -> None:
    if op == "all_reduce":
        dist.all_reduce(full)
    elif op == "all_gather":
        runtime.all_gather_tensor(full, part)
    elif op == "reduce_scatter":
        runtime.reduce_scatter_tensor(part, full)
    else:
        dist.broadcast(full, src=0)


def measure(nbytes: int = SIZE, repeats: int = 3, interface: str = INTERFACE) -> list[dict]:
    """One row per op on this group (every rank calls it; all ranks on this host)."""
    n = dist.get_world_size()
    part = torch.zeros(nbytes // 4 // n, device=runtime.device())
    full = torch.zeros(n * part.numel(), device=runtime.device())
    nbytes = 4 * full.numel()
    rows = []
    for op in OPS:
        _call(op, full, part)  # warm-up: connections and buffers
        window = InterfaceWindow(interface)
        with window.segment():
            for _ in range(repeats):
                _call(op, full, part)
        got = window.result(repeats)
        wire = nbytes if op == "broadcast" else wire_factor(op, n) * nbytes
        rows.append(dict(op=op, world_size=n, bytes=nbytes, wire=wire, gloo=gloo_sent(op, nbytes, n),
                         measured=got, interface=interface))
    return rows
