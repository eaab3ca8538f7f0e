"""PyTorch's DistributedDataParallel with distid's defaults: the reference the hand-written data
parallelism is checked against, and what `dist.strategy = "ddp"` wraps (strategies/ddp.py).

Buffers are never re-broadcast each forward (`forward_sync_buffers=False`; `broadcast_buffers`
before torch 2.13), and buffers a model regenerates from a seed (θ₀, P) are excluded from DDP's
start-up broadcast too, so nothing of size D crosses the network for them.
"""

from __future__ import annotations

import inspect

import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def wrap_ddp(module: nn.Module, device_ids=None, ignore: list[str] | tuple = (), **kwargs) -> DistributedDataParallel:
    """DDP over the default group; `ignore` names parameters/buffers DDP must not touch."""
    if not dist.is_initialized():
        raise RuntimeError("DDP needs a process group: call distid.runtime.init() first")
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        kwargs.setdefault("forward_sync_buffers", False)
    else:
        kwargs.setdefault("broadcast_buffers", False)
    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)
