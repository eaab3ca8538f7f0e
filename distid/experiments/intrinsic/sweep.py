"""Measure a task's intrinsic dimension: train fully (the baseline), then in random subspaces over
a grid of d, several seeds each, and report d_int90 (distid.experiments.intrinsic.dimension).

    python -m distid.experiments.intrinsic.sweep --config configs/mnist_fc_id.toml [--set sweep.seeds=1] [--out DIR]
    torchrun --nproc_per_node=2 -m distid.experiments.intrinsic.sweep --config configs/mnist_fc_id.toml

Every point is `distid.train.train` with train.method, subspace.d (or lora.rank), train.seed and train.lr changed.
sweep.mode = "split" (the fast path on CPUs): the ranks share out the points and each trains its
own alone, as a one-process run; results meet on rank 0 at the end. "ddp": every point trains on
all ranks under DDP, one after another. A finished point is recorded in OUT/sweep.json at once;
running the sweep again skips it (if its config is unchanged), so an interrupted sweep resumes.
OUT defaults to runs/sweep-<config name> (not timestamped, so that re-running resumes).

sweep.search = "bisect" trains only the d values a bisection asks for (bisect_sweep.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from distid import runtime
from distid.config import Config
from distid.experiments.intrinsic import bisect_sweep, store
from distid.experiments.intrinsic.points import (check_lora_ranks, check_range, fingerprint, grid, key, plan,
                                                 point_cfg, train_point)
from distid.experiments.intrinsic.report import finish
from distid.run import cli

COST = {"full": 0.6, "subspace": 1.0, "lora": 0.7}  # rough relative run time, to balance the ranks' shares


@contextlib.contextmanager
def solo():
    """Make this process look like a plain one-process run to distid.train, whatever torchrun set,
    so that distid.train.train creates (and then destroys) its own one-rank group on a free port."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_USE_AGENT_STORE")
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(runtime.free_port()))
    try:
        yield
    finally:
        for k in names:
            os.environ.pop(k, None)
        os.environ.update(saved)


def share(todo: list[dict], rank: int, n: int) -> list[dict]:
    """This rank's points: longest first, each to the least-loaded rank (same answer on every rank)."""
    load, mine = [0.0] * n, []
    for p in sorted(todo, key=lambda p: (-COST[p["kind"]], key(p))):
        r = load.index(min(load))
        load[r] += COST[p["kind"]]
        if r == rank:
            mine.append(p)
    return mine


def run_split(args, cfg: Config, todo: list[dict], out: Path, rank: int, n: int, points: list[dict]) -> list[dict]:
    """Each rank trains its share alone; then one group meets to gather the records on rank 0.
    The shares are cut from all the points, not from those left to do: ranks read sweep.json at
    slightly different times (one may already have recorded a point), so only a plan that does not
    depend on it is the same on every rank."""
    left = {key(p) for p in todo}
    t0, mine = time.perf_counter(), [p for p in share(points, rank, n) if key(p) in left]
    print(f"[rank {rank}] {len(mine)} of {len(todo)} points to train", flush=True)
    records = []
    for p in mine:
        with solo():
            records.append(train_point(args, cfg, p, out, 1, rank))
        store.record(out, records[-1])  # resumable at once; rank 0 records them all again below
    if n == 1:
        return records
    # Shares are balanced, so the others finish within about this rank's own time; a rank that
    # dies makes torchrun stop the group, and one that hangs is given up on after this timeout.
    runtime.init(cfg.dist.timeout_s + 2 * (time.perf_counter() - t0), cfg.dist.backend)
    gathered = [None] * n if rank == 0 else None
    import torch.distributed as dist

    dist.gather_object(records, gathered, dst=0)
    if rank != 0:
        return []
    records = [r for part in gathered for r in part]
    store.record(out, *records)  # again, for a folder that is not shared between nodes
    return records


def run_ddp(args, cfg: Config, todo: list[dict], out: Path, rank: int, n: int, points=None) -> list[dict]:
    """Every point on all ranks, under the config's strategy (DDP or FSDP)."""
    runtime.init(cfg.dist.timeout_s, cfg.dist.backend)
    records = []
    for p in todo:
        rec = train_point(args, cfg, p, out, n, rank)
        if rank == 0:
            store.record(out, rec)
            records.append(rec)
    return records


def sweep(args, cfg: Config) -> None:
    rank, n = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    runtime.share_cores()  # before a split sweep's points hide torchrun's LOCAL_WORLD_SIZE
    runtime.check_backend(runtime.pick_backend() if cfg.dist.backend == "auto" else cfg.dist.backend)
    out = Path(args.out or f"runs/sweep-{cfg.name}")
    check_range(cfg)
    if cfg.sweep.search == "bisect":
        return bisect_sweep.bisect_sweep(args, cfg, out, rank, n)
    split = cfg.sweep.mode == "split"
    points = plan(cfg)
    check_lora_ranks(args, cfg)
    done = {} if args.redo else store.finished(out, points, key,
                                               lambda pt: fingerprint(point_cfg(args, cfg, pt), 1 if split else n))
    todo = [pt for pt in points if key(pt) not in done]
    if rank == 0:
        print(f"sweep {cfg.name}: {len(points)} points ({len(done)} already in {out}/sweep.json), "
              f"mode {cfg.sweep.mode}, {n} rank(s)", flush=True)
        if done:
            print(f"reused: {len(done)} points of the same settings, world size and code "
                  f"({runtime.code_version()}); --redo trains them again", flush=True)
    t0 = time.perf_counter()
    new = (run_split if split else run_ddp)(args, cfg, todo, out, rank, n, points)
    if rank == 0:
        records = [done.get(key(pt)) or next(r for r in new if r["key"] == key(pt)) for pt in points]
        finish(cfg, out, records, n, t0, len(new), grid(cfg))


def main(argv=None) -> int:
    def add_args(p):
        p.add_argument("--redo", action="store_true", help="train every point again, ignoring OUT/sweep.json")

    return cli.main(argv, "python -m distid.experiments.intrinsic.sweep", __doc__, sweep, add_args, join=False,
                    every_rank=lambda cfg: cfg.sweep.mode == "split" and cfg.sweep.search == "grid",  # each its own
                    out="runs/sweep-<config name> (a rerun reuses its finished points)")


if __name__ == "__main__":
    sys.exit(main())
