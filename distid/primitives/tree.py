"""Binomial-tree broadcast from send/recv: ⌈log₂N⌉ rounds; in round k every rank that already
holds the data (relative rank v < 2^k) sends it to v + 2^k. The root sends ⌈log₂N⌉·S bytes,
every other rank receives S once; N−1 messages in all."""

from __future__ import annotations

import torch
import torch.distributed as dist

from distid.primitives.meter import ByteMeter, exchange


def tree_broadcast(
    tensor: torch.Tensor,
    src: int = 0,
    group: dist.ProcessGroup | None = None,
    meter: ByteMeter | None = None,
) -> torch.Tensor:
    """In place, like dist.broadcast: every rank's tensor ← src's tensor (src is a group rank)."""
    rank, n = dist.get_rank(group), dist.get_world_size(group)
    if not 0 <= src < n:
        raise ValueError(f"src={src} is not a rank of this group (0..{n - 1})")
    v = (rank - src) % n  # relative rank: the root is 0
    buf = tensor if tensor.is_contiguous() else tensor.contiguous()
    mask = 1
    while mask < n:
        if v < mask and v + mask < n:
            exchange(buf, (v + mask + src) % n, None, None, meter, group)
        elif mask <= v < 2 * mask:
            exchange(None, None, buf, (v - mask + src) % n, meter, group)
        mask <<= 1
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor
