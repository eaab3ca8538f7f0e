"""Benchmarks, measured in one run on this machine, every figure beside the machine it came from.

    python -m distid.bench steps [--global-batch 128] [--d 750] [--rounds 5] [--steps 40]
    torchrun --nproc_per_node=4 -m distid.bench steps          (each step includes DDP's all-reduce)

`steps`: time per optimizer step of full training and of subspace training with each projection,
on the same model, batch and machine, interleaved round by round so drift hits all alike; reports
the median and the ratio to full training. Writes bench.json and bench.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from distid import runtime
from distid.config import load_config
from distid.config import timestamped_dir
from distid.train import build, make_optimizer, parallelize, train_step

VARIANTS = [("full", None), ("subspace", "fastfood"), ("subspace", "sparse"), ("subspace", "dense")]


def make_stepper(method: str, projection: str | None, d: int, local_batch: int, n: int):
    """A closure running one optimizer step of this variant on a fixed random MNIST-shaped batch."""
    over = [f"train.method={method}", f"train.d={d}"] + ([f"train.projection={projection}"] if projection else [])
    cfg = load_config(None, over)
    device = runtime.device()
    model = build(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", n))).to(device)
    net, _, _ = parallelize(model, cfg, n, device)
    opt = make_optimizer(cfg, model.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(local_batch, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (local_batch,), generator=g).to(device)
    return lambda: train_step(net, opt, x, y)


def time_steps(step, k: int) -> list[float]:
    out = []
    for _ in range(k):
        t0 = time.perf_counter()
        step()
        if torch.cuda.is_available() and runtime.device().type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def bench_steps(args, n: int) -> dict:
    local = args.global_batch // n
    steppers = {}
    for m, p in VARIANTS:
        try:
            steppers[f"{m}/{p}" if p else m] = make_stepper(m, p, args.d, local, n)
        except MemoryError as e:  # a dense P this machine refuses: leave it out, say why
            runtime.print0(f"skipping {m}/{p}: {e}")
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for step in steppers.values():
        time_steps(step, 3)  # warm-up: allocations, DDP bucket rebuild
    for _ in range(args.rounds):
        for name, step in steppers.items():
            if dist.is_initialized():
                dist.barrier()
            steps = max(2, args.steps // 10) if name.endswith("dense") else args.steps
            times[name] += time_steps(step, steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [dict(variant=k, step_ms=1e3 * med[k], ratio_to_full=med[k] / med["full"], samples=len(times[k]))
            for k in steppers]
    return dict(global_batch=args.global_batch, local_batch=local, d=args.d, rows=rows)


def to_markdown(result: dict, mach: dict) -> str:
    s = result["steps"]
    lines = ["# distid bench — step time\n",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']} ({mach['torch_threads']} threads), "
             f"world size {mach['world_size']}{' (' + mach['backend'] + ')' if mach['backend'] else ''}.",
             f"MLP 784-200-200-10, global batch {s['global_batch']} ({s['local_batch']} per rank), d = {s['d']}, Adam.\n",
             "| variant | step ms (median) | × full | steps timed |", "|---|---:|---:|---:|"]
    for r in s["rows"]:
        lines.append(f"| {r['variant']} | {r['step_ms']:.2f} | {r['ratio_to_full']:.2f} | {r['samples']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distid.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["steps"], help="which benchmark")
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--d", type=int, default=750)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=40, help="steps per variant per round (dense: a tenth)")
    p.add_argument("--out", default=None, help="folder for bench.json and bench.md (default runs/bench-<time>)")
    args = p.parse_args(argv)
    rank, n = runtime.init()
    result = {"steps": bench_steps(args, n)}
    mach = runtime.machine()
    if rank == 0:
        out = Path(args.out or timestamped_dir("bench"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(dict(machine=mach, **result), indent=2))
        md = to_markdown(result, mach)
        (out / "bench.md").write_text(md)
        print(md)
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
