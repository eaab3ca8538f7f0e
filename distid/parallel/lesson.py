"""Lesson 2 — data parallel from first principles, checked against DDP and one process.

Three runs from the same initial weights on the same global batches: (a) gradients averaged by
the hand-written ring all-reduce, (b) torch's DistributedDataParallel, (c) one process that sees
the whole global batch. With SGD they must end at the same parameters (up to float rounding):
mean over ranks of ∇(mean loss on B/N samples) = ∇(mean loss on B samples).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distid.data import ShardedLoader, Split
from distid.models import build_model
from distid.parallel.ddp import wrap_ddp
from distid.parallel.hand_dp import HandDataParallel
from distid.runtime import reduce_scalar


@dataclass
class RunResult:
    params: torch.Tensor  # [D] all parameters, flattened
    loss: float  # mean training loss over the last 10 steps (global batch)
    step_s: float  # median seconds per step
    bytes_per_step: float  # gradient-sync bytes sent by this rank per step (hand-written run only)


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters as one flat CPU tensor [D]."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def sgd_steps(model, loader: ShardedLoader, steps: int, lr: float, sync=None, device="cpu") -> tuple[float, float]:
    """`steps` SGD steps (momentum 0.9) over the loader's batches; `sync()` runs after backward.

    Returns (mean loss of the last 10 steps, median step time in seconds).
    """
    params = model.module.parameters() if hasattr(model, "module") else model.parameters()
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    losses, times, step = [], [], 0
    while step < steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if sync is not None:
                sync()
            opt.step()
            times.append(time.perf_counter() - t0)
            losses.append(loss.item())
            step += 1
            if step == steps:
                break  # the loader moves to its next epoch when a pass ends
    return sum(losses[-10:]) / len(losses[-10:]), sorted(times)[len(times) // 2]


def run(train: Split, mode: str, steps: int, global_batch: int, lr: float, seed: int = 0,
        device: torch.device | str = "cpu") -> tuple[RunResult, nn.Module]:
    """mode: 'hand' (ring all-reduce), 'ddp', or 'single' (this process alone, whole global batch)."""
    single = mode == "single"
    rank, n = (0, 1) if single else (dist.get_rank(), dist.get_world_size())
    loader = ShardedLoader(train, global_batch, rank, n, seed=seed)
    model = build_model("mlp", seed=seed).to(device)
    if mode == "hand":
        dp = HandDataParallel(model)
        loss, step_s = sgd_steps(dp, loader, steps, lr, sync=dp.sync_gradients, device=device)
        loss = reduce_scalar(loss) / dist.get_world_size()  # the global-batch loss from the shards'
        return RunResult(flat_params(model), loss, step_s, dp.meter.sent / steps), model
    if mode == "ddp":
        ddp = wrap_ddp(model, device_ids=[model_device(model).index] if model_device(model).type == "cuda" else None)
        loss, step_s = sgd_steps(ddp, loader, steps, lr, device=device)
        loss = reduce_scalar(loss) / dist.get_world_size()
        return RunResult(flat_params(model), loss, step_s, float("nan")), model
    if single:
        loss, step_s = sgd_steps(model, loader, steps, lr, device=device)
        return RunResult(flat_params(model), loss, step_s, 0.0), model
    raise ValueError(f"unknown mode {mode!r}: use 'hand', 'ddp' or 'single'")
