"""The all-reduce everyone writes first: every rank sends its tensor to rank 0, which reduces
and sends the result back. Rank 0 sends and receives (N−1)·S bytes — a bottleneck that grows
with N, where the ring keeps every rank at 2(N−1)/N·S < 2S."""

from __future__ import annotations

import torch
import torch.distributed as dist

from distid.primitives.meter import ByteMeter, exchange
from distid.primitives.reduce import check_op, combine


def naive_all_reduce(
    tensor: torch.Tensor,
    op: dist.ReduceOp = dist.ReduceOp.SUM,
    group: dist.ProcessGroup | None = None,
    meter: ByteMeter | None = None,
) -> torch.Tensor:
    """In place, like dist.all_reduce, by gather-to-root then send-to-all."""
    check_op(op)
    rank, n = dist.get_rank(group), dist.get_world_size(group)
    buf = tensor.contiguous()
    if rank == 0:
        incoming = torch.empty_like(buf)
        for peer in range(1, n):
            exchange(None, None, incoming, peer, meter, group)
            combine(buf, incoming, op)
        for peer in range(1, n):
            exchange(buf, peer, None, None, meter, group)
    else:
        exchange(buf, 0, None, None, meter, group)
        exchange(None, None, buf, 0, meter, group)
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor
