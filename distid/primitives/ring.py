"""Ring collectives from send/recv. A flat array of S elements is cut into N chunks
c_0..c_{N-1} (sizes differ by at most one; any S ≥ 0 works, also S < N).

reduce-scatter: N−1 steps; at step s rank r sends chunk (r−s−1) mod N to r+1 and adds the chunk
(r−s−2) mod N it receives from r−1. Afterwards rank r holds the full reduction of c_r.
all-gather: N−1 steps; rank r sends chunk (r−s) mod N right, stores chunk (r−s−1) mod N from the left.
Bytes sent per rank: reduce-scatter S − |c_r|, all-gather S − |c_{r+1}|, all-reduce the sum:
2(N−1)/N·S exactly when N divides S. All of a phase's receives are posted before its first send
(matched in order per source), so no step waits for a neighbour to become ready.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from distid.primitives.meter import ByteMeter, post_recv, post_send, wait_all
from distid.primitives.reduce import check_op, combine


def chunk_bounds(numel: int, world_size: int) -> list[tuple[int, int]]:
    """[(start, stop)] of the N chunks, as torch.tensor_split cuts them (first ones one longer)."""
    base, extra = divmod(numel, world_size)
    bounds, start = [], 0
    for i in range(world_size):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _ring(group: dist.ProcessGroup | None) -> tuple[int, int, int, int]:
    """(rank, world_size, right neighbour, left neighbour) in group ranks."""
    rank, n = dist.get_rank(group), dist.get_world_size(group)
    return rank, n, (rank + 1) % n, (rank - 1) % n


def _reduce_scatter_flat(flat: torch.Tensor, op, meter, group) -> None:
    """In place on a flat contiguous buffer: afterwards this rank's chunk is fully reduced.

    Every step's receive is posted up front into its own slot of a reused scratch buffer, so the
    left neighbour never waits for this rank to be ready; each step's send starts as soon as the
    chunk it carries is reduced."""
    rank, n, right, left = _ring(group)
    if n == 1:
        return
    chunks = [flat[a:b] for a, b in chunk_bounds(flat.numel(), n)]
    into = [chunks[(rank - s - 2) % n] for s in range(n - 1)]
    slots = _scratch(sum(c.numel() for c in into), flat).split([c.numel() for c in into])
    recvs = [post_recv(slot, left, meter, group) for slot in slots]
    sends = [post_send(chunks[(rank - 1) % n], right, meter, group)]
    for s in range(n - 1):
        if recvs[s] is not None:
            recvs[s].wait()
        combine(into[s], slots[s], op)
        if s < n - 2:  # step s + 1 sends chunk (rank − s − 2): the one just reduced
            sends.append(post_send(into[s], right, meter, group))
    wait_all(sends)  # before anyone may overwrite a sent chunk


def _all_gather_flat(flat: torch.Tensor, meter, group) -> None:
    """In place on a flat buffer whose chunk `rank` is filled: afterwards every chunk is.
    All receives are posted first; each received chunk is forwarded right at once."""
    rank, n, right, left = _ring(group)
    if n == 1:
        return
    chunks = [flat[a:b] for a, b in chunk_bounds(flat.numel(), n)]
    recvs = [post_recv(chunks[(rank - s - 1) % n], left, meter, group) for s in range(n - 1)]
    sends = [post_send(chunks[rank], right, meter, group)]
    for s in range(n - 1):
        if recvs[s] is not None:
            recvs[s].wait()
        if s < n - 2:
            sends.append(post_send(chunks[(rank - s - 1) % n], right, meter, group))
    wait_all(sends)


_SCRATCH: dict[tuple, torch.Tensor] = {}


def _scratch(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A reused receive buffer of at least numel elements (one per dtype and device): a fresh one
    per call would page-fault its way through (N−1)/N of the message every time."""
    key = (like.dtype, like.device)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel]


def ring_all_reduce(
    tensor: torch.Tensor,
    op: dist.ReduceOp = dist.ReduceOp.SUM,
    group: dist.ProcessGroup | None = None,
    meter: ByteMeter | None = None,
) -> torch.Tensor:
    """In place, like dist.all_reduce: tensor ← op over ranks of tensor (any shape, any length)."""
    check_op(op)
    flat = tensor.view(-1) if tensor.is_contiguous() else tensor.reshape(-1).clone()
    _reduce_scatter_flat(flat, op, meter, group)
    _all_gather_flat(flat, meter, group)
    if not tensor.is_contiguous():
        tensor.copy_(flat.view(tensor.shape))
    return tensor


def ring_reduce_scatter(
    output: torch.Tensor,
    input: torch.Tensor,
    op: dist.ReduceOp = dist.ReduceOp.SUM,
    group: dist.ProcessGroup | None = None,
    meter: ByteMeter | None = None,
) -> torch.Tensor:
    """Like dist.reduce_scatter_tensor: output ← chunk `rank` of op over ranks of input.

    input: [S] (any shape, flattened); output: |c_rank| elements. `input` is left unchanged.
    """
    check_op(op)
    rank, n = dist.get_rank(group), dist.get_world_size(group)
    a, b = chunk_bounds(input.numel(), n)[rank]
    if output.numel() != b - a:
        raise ValueError(f"output has {output.numel()} elements; chunk {rank} of {input.numel()} over {n} ranks has {b - a}")
    flat = input.reshape(-1).clone()
    _reduce_scatter_flat(flat, op, meter, group)
    output.copy_(flat[a:b].view(output.shape))
    return output


def ring_all_gather(
    output: torch.Tensor,
    input: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    meter: ByteMeter | None = None,
) -> torch.Tensor:
    """Like dist.all_gather_into_tensor: output ← concatenation of every rank's input.

    output: [S]; rank r's input is chunk r of S (equal sizes when N divides S).
    """
    rank, n = dist.get_rank(group), dist.get_world_size(group)
    a, b = chunk_bounds(output.numel(), n)[rank]
    if input.numel() != b - a:
        raise ValueError(f"input has {input.numel()} elements; chunk {rank} of {output.numel()} over {n} ranks has {b - a}")
    flat = output.view(-1) if output.is_contiguous() else torch.empty(output.numel(), dtype=output.dtype, device=output.device)
    flat[a:b].copy_(input.reshape(-1))
    _all_gather_flat(flat, meter, group)
    if not output.is_contiguous():
        output.copy_(flat.view(output.shape))
    return output
