"""PyTorch's DistributedDataParallel with distid's defaults: the reference the hand-written
data parallelism is checked against, and the strategy `train.py` uses for `strategy = "ddp"`."""

from __future__ import annotations

import inspect

import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def wrap_ddp(module: nn.Module, device_ids=None, **kwargs) -> DistributedDataParallel:
    """DDP over the default group. Buffers are not re-broadcast every forward
    (`broadcast_buffers=False`): distid's buffers are identical on every rank by construction."""
    if not dist.is_initialized():
        raise RuntimeError("DDP needs a process group: call distid.runtime.init() first")
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        kwargs.setdefault("forward_sync_buffers", False)  # torch ≥ 2.13 spelling
    else:
        kwargs.setdefault("broadcast_buffers", False)
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)
