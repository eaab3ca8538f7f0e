"""Point-to-point transport with a byte meter: the only place the hand-written collectives
touch the network. Every byte sent or received through `post_send`, `post_recv` or `exchange`
is counted on this rank."""

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


def post_send(t: torch.Tensor, dst: int, meter: ByteMeter | None = None,
              group: dist.ProcessGroup | None = None):
    """Start sending `t` (contiguous, not modified until the returned work is waited on) to group
    rank `dst`; None for an empty tensor (both ends know the sizes)."""
    if t.numel() == 0:
        return None
    if meter is not None:
        meter.sent += nbytes(t)
        meter.messages += 1
    return dist.isend(t, _global(dst, group), group=group)


def post_recv(t: torch.Tensor, src: int, meter: ByteMeter | None = None,
              group: dist.ProcessGroup | None = None):
    """Start receiving into `t` from group rank `src`; None for an empty tensor. Receives posted
    from one source are matched in the order they were posted."""
    if t.numel() == 0:
        return None
    if meter is not None:
        meter.received += nbytes(t)
    return dist.irecv(t, _global(src, group), group=group)


def wait_all(works) -> None:
    for w in works:
        if w is not None:
            w.wait()


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
    works = [post_send(send.contiguous(), dst, meter, group) if send is not None else None,
             post_recv(recv, src, meter, group) if recv is not None else None]
    wait_all(works)


def _global(rank: int, group: dist.ProcessGroup | None) -> int:
    """Send/recv take global ranks; the collectives think in group ranks."""
    return rank if group is None else dist.get_global_rank(group, rank)
