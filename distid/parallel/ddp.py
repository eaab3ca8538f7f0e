"""PyTorch's DistributedDataParallel with distid's defaults: the reference the hand-written data
parallelism is checked against, and `strategy = "ddp"` in `distid.train`.

Buffers are never re-broadcast each forward (`forward_sync_buffers=False`; `broadcast_buffers`
before torch 2.13), and buffers a model regenerates from a seed (θ₀, P) are excluded from DDP's
start-up broadcast too, so nothing of size D crosses the network for them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
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


@dataclass
class BucketCounter:
    """Gradient bytes DDP handed to its comm hook (GradBucket.buffer()), over every step."""

    calls: int = 0
    payload: int = 0
    state = None  # the comm hook's state (PowerSGD's), which a checkpoint must carry
    keep_local = False  # DISTID_FAULT mode=unsynced: this step, keep the local gradient

    def hook(self, inner=default_hooks.allreduce_hook):
        """A comm hook that books each bucket, then runs `inner` (default: plain all-reduce)."""

        def counting_hook(state, bucket):
            buf = bucket.buffer()
            self.calls += 1
            self.payload += buf.numel() * buf.element_size()
            if not self.keep_local:
                return inner(state, bucket)
            mine = buf.clone()  # a fault drill: all-reduce as usual, then keep this rank's own gradient
            self.keep_local = not bucket.is_last()
            return inner(state, bucket).then(lambda _: mine)

        return counting_hook
