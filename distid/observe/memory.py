"""Bytes a rank holds for a model: parameters (its shards under FSDP), gradients, optimizer state
and buffers — counted from the local tensors, so FSDP's 1/N saving shows exactly, unlike RSS."""

from __future__ import annotations

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def tensor_bytes(t) -> int:
    """Bytes of a tensor's storage on this rank (local shard; CSR: indices and values)."""
    if not isinstance(t, torch.Tensor):
        return 0
    t = _local(t)
    if t.layout == torch.sparse_csr:
        return sum(tensor_bytes(x) for x in (t.crow_indices(), t.col_indices(), t.values()))
    return t.numel() * t.element_size()


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """{params, grads, optimizer, buffers, total} held by this rank (storage shared by views counted once);
    a strategy's own tensors (Strategy.state_bytes) are added by the summary."""
    seen: set[int] = set()

    def once(t) -> int:
        if not isinstance(t, torch.Tensor):
            return 0
        key = _local(t).untyped_storage().data_ptr() if _local(t).layout == torch.strided else id(t)
        if key in seen:
            return 0
        seen.add(key)
        return tensor_bytes(t)

    out = dict(params=sum(once(p) for p in model.parameters()),
               grads=sum(once(p.grad) for p in model.parameters() if p.grad is not None),
               optimizer=sum(once(v) for s in (opt.state.values() if opt else ()) for v in s.values()),
               buffers=sum(once(b) for b in model.buffers()))
    out["total"] = sum(out.values())
    return out
