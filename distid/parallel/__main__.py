"""Lesson 2 — data parallel from first principles.

    torchrun --nproc_per_node=4 -m distid.parallel [--steps 300] [--global-batch 128] [--out DIR]

Trains the 784-200-200-10 MLP on MNIST three ways from the same initial weights and the same
global batches — gradients averaged by the hand-written ring all-reduce, by PyTorch's DDP, and
in one process on the whole global batch (rank 0) — and prints test accuracy, step time and
gradient bytes per step. Exits 1 if the three differ beyond --atol/--rtol after one step: they
apply the same averaged gradient, up to float32 rounding — what data parallelism promises. After
many steps any of them may have drifted from the others: the same sums in another order round
differently, and where a ReLU input sits within rounding of zero the runs take different sides of
the kink — a different trajectory, not a wrong average. Which runs part, and when, depends on the
machine's summation order; the last line gives each pair's distance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

from distid import runtime
from distid.config import timestamped_dir
from distid.data import load_splits
from distid.observe.evaluate import accuracy
from distid.parallel import lesson
from distid.primitives.formulas import exact_sent, textbook_sent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distid.parallel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    p.add_argument("--global-batch", type=int, default=128,
                   help="samples per step, summed over ranks (a multiple of the world size)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-root", default=os.environ.get("DISTID_DATA", "data"))
    p.add_argument("--out", default=None, help="folder for summary.json (default runs/data_parallel-<time>)")
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--atol", type=float, default=1e-4)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, n = runtime.init()
    if args.global_batch % n:
        runtime.print0(f"error: --global-batch {args.global_batch} is not a multiple of the world size {n}")
        runtime.shutdown()
        return 2
    train, test = load_splits(args.dataset, args.data_root)
    kw = dict(steps=args.steps, global_batch=args.global_batch, lr=args.lr, seed=args.seed, device=runtime.device())
    first = {mode: lesson.run(train, mode, **dict(kw, steps=1))[0].params for mode in ("hand", "ddp", "single")}
    rows = {}
    for mode in ("hand", "ddp"):
        res, model = lesson.run(train, mode, **kw)
        rows[mode] = (res, accuracy(model, test, device=runtime.device()))
    res, model = lesson.run(train, "single", **kw)  # every rank, so none waits idle on rank 0
    rows["single"] = (res, accuracy(model, test, alone=True, device=runtime.device()))
    ok = report(rows, first, args, n) if rank == 0 else True
    if rank == 0:
        save(rows, args, n, ok)
    runtime.shutdown()
    return 0 if ok else 1


def save(rows: dict, args, n: int, ok: bool) -> None:
    """summary.json: per run test accuracy, loss, step time, bytes, and the distance to single; the
    ring's distance to DDP; `agree`: the one-step check."""
    ref = rows["single"][0].params
    runs = {mode: dict(test_accuracy=acc, train_loss=res.loss, step_time_s=res.step_s,
                       grad_bytes_per_step=None if math.isnan(res.bytes_per_step) else res.bytes_per_step,
                       max_abs_diff_vs_single=(res.params - ref).abs().max().item())
            for mode, (res, acc) in rows.items()}
    out = Path(args.out or timestamped_dir("data_parallel"))
    out.mkdir(parents=True, exist_ok=True)
    ring_ddp = (rows["hand"][0].params - rows["ddp"][0].params).abs().max().item()
    summary = dict(world_size=n, total_params=ref.numel(), agree=ok, max_abs_diff_ring_ddp=ring_ddp, runs=runs,
                   args=vars(args))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}/summary.json")


def report(rows: dict, first: dict, args, n: int) -> bool:
    """Print the lesson's table on rank 0; True when the three runs agree after one step (`first`:
    the parameters after it)."""
    D = rows["hand"][0].params.numel()
    ref = rows["single"][0].params
    print(f"data parallel from first principles — MLP (D = {D:,}), world size {n}, {args.steps} SGD steps,"
          f" global batch {args.global_batch}")
    print(f"{'run':<22} {'test acc':>8} {'loss':>7} {'step ms':>8} {'grad bytes/rank/step':>21} {'max |Δθ| vs single':>19}")
    names = {"hand": "hand ring all-reduce", "ddp": "DDP (torch)", "single": "single process"}
    for mode, (res, acc) in rows.items():
        diff = (res.params - ref).abs().max().item()
        nbytes = "-" if mode != "hand" else f"{res.bytes_per_step:,.0f}"
        print(f"{names[mode]:<22} {acc:>8.4f} {res.loss:>7.4f} {1e3 * res.step_s:>8.2f} {nbytes:>21} {diff:>19.2e}")
    print(f"ring formula 2(N−1)/N·4D = {textbook_sent('all_reduce', 4 * D, n):,.0f} bytes/rank/step; exact for"
          f" D = {D:,} cut into {n} chunks: {max(exact_sent('all_reduce', D, 4, n, r) for r in range(n)):,} (max over ranks)")
    close = dict(rtol=args.rtol, atol=args.atol)
    step1 = max((first[m] - first["single"]).abs().max().item() for m in ("hand", "ddp"))
    one = all(torch.allclose(first[m], first["single"], **close) for m in ("hand", "ddp"))
    print("after 1 step: " + (f"the three runs agree (max |Δθ| {step1:.1e})" if one else
                               f"MISMATCH beyond rtol={args.rtol}, atol={args.atol} (max |Δθ| {step1:.1e})"))
    hand, ddp = rows["hand"][0].params, rows["ddp"][0].params
    print(f"after {args.steps} steps: max |Δθ| ring–DDP {(hand - ddp).abs().max().item():.1e}, ring–single "
          f"{(hand - ref).abs().max().item():.1e}, DDP–single {(ddp - ref).abs().max().item():.1e} (a drift beyond "
          f"rounding is another trajectory, not another average)")
    return one


if __name__ == "__main__":
    sys.exit(main())
