"""A sweep's points: the grid of d and the seeds, each point's key, fingerprint and config, and
training one; shared by the grid sweep (sweep.py), the bisection (bisect_sweep.py) and the probe."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from distid import runtime
from distid.config import Config, ConfigError, flat, load_config, to_dict
from distid.train import train_logged


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
    return over + ([f"subspace.d={point['x']}"] if k == "subspace" else []) + \
        ([f"lora.rank={point['x']}"] if k == "lora" else [])


NOT_RESULT = ("data.root", "checkpoint.", "sweep.", "dist.backend", "dist.timeout_s", "dist.check_replicas_every",
              "dist.measure_interface", "train.log_every", "train.eval_every")  # every other key decides a result
ONLY_FOR = {"lora": ("lora.",), "subspace": ("subspace.",)}  # a sweep's kinds: the settings of one kind only


def fingerprint(cfg: Config, ranks: int) -> str:
    """Hash of everything that decides a point's result: its settings (the method's own, not another
    method's), the world size and the code (runtime.code_version: any change to distid's sources)."""
    keys = flat(to_dict(cfg))
    method = cfg.train.method
    other = tuple(p for kind, prefixes in ONLY_FOR.items() if kind != method and method in ("full", *ONLY_FOR)
                  for p in prefixes)
    ignored = NOT_RESULT if not cfg.train.stop_plateau else tuple(k for k in NOT_RESULT if k != "train.eval_every")
    what = {k: v for k, v in keys.items() if "." in k and not k.startswith(ignored + other)}
    what.update(ranks=ranks, code=runtime.code_version())
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def train_point(args, cfg: Config, point: dict, out: Path, ranks: int, rank: int) -> dict:
    """Train one point (train's own output goes to OUT/points/KEY/train.log) and return its record."""
    pcfg = point_cfg(args, cfg, point)
    t0 = time.perf_counter()
    s = train_logged(pcfg, out / "points" / key(point))
    keep = ("test_accuracy", "train_loss", "trainable_params", "total_params", "steps", "steps_planned",
            "stopped_early", "epochs", "step_time_s",
            "lora_rank", "world_size", "theta0")
    rec = dict(point, key=key(point), hash=fingerprint(pcfg, ranks), wall_time_s=time.perf_counter() - t0,
               rank=rank, **{k: getattr(s, k) for k in keep})
    print(f"[rank {rank}] {key(point):>22}: test acc {rec['test_accuracy']:.4f}  "
          f"({rec['trainable_params']:,} trained, {rec['wall_time_s']:.1f} s)", flush=True)
    return rec


def check_range(cfg: Config) -> None:
    """Refuse a d above the model's D: a subspace as large as the model itself is not a subspace."""
    from distid.models import build_model, count_params

    top = cfg.sweep.d_max if cfg.sweep.search == "bisect" else max(grid(cfg))
    big = count_params(build_model(cfg.model.name))
    if top > big:
        raise ConfigError(f"sweep: d = {top:,} is above the model's D = {big:,} ({cfg.model.name}); lower "
                          f"{'sweep.d_max' if cfg.sweep.search == 'bisect' else 'the grid (sweep.d or sweep.d_max)'}")


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
