"""Point-to-point transport with a byte meter: the only place the hand-written collectives
touch the network. Every byte sent or received by `exchange` is counted on this rank."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class ByteMeter:
    """Bytes this rank sent and received, and how many messages, since the last reset()."""

    sent: int = 0
    received: int = 0
    messages: int = 0

    def reset(self) -> None:
        self.sent = self.received = self.messages = 0


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def exchange(
    send: torch.Tensor | None,
    dst: int | None,
    recv: torch.Tensor | None,
    src: int | None,
    meter: ByteMeter | None = None,
    group: dist.ProcessGroup | None = None,
) -> None:
    """Send `send` to group rank `dst` while receiving into `recv` from group rank `src`.

    Both are posted before either is waited on, so a ring of ranks all sending right and
    receiving left cannot deadlock. Empty tensors are skipped (both ends know the sizes).
    """
    reqs = []
    if send is not None and send.numel() > 0:
        reqs.append(dist.isend(send.contiguous(), _global(dst, group), group=group))
        if meter is not None:
            meter.sent += nbytes(send)
            meter.messages += 1
    if recv is not None and recv.numel() > 0:
        reqs.append(dist.irecv(recv, _global(src, group), group=group))
        if meter is not None:
            meter.received += nbytes(recv)
    for r in reqs:
        r.wait()


def _global(rank: int, group: dist.ProcessGroup | None) -> int:
    """Send/recv take global ranks; the collectives think in group ranks."""
    return rank if group is None else dist.get_global_rank(group, rank)
