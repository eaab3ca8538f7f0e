"""The element-wise reductions a collective can apply: acc ← op(acc, x), in place."""

from __future__ import annotations

import torch
import torch.distributed as dist


SUPPORTED = (dist.ReduceOp.SUM, dist.ReduceOp.PRODUCT, dist.ReduceOp.MAX, dist.ReduceOp.MIN)


def check_op(op: dist.ReduceOp) -> None:
    """Reject an op before any byte moves, on every world size (AVG: use SUM, then divide)."""
    if op not in SUPPORTED:
        raise ValueError(f"unsupported reduce op {op}: use SUM, PRODUCT, MAX or MIN (for AVG, SUM then divide)")


def combine(acc: torch.Tensor, x: torch.Tensor, op: dist.ReduceOp) -> None:
    """acc ← op(acc, x) for SUM, PRODUCT, MAX, MIN."""
    if op == dist.ReduceOp.SUM:
        acc.add_(x)
    elif op == dist.ReduceOp.PRODUCT:
        acc.mul_(x)
    elif op == dist.ReduceOp.MAX:
        torch.maximum(acc, x, out=acc)
    elif op == dist.ReduceOp.MIN:
        torch.minimum(acc, x, out=acc)
    else:
        raise ValueError(f"unsupported reduce op {op}: use SUM, PRODUCT, MAX or MIN")
