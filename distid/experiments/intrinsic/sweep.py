"""Measure a task's intrinsic dimension: train fully (the baseline), then in random subspaces over
a grid of d, several seeds each, and report d_int90 (distid.experiments.intrinsic.dimension).

    python -m distid.experiments.intrinsic.sweep --config configs/mnist_fc_id.toml [--set sweep.seeds=1] [--out DIR]
    torchrun --nproc_per_node=2 -m distid.experiments.intrinsic.sweep --config configs/mnist_fc_id.toml

Every point is `distid.run.api.run` with [train] changed in method, d (or lora_rank), seed and lr.
sweep.mode = "split" (the fast path on CPUs): the ranks share out the points and each trains its
own alone, as a one-process run; results meet on rank 0 at the end. "ddp": every point trains on
all ranks under DDP, one after another. A finished point is recorded in OUT/sweep.json at once;
running the sweep again skips it (if its config is unchanged), so an interrupted sweep resumes.
OUT defaults to runs/sweep-<config name> (not timestamped, so that re-running resumes).

sweep.search = "bisect" trains only the d values a bisection asks for (experiments/intrinsic/bisect_sweep.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

from distid import runtime
from distid.experiments.intrinsic import dimension, store
from distid.config import Config, ConfigError, load_config, to_dict
from distid.run import cli
from distid.run.api import run_logged

COST = {"full": 0.6, "subspace": 1.0, "lora": 0.7}  # rough relative run time, to balance the ranks' shares


def grid(cfg: Config) -> list[int]:
    """sweep.d if given, else sweep.points values log-spaced over [d_min, d_max], rounded."""
    s = cfg.sweep
    if s.d:
        return sorted(set(s.d))
    if s.points == 1:
        return [s.d_min]
    ratio = math.log(s.d_max / s.d_min) / (s.points - 1)
    return sorted({round(s.d_min * math.exp(i * ratio)) for i in range(s.points)})


def seeds_of(cfg: Config) -> list[int]:
    """The run seeds train.seed, train.seed + 1, …: each run keys its own streams by a hash of its seed."""
    return [cfg.train.seed + i for i in range(cfg.sweep.seeds)]


def plan(cfg: Config) -> list[dict]:
    """Every point of the sweep: {kind, x, seed}; x is d (subspace), the rank (lora) or 0 (full)."""
    seeds = seeds_of(cfg)
    kinds = [("full", 0)] + [("subspace", d) for d in grid(cfg)] + [("lora", r) for r in cfg.sweep.lora_ranks]
    return [dict(kind=k, x=x, seed=s) for k, x in kinds for s in seeds]


def key(point: dict) -> str:
    return f"{point['kind']}-{point['x']}-seed{point['seed']}" if point["x"] else f"{point['kind']}-seed{point['seed']}"


def overrides(cfg: Config, point: dict) -> list[str]:
    """--set lines that turn the sweep's config into this point's training run."""
    k, s = point["kind"], cfg.sweep
    lr = {"full": s.full_lr, "subspace": cfg.train.lr, "lora": s.lora_lr}[k]
    over = [f"train.method={k}", f"train.seed={point['seed']}", f"train.lr={lr}"]
    return over + ([f"train.d={point['x']}"] if k == "subspace" else []) + \
        ([f"train.lora_rank={point['x']}"] if k == "lora" else [])


RESULT_KEYS = ("model.", "data.dataset", "data.classes", "train.", "dist.strategy", "dist.comm_hook",
               "dist.powersgd_")  # what decides a point's result
NOT_RESULT = ("train.log_every", "train.eval_every")
ONLY_FOR = {"lora": ("train.lora_",), "subspace": ("train.d", "train.projection", "train.said", "train.max_dense_gb")}


def fingerprint(cfg: Config, ranks: int) -> str:
    """Hash of everything that decides a point's result: its settings (the method's own, not another
    method's), the world size and the code (runtime.code_version: any change to distid's sources)."""
    flat = _flat(to_dict(cfg))
    other = tuple(p for kind, prefixes in ONLY_FOR.items() if kind != cfg.train.method for p in prefixes)
    ignored = NOT_RESULT if not cfg.train.stop_plateau else ("train.log_every",)  # evaluations decide a stop
    what = {k: v for k, v in flat.items() if k.startswith(RESULT_KEYS) and k not in ignored
            and not k.startswith(other)}
    what.update(ranks=ranks, code=runtime.code_version())
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _flat(d: dict) -> dict:
    return {f"{s}.{k}": v for s, sec in d.items() if isinstance(sec, dict) for k, v in sec.items()}


@contextlib.contextmanager
def solo():
    """Make this process look like a plain one-process run to distid.train, whatever torchrun set,
    so that run() creates (and then destroys) its own one-rank group on a free port."""
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


def train_point(args, cfg: Config, point: dict, out: Path, ranks: int, rank: int) -> dict:
    """Train one point (train's own output goes to OUT/points/KEY/train.log) and return its record."""
    pcfg = point_cfg(args, cfg, point)
    t0 = time.perf_counter()
    s = run_logged(pcfg, out / "points" / key(point))
    keep = ("test_accuracy", "train_loss", "trainable_params", "total_params", "steps", "steps_planned",
            "stopped_early", "epochs", "step_time_s",
            "lora_rank", "world_size", "theta0")
    rec = dict(point, key=key(point), hash=fingerprint(pcfg, ranks), wall_time_s=time.perf_counter() - t0,
               rank=rank, **{k: getattr(s, k) for k in keep})
    print(f"[rank {rank}] {key(point):>22}: test acc {rec['test_accuracy']:.4f}  "
          f"({rec['trainable_params']:,} trained, {rec['wall_time_s']:.1f} s)", flush=True)
    return rec


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
        from distid.experiments.intrinsic import bisect_sweep

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
        report(cfg, out, records, n, t0, len(new))


def report(cfg: Config, out: Path, records: list[dict], n: int, t0: float, trained: int, echo: bool = True) -> str:
    """Rank 0: the analysis, sweep.json's report fields, sweep.md and the chart; returns (and with
    echo, prints) the report."""
    from distid.experiments.intrinsic.report import write

    s = cfg.sweep
    result = dict(config=to_dict(cfg), grid=grid(cfg) if s.search == "grid" else [], points=records,
                  machine=runtime.machine(), ranks=n, mode=s.mode, search=s.search,
                  wall_time_s=time.perf_counter() - t0, trained=trained,
                  analysis=dimension.analyse(records, s.threshold, s.search, s.fit_window))
    text = write(out, result, cfg)
    if echo:
        print(text, flush=True)
    return text


def check_range(cfg: Config) -> None:
    """Refuse a d above the model's D: a subspace as large as the model itself is not a subspace."""
    from distid.models import build_model, count_params

    top = cfg.sweep.d_max if cfg.sweep.search == "bisect" else max(grid(cfg))
    big = count_params(build_model(cfg.model.name))
    if top > big:
        raise ConfigError(f"sweep: d = {top:,} is above the model's D = {big:,} ({cfg.model.name}); lower "
                          f"{'sweep.d_max' if cfg.sweep.search == 'bisect' else 'the grid (sweep.d or sweep.d_max)'}")


def main(argv=None) -> int:
    def add_args(p):
        p.add_argument("--redo", action="store_true", help="train every point again, ignoring OUT/sweep.json")

    return cli.main(argv, "python -m distid.experiments.intrinsic.sweep", __doc__, sweep, add_args, join=False,
                    every_rank=lambda cfg: cfg.sweep.mode == "split" and cfg.sweep.search == "grid",  # each its own
                    out="runs/sweep-<config name> (a rerun reuses its finished points)")


def check_lora_ranks(args, cfg: Config, ranks: list[int] | None = None) -> None:
    """Refuse, before training anything, a LoRA rank (default sweep.lora_ranks) some targeted layer cannot take."""
    from distid.models import build_model
    from distid.run.build import with_lora

    for r in cfg.sweep.lora_ranks if ranks is None else ranks:
        pcfg = point_cfg(args, cfg, dict(kind="lora", x=r, seed=cfg.train.seed))
        try:
            with_lora(build_model(pcfg.model.name), pcfg)
        except ConfigError as e:
            where = f"sweep.lora_ranks = {cfg.sweep.lora_ranks}" if ranks is None else \
                f"sweep.lora_min/lora_max = {ranks[0]}/{ranks[-1]}"
            raise ConfigError(f"{where}: {e}") from e


def point_cfg(args, cfg: Config, point: dict) -> Config:
    """The config of one point's training run: the sweep's file and --set lines, then the point's own."""
    return load_config(args.config, [*args.overrides, *overrides(cfg, point)])


if __name__ == "__main__":
    sys.exit(main())
