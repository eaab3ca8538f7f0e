"""FSDP2 (`torch.distributed.fsdp.fully_shard`) per layer: every rank keeps 1/N of each layer's
parameters at rest; a layer is all-gathered before its forward (and again before its backward,
after resharding), and the gradients of its *trainable* parameters are reduce-scattered — frozen
ones (a LoRA base) are gathered but never reduced.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The outermost modules that own parameters directly (a Linear, a Conv2d, a LoRA-wrapped
    layer with its frozen base): one FSDP unit each, gathered and freed as a whole. A module owning
    a tied parameter (GPT-2's embedding = its output layer) is left to the root unit: FSDP2 cannot
    shard one tensor in two units."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    units, taken = [], set()
    for name, module in model.named_modules():
        if name and any(name.startswith(t + ".") for t in taken):
            continue
        own = list(module.parameters(recurse=False))
        if name and own and all(owners[id(p)] == 1 for p in module.parameters()):
            units.append(module)
            taken.add(name)
    return units


def wrap_fsdp(model: nn.Module, device_type: str = "cpu", reshard_after_forward: bool = True) -> nn.Module:
    """fully_shard each unit, then the root; returns the model (now an FSDPModule) in place."""
    from torch.distributed.device_mesh import init_device_mesh  # imported here: FSDP2 pulls in DTensor
    from torch.distributed.fsdp import fully_shard  # (about 1 s per process, 2-core EPYC), DDP runs need not

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
