"""The element-wise reductions a collective can apply: acc ← op(acc, x), in place."""

from __future__ import annotations

import torch
import torch.distributed as dist


def combine(acc: torch.Tensor, x: torch.Tensor, op: dist.ReduceOp) -> None:
    """acc ← op(acc, x) for SUM, PRODUCT, MAX, MIN (AVG: sum, then the caller divides)."""
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
