"""Test accuracy, sharded over ranks: each rank scores its slice, the counts are summed."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from distid.data import ShardedLoader, Split


@torch.no_grad()
def accuracy(model: nn.Module, test: Split, alone: bool = False, batch: int = 1000,
             device: torch.device | str = "cpu") -> float:
    """Fraction of `test` classified correctly; `alone=True` scores everything on this rank."""
    distributed = dist.is_initialized() and not alone
    rank, n = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    loader = ShardedLoader(test, batch * n, rank, n, shuffle=False, drop_last=False)
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in loader:  # an empty batch is still run: FSDP's all-gathers need every rank
        x, y = x.to(device), y.to(device)
        counts[0] += (model(x).argmax(1) == y).sum()
        counts[1] += len(y)
    model.train(was_training)
    if distributed:
        dist.all_reduce(counts)
    return (counts[0] / counts[1]).item()
