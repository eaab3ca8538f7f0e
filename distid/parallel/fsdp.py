"""FSDP2 (`torch.distributed.fsdp.fully_shard`) per layer: every rank keeps 1/N of each layer's
parameters at rest; a layer is all-gathered before its forward (and again before its backward,
after resharding), and the gradients of its *trainable* parameters are reduce-scattered — frozen
ones (a LoRA base) are gathered but never reduced.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The outermost modules that own parameters directly (a Linear, a Conv2d, a LoRA-wrapped
    layer with its frozen base): one FSDP unit each, gathered and freed as a whole."""
    units, taken = [], set()
    for name, module in model.named_modules():
        if name and any(name.startswith(t + ".") for t in taken):
            continue
        if name and any(True for _ in module.parameters(recurse=False)):
            units.append(module)
            taken.add(name)
    return units


def wrap_fsdp(model: nn.Module, device_type: str = "cpu", reshard_after_forward: bool = True) -> nn.Module:
    """fully_shard each unit, then the root; returns the model (now an FSDPModule) in place."""
    if not dist.is_initialized():
        raise RuntimeError("FSDP needs a process group: call distid.runtime.init() first")
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)


def full_state(model: nn.Module, trainable_only: bool = True) -> dict:
    """{name: full tensor} of the (trainable) parameters, gathering FSDP shards from every rank —
    a collective under FSDP: call it on every rank."""
    out = {}
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        t = p.detach()
        out[name] = (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu()
    return out
