"""Bytes each rank sends in each hand-written collective: the textbook figure and the exact
count for any length (they agree when N divides the element count S).

| op             | textbook sent, per rank   | exact sent, rank r (|c_i| = chunk i)    | exact received          |
| ring all-reduce| 2(N−1)/N·S                | 2S − |c_r| − |c_{r+1}|                  | 2S − |c_{r−1}| − |c_r|  |
| reduce-scatter | (N−1)/N·S                 | S − |c_r|                               | S − |c_{r−1}|           |
| all-gather     | (N−1)/N·S                 | S − |c_{r+1}|                           | S − |c_r|               |
| tree broadcast | root ⌈log₂N⌉·S, others ≤  | S × (children of r in the binomial tree)| S (root: 0)             |
| naive          | root (N−1)·S, others S    | same                                    | same                    |
"""

from __future__ import annotations

import math

from distid.primitives.ring import chunk_bounds

OPS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "naive_all_reduce")


def wire_factor(op: str, n: int) -> float:
    """Bytes a bandwidth-optimal algorithm sends per rank, per byte of the full array S: ring
    all-reduce 2(N−1)/N; reduce-scatter, all-gather and all-to-all (N−1)/N; a pipelined broadcast
    (and any other op) 1; nothing on one rank. The one home of these factors (nccl-tests' busbw)."""
    if n <= 1:
        return 0.0
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("reduce_scatter", "all_gather", "all_to_all"):
        return (n - 1) / n
    return 1.0


def textbook_sent(op: str, nbytes: int, n: int, rank: int = 0) -> float:
    """Textbook bytes sent by `rank` (rank 0 = the root for broadcast and naive)."""
    if n == 1:
        return 0.0
    if op in ("all_reduce", "reduce_scatter", "all_gather"):
        return wire_factor(op, n) * nbytes
    if op == "broadcast":
        return tree_children(rank, n) * nbytes
    if op == "naive_all_reduce":
        return (n - 1) * nbytes if rank == 0 else nbytes
    raise ValueError(f"unknown op {op!r}; known: {', '.join(OPS)}")


def exact_sent(op: str, numel: int, itemsize: int, n: int, rank: int) -> int:
    """Exact bytes sent by `rank` for a tensor of `numel` elements (chunks as tensor_split cuts)."""
    size = [b - a for a, b in chunk_bounds(numel, n)]
    if n == 1:
        return 0
    if op == "all_reduce":
        elems = 2 * numel - size[rank] - size[(rank + 1) % n]
    elif op == "reduce_scatter":
        elems = numel - size[rank]
    elif op == "all_gather":
        elems = numel - size[(rank + 1) % n]
    else:
        return int(textbook_sent(op, numel * itemsize, n, rank))
    return elems * itemsize


def exact_received(op: str, numel: int, itemsize: int, n: int, rank: int) -> int:
    """Exact bytes received by `rank` (rank 0 = the root for broadcast and naive)."""
    size = [b - a for a, b in chunk_bounds(numel, n)]
    if n == 1:
        return 0
    if op == "all_reduce":
        elems = 2 * numel - size[(rank - 1) % n] - size[rank]
    elif op == "reduce_scatter":
        elems = numel - size[(rank - 1) % n]
    elif op == "all_gather":
        elems = numel - size[rank]
    elif op == "broadcast":
        elems = 0 if rank == 0 else numel
    elif op == "naive_all_reduce":
        elems = (n - 1) * numel if rank == 0 else numel
    else:
        raise ValueError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    return elems * itemsize


def tree_children(v: int, n: int) -> int:
    """How many ranks relative rank v sends to in a binomial-tree broadcast over n ranks."""
    rounds = math.ceil(math.log2(n)) if n > 1 else 0
    return sum(1 for k in range(rounds) if v < 2**k and v + 2**k < n)
