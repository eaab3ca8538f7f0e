"""Wrap a model for the config's strategy (torchtitan's `parallelize_fn`): the module to call, what
counts DDP's gradient buckets, and the per-step payload the formulas expect.

    none (one rank) → the model itself; nothing is synchronised
    ddp             → DistributedDataParallel; backward all-reduces the trainable gradients
                      (4·T bytes, T trainable numbers; 2·T under the fp16/bf16 hooks)
    fsdp            → fully_shard per layer; forward all-gathers, backward reduce-scatters
    ddp with train.sync_every = H > 1 → the model itself: the ranks take local steps and
                      `local_sgd.OuterSync` all-reduces the pseudo-gradient every H steps (4·T/H per step)

Nothing here knows about subspaces or LoRA: buffers a model regenerates from a seed (θ₀, P) come in
as `ignore`, and the subspace's own FSDP scheme is wired one layer up (`distid.run.build`).
"""

from __future__ import annotations

import torch
from torch import nn

from distid.config import Config, ConfigError
from distid.parallel import compression, formulas
from distid.parallel.ddp import BucketCounter, wrap_ddp
from distid.parallel.fsdp import wrap_fsdp


def parallelize(model: nn.Module, cfg: Config, n: int, device: torch.device, ignore: list[str] = ()):
    """(module to call, DDP bucket counter or None, formula {op: payload bytes per step, 'total'})."""
    if cfg.dist.strategy == "none" and n > 1:
        raise ConfigError(f"dist.strategy = 'none' with {n} ranks would train {n} unsynchronised models: "
                          f"use 'ddp' or 'fsdp', or run one process")
    if n == 1:
        return model, None, {"total": 0}
    if cfg.train.sync_every > 1:  # config.validate refused FSDP and comm hooks with local steps
        itemsize = torch.tensor([], dtype=getattr(torch, cfg.train.outer_dtype)).element_size()
        return model, None, formulas.local_sgd_bytes(model, cfg.train.sync_every, itemsize)
    if cfg.dist.strategy == "fsdp":
        payload = formulas.fsdp_bytes(list(model.parameters()), n)
        return wrap_fsdp(model, device.type), None, payload
    d = cfg.dist
    try:
        hook = compression.comm_hook(d.comm_hook, d.powersgd_rank, d.powersgd_start_iter, d.powersgd_error_feedback,
                                     cfg.train.seed, device.type)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    net, counter = ddp(model, device, ignore, hook)
    if d.comm_hook == "powersgd":
        return net, counter, formulas.powersgd_bytes(model, d.powersgd_rank)
    return net, counter, formulas.ddp_bytes(model, itemsize=2 if d.comm_hook in ("fp16", "bf16") else 4)


def ddp(model: nn.Module, device: torch.device, ignore: list[str], hook: tuple | None = None):
    """(DDP, BucketCounter): `hook` = (state, PyTorch comm hook; default: plain all-reduce) behind the counter."""
    net = wrap_ddp(model, device_ids=[device.index] if device.type == "cuda" else None, ignore=ignore)
    counter = BucketCounter()
    state, inner = hook or compression.comm_hook("none")
    net.register_comm_hook(state, counter.hook(inner))
    counter.state = state
    if state is not None:  # PowerSGD keeps state per bucket index (error feedback, warm-start P, Q)
        # DDP re-buckets once, after its first step, in the order gradients became ready; a resumed
        # process would meet the first layout again and apply the saved state to other parameters.
        # Fixing the layout now (parameter order, kept for the whole run) makes every step of every
        # process use one layout. The cost: buckets no longer follow the backward's order.
        net.reducer._push_all_rebuilt_params()
    return net, counter
