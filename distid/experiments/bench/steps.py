"""Step time of full, subspace (each projection) and LoRA training, as a ratio to full training, on
the same model, batch and machine, interleaved round by round; one optimizer step = forward,
backward, the strategy's gradient synchronisation (DDP under torchrun), optimizer.

Run inside a process group: `python -m distid.experiments.bench steps` (1 rank) or under torchrun (N ranks).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from distid import runtime
from distid.experiments.bench.timing import interleaved, median, spread, time_calls
from distid.config import load_config
from distid.models import count_params
from distid.train import train_step
from distid.run.build import build, make_optimizer
from distid.strategies import choose

VARIANTS = [("full", None), ("subspace", "fastfood"), ("subspace", "sparse"), ("subspace", "dense"), ("lora", None)]
MODELS = ("mlp", "mlp_wide")


def make_stepper(model_name: str, method: str, projection: str | None, d: int, local_batch: int, n: int):
    """(one optimizer step of this variant on a fixed random MNIST-shaped batch, trainable count)."""
    over = [f"model.name={model_name}", f"train.method={method}", f"subspace.d={d}"]
    over += [f"subspace.projection={projection}"] if projection else []
    cfg = load_config(None, over)
    device = runtime.device()
    model = build(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", n))).to(device)
    net = choose(cfg, n, device).wrap(model)
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(local_batch, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (local_batch,), generator=g).to(device)
    return (lambda: train_step(net, opt, x, y)), count_params(model, trainable_only=True)


def agreed_calls(step, budget_s: float, device) -> int:
    """Calls per round from the slowest rank's warm step time, so every rank runs the same count."""
    for _ in range(2):  # warm-up: allocations, DDP's bucket rebuild
        step()
    t = runtime.reduce_scalar(median(time_calls(step, 2, device)), dist.ReduceOp.MAX)
    return max(2, min(200, int(budget_s / max(t, 1e-6))))


def bench_model(model_name: str, d: int, global_batch: int, rounds: int, budget_s: float) -> dict:
    """Median step time of every variant of one model on this group; ratio to full training."""
    n, device = dist.get_world_size(), runtime.device()
    local = global_batch // n
    steppers, trainable, skipped = {}, {}, {}
    for method, proj in VARIANTS:
        name = f"{method}/{proj}" if proj else method
        try:
            steppers[name], trainable[name] = make_stepper(model_name, method, proj, d, local, n)
        except MemoryError as e:  # a dense P this machine refuses: left out, and why
            skipped[name] = str(e).split(". ")[0]
    calls = {k: agreed_calls(s, budget_s, device) for k, s in steppers.items()}
    times = interleaved(steppers, rounds, calls, device, before_round=dist.barrier)
    full = median(times["full"])
    rows = [dict(variant=k, step_ms=1e3 * median(v), ratio_to_full=median(v) / full, samples=len(v),
                 spread=spread(v), trainable=trainable[k]) for k, v in times.items()]
    return dict(model=model_name, D=trainable["full"], d=d, global_batch=global_batch, local_batch=local,
                world_size=n, rows=rows, skipped=skipped)


def bench_steps(models: list[str], d: int, global_batch: int, rounds: int, budget_s: float) -> list[dict]:
    out = []
    for m in models:
        runtime.print0(f"steps: {m} on {dist.get_world_size()} rank(s)")
        out.append(bench_model(m, d, global_batch, rounds, budget_s))
    return out
