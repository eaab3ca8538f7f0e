"""The bisection sweep (sweep.search = "bisect"): the baselines, then only the d values (and with
sweep.lora_max > 0, the LoRA ranks) that bisect.py asks for, one seed after another,
until every seed's bracket of the target is within sweep.width.

Each round's points depend on the last round's accuracies, so every point trains on all ranks
(sweep.mode = "ddp", or one process; split mode on several ranks is refused). The search keeps no
state of its own: the next round is a function of the records, which OUT/sweep.json holds, so a
bisection resumes and reuses finished points as a grid sweep does.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from distid import runtime
from distid.config import Config, ConfigError
from distid.experiments.intrinsic import bisect, points, store
from distid.experiments.intrinsic.report import finish


def targets(cfg: Config, baseline: float) -> list[float]:
    """The accuracies a bisection pins down: threshold × the measured baseline and/or × 1.0."""
    s = cfg.sweep
    if s.bisect_on != "measured" and baseline < s.threshold:
        raise ConfigError(f"sweep.bisect_on = {s.bisect_on!r}: full training reaches only {baseline:.4f}, below the "
                          f"fixed target {s.threshold:g}, so no d can be expected to reach it; use "
                          f"sweep.bisect_on = 'measured' (threshold × the measured baseline)")
    return {"measured": [s.threshold * baseline], "fixed_1.0": [s.threshold],
            "both": [s.threshold * baseline, s.threshold]}[s.bisect_on]


def searched(cfg: Config) -> list[tuple[str, int, int, float]]:
    """(kind, lowest, highest, width) of each search: the subspace's d to sweep.width, then, with
    sweep.lora_max > 0, LoRA's rank down to adjacent ranks (width 0)."""
    s = cfg.sweep
    return [("subspace", s.d_min, s.d_max, s.width)] + ([("lora", s.lora_min, s.lora_max, 0.0)] if s.lora_max else [])


def curve_of(records: list[dict], kind: str, seed: int) -> dict[int, float]:
    """{x: test accuracy} of one kind's points of one seed."""
    return {r["x"]: r["test_accuracy"] for r in records if r["kind"] == kind and r["seed"] == seed}


def next_points(cfg: Config, records: list[dict]) -> list[dict]:
    """The bisection's next round (bisect.py): the baselines first, then for each kind
    (subspace over [d_min, d_max], LoRA over [lora_min, lora_max]) and target, the probes of the
    first seed whose bracket is not settled; [] when all are."""
    seeds = points.seeds_of(cfg)
    base = [r["test_accuracy"] for r in records if r["kind"] == "full"]
    if len(base) < len(seeds):
        have = {r["seed"] for r in records if r["kind"] == "full"}
        return [dict(kind="full", x=0, seed=sd) for sd in seeds if sd not in have]
    for kind, lo, hi, width in searched(cfg):
        for t in targets(cfg, statistics.fmean(base)):
            curves = [curve_of(records, kind, sd) for sd in seeds]
            found = bisect.search(curves, t, lo, hi, width, interpolate=kind == "subspace")  # LoRA: plain halving
            if found:
                return [dict(kind=kind, x=x, seed=seeds[found[0]]) for x in found[1]]
    return []


def run_bisect(args, cfg: Config, out: Path, rank: int, n: int, then=None) -> tuple[list[dict], int]:
    """Rounds of next_points (and, once it is done, of then(records), if given), every point on all
    ranks; a point already in OUT/sweep.json with the same fingerprint is taken from there.
    Returns (every record, in order; how many were trained)."""
    runtime.init(cfg.dist.timeout_s, cfg.dist.backend)
    import torch.distributed as dist

    box = [store.stored(out) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)  # rank 0's folder, for ranks on nodes that do not share it
    records, trained = [], 0
    while todo := next_points(cfg, records) or (then(records) if then else []):
        for p in todo:
            old = box[0].get(points.key(p))
            if not args.redo and old and old.get("hash") == points.fingerprint(points.point_cfg(args, cfg, p), n):
                records.append(old)
                continue
            records.append(points.train_point(args, cfg, p, out, n, rank))
            trained += 1
            if rank == 0:
                store.record(out, records[-1])
    return records, trained


def bisect_sweep(args, cfg: Config, out: Path, rank: int, n: int) -> None:
    """sweep.search = "bisect": refuse what cannot run, search, report."""
    if cfg.sweep.lora_max:
        points.check_lora_ranks(args, cfg, [cfg.sweep.lora_min, cfg.sweep.lora_max])
    if cfg.sweep.mode == "split" and n > 1:
        raise ConfigError(f"sweep.search = 'bisect' on {n} ranks needs sweep.mode = 'ddp': each round's points "
                          f"depend on the last round's accuracies, so the ranks train every point together")
    if rank == 0:
        print(f"sweep {cfg.name}: bisection on log d in [{cfg.sweep.d_min:,}, {cfg.sweep.d_max:,}] to a width of "
              f"{cfg.sweep.width:.0%}, {cfg.sweep.seeds} seed(s), {n} rank(s)", flush=True)
    t0 = time.perf_counter()
    records, trained = run_bisect(args, cfg, out, rank, n)
    if rank == 0:
        finish(cfg, out, records, n, t0, trained)
