"""Configuration: TOML files in ``configs/`` read into typed dataclasses.

A config file has sections by what they configure (all optional) and an optional top-level ``name``:

    [model] [data]       what is trained, on what
    [train]              the method, optimizer, length, seed, logging and evaluation
    [subspace] [lora]    the re-parameterisations: d and P; LoRA's and PEFT's adapters
    [checkpoint]         how often, how many kept
    [dist]               the strategy that keeps replicas together, the backend, replica checks
    [ddp] [powersgd] [local_sgd] [demo] [sparse_loco] [streaming]
                         one strategy's own settings (inert, or refused, under another strategy)
    [sweep]              the grid of the intrinsic-dimension sweep

Any value can be overridden from the command line with ``--set section.key=value``; the value is
parsed as TOML, falling back to the raw string (so ``--set subspace.projection=dense`` needs no
quotes). Unknown keys, wrong types and invalid choices raise :class:`ConfigError` with a message
that names the key; a key of the older one-table layout (``train.d``) names its new place.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None


# Adam learning rates per method that compare and frontier use (see docs/lesson6_lora.md; PEFT's methods:
# the best of 3e-3 … 3e-1 after one MNIST epoch on the MLP, docs/lesson8_sync_less_often.md)
METHOD_LR = {"full": 1e-3, "subspace": 3e-2, "lora": 1e-2, "vera": 3e-2, "fourierft": 1e-1, "unilora": 1e-2}


class ConfigError(ValueError):
    """An invalid configuration file, override or value."""


@dataclass
class ModelConfig:
    name: str = "mlp"  # "mlp" | "mlp_wide" | "lenet" | "vit" | "hf_vit"
    init_from: str = ""  # a state_dict file (torch.save) whose weights become θ₀; "" = the seed's init


@dataclass
class DataConfig:
    dataset: str = "mnist"  # "mnist" | "fashion-mnist"
    root: str = "data"
    classes: list = field(default_factory=list)  # train and test on these labels only ([] = all)


@dataclass
class TrainConfig:
    method: str = "subspace"  # "full" | "subspace" | "lora" | PEFT's "vera" | "fourierft" | "unilora"
    optimizer: str = "adam"  # "adam" | "sgd"
    lr: float = 1e-3
    global_batch: int = 128
    epochs: float = 1.0  # training length in epochs (fractional allowed)
    steps: int = 0  # if > 0, overrides epochs
    seed: int = 0  # model init, theta_0, projection and data order
    log_every: int = 50
    eval_every: int = 0  # 0 = only at the end
    stop_plateau: int = 0  # stop once this many evaluations in a row gained ≤ plateau_delta on the best before (0 = never)
    plateau_delta: float = 0.002  # test accuracy an evaluation must add to the best so far to count as progress


@dataclass
class SubspaceConfig:
    d: int = 750  # trained numbers; also the budget LoRA (lora.rank = 0) and Uni-LoRA match
    projection: str = "fastfood"  # "dense" | "sparse" | "fastfood"
    said: bool = False  # one trainable scale per parameter tensor (Aghajanyan et al.), within d
    layerwise: bool = False  # form θ = θ₀ + P·d one module at a time (large D: θ₀ + one slice in memory)
    max_dense_gb: float = 0.0  # 0 = auto (limit from available memory)
    redraw_every: int = 0  # K: fold θ₀ ← θ₀ + P·d and draw a new P every K steps (0 = one subspace for the run)
    redraw_optimizer: str = "reset"  # at a re-draw, the optimizer's state of d: "reset" (zeroed) | "keep"


@dataclass
class LoraConfig:
    rank: int = 0  # 0 = the rank whose trainable count is closest to subspace.d (LoRA; VeRA's rank)
    alpha: float = 0.0  # 0 = the rank (scale α/r = 1)
    targets: str = ""  # comma-separated layer names, patterns or name suffixes ("q,v"); "" = all
    modules_to_save: str = ""  # modules trained fully beside LoRA (PEFT's modules_to_save), e.g. "head"
    n_frequency: int = 1000  # fourierft: trainable spectral coefficients per layer (PEFT's n_frequency)


@dataclass
class CheckpointConfig:
    every: int = 100  # checkpoint every N steps (0 = only at the end)
    keep: int = 2  # keep the last K checkpoints (0 = never checkpoint)


@dataclass
class DistConfig:
    strategy: str = "ddp"  # how replicas are kept together: "ddp" | "fsdp" | "local_sgd" | "streaming_diloco" |
    # "sparse_loco" | "demo" | "none" | "package.module:Class"
    backend: str = "auto"  # "auto" | "gloo" | "nccl"
    timeout_s: float = 120.0
    check_replicas_every: int = 0  # compare every rank's trainable state every N steps (0 = only at the end)
    measure_interface: str = ""  # count the bytes this network interface carries ("lo" on one machine); "" = off


@dataclass
class DdpConfig:
    hook: str = "none"  # gradient compression: "none" | "fp16" | "bf16" | "powersgd" (PyTorch's DDP comm hooks)


@dataclass
class PowerSGDConfig:
    rank: int = 1  # matrix_approximation_rank
    start_iter: int = 10  # plain all-reduce for the steps before this one (PyTorch: >= 2)
    error_feedback: bool = True


@dataclass
class LocalSGDConfig:
    every: int = 32  # H: the replicas take H local steps, then synchronise once
    outer: str = "nesterov"  # "average" (local SGD: θ ← mean of the replicas) | "nesterov" (DiLoCo's outer step)
    outer_lr: float = 0.7  # DiLoCo's outer learning rate (Douillard et al. 2023)
    outer_momentum: float = 0.9  # DiLoCo's outer Nesterov momentum
    outer_dtype: str = "float32"  # the pseudo-gradient on the wire: "float32" | "bfloat16" | "float16"


@dataclass
class StreamingConfig:
    """Streaming DiLoCo (dist.strategy = "streaming_diloco"; H, the outer step and its dtype: [local_sgd])."""

    fragments: int = 2  # the model split into this many fragments, each synchronised once every H steps, staggered
    delay: int = 0  # τ: a fragment's all-reduce starts τ steps before its outer step is applied (overlap)
    mix: float = 0.0  # α: a fragment becomes α·local + (1 − α)·global after its outer step (0 = global)


@dataclass
class SparseLoCoConfig:
    """SparseLoCo (dist.strategy = "sparse_loco"): local steps whose pseudo-gradient is sent as top-k."""

    every: int = 32  # H: local steps between synchronisations
    density: float = 0.02  # k / chunk: the fraction of each chunk's entries sent
    chunk: int = 4096  # top-k is taken within chunks of this many entries
    value_bits: int = 2  # the sent values quantised to this many bits (32: float32 as they are)
    error_decay: float = 0.95  # β: error feedback e ← β·e + Δ; what is sent is taken out of e
    outer_lr: float = 1.0  # θ ← θ_start − outer_lr · mean of the ranks' sent pseudo-gradients


@dataclass
class DemoConfig:
    """DeMo (dist.strategy = "demo"): each rank keeps its momentum and sends its k fastest DCT components."""

    topk: int = 32  # k: DCT components sent per chunk
    chunk: int = 64  # DCT chunk: 64 entries of a vector, 64 × 64 blocks of a matrix (the largest divisors ≤ this)
    decay: float = 0.999  # β: momentum m ← β·m + g, before the sent components are taken out of it


@dataclass
class SweepConfig:
    """The grid of ``python -m distid.experiments.intrinsic.sweep``; each point is [train] with method/d/seed changed."""

    d: list = field(default_factory=list)  # explicit grid of d; [] = `points` log-spaced values in [d_min, d_max]
    d_min: int = 100
    d_max: int = 2000
    points: int = 9
    seeds: int = 3  # seeds train.seed, train.seed + 1, ... for every point (baseline included)
    mode: str = "split"  # "split": ranks share out the points, each trains alone; "ddp": every point on all ranks
    threshold: float = 0.9  # d_int is the smallest d reaching threshold × the full-training baseline
    full_lr: float = 1e-3  # Adam lr of the baseline (full training); train.lr is the subspace's
    lora_ranks: list = field(default_factory=list)  # also train LoRA at these ranks ([] = none)
    lora_lr: float = 1e-2
    # "grid": every d of the grid; "bisect": bisection on log d in [d_min, d_max] (experiments/intrinsic/bisect.py)
    search: str = "grid"
    width: float = 0.1  # bisect: stop when a seed's bracket hi/lo ≤ 1 + width
    fit_window: float = 1.5  # d_int: the line in log d goes through the points within this factor of the crossing
    bisect_on: str = "measured"  # bisect: the threshold the search pins down: "measured", "fixed_1.0" or "both"
    lora_min: int = 1  # bisect: also search LoRA ranks in [lora_min, lora_max]
    lora_max: int = 0  # 0: no LoRA search (distid.probe: the largest rank the targets take, at most 64)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    subspace: SubspaceConfig = field(default_factory=SubspaceConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    ddp: DdpConfig = field(default_factory=DdpConfig)
    powersgd: PowerSGDConfig = field(default_factory=PowerSGDConfig)
    local_sgd: LocalSGDConfig = field(default_factory=LocalSGDConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    sparse_loco: SparseLoCoConfig = field(default_factory=SparseLoCoConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    name: str = "default"  # set from the TOML file's stem by load_config


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "subspace": SubspaceConfig,
            "lora": LoraConfig, "checkpoint": CheckpointConfig, "dist": DistConfig, "ddp": DdpConfig,
            "powersgd": PowerSGDConfig, "local_sgd": LocalSGDConfig, "streaming": StreamingConfig, "sparse_loco": SparseLoCoConfig,
            "demo": DemoConfig, "sweep": SweepConfig}
STRATEGIES = ("ddp", "fsdp", "local_sgd", "streaming_diloco", "sparse_loco", "demo", "none")  # distid/strategies;
# or "package.module:Class"
# sections that apply only when a key has one of some values: a strategy's own, and a hook's
APPLIES_WHEN = {"ddp": ("dist.strategy", ("ddp",)), "powersgd": ("ddp.hook", ("powersgd",)),
                "local_sgd": ("dist.strategy", ("local_sgd", "streaming_diloco")),
                "streaming": ("dist.strategy", ("streaming_diloco",)), "sparse_loco": ("dist.strategy", ("sparse_loco",)),
                "demo": ("dist.strategy", ("demo",))}
REFUSED_WHEN_IDLE = ("ddp",)  # a hook set while another strategy runs: refused ([powersgd] and [local_sgd]
# may hold settings for the runs that turn them on, as the frontier's config does for its cells)
# keys of the one-table layout, refused with their new place
MOVED = {
    "train.d": "subspace.d", "train.projection": "subspace.projection", "train.said": "subspace.said",
    "train.layerwise": "subspace.layerwise", "train.max_dense_gb": "subspace.max_dense_gb",
    "train.lora_rank": "lora.rank", "train.lora_alpha": "lora.alpha", "train.lora_targets": "lora.targets",
    "train.lora_modules_to_save": "lora.modules_to_save", "train.n_frequency": "lora.n_frequency",
    "train.ckpt_every": "checkpoint.every", "train.ckpt_keep": "checkpoint.keep",
    "train.check_replicas_every": "dist.check_replicas_every",
    "train.sync_every": "local_sgd.every (with dist.strategy = 'local_sgd')", "train.outer": "local_sgd.outer",
    "train.outer_lr": "local_sgd.outer_lr", "train.outer_momentum": "local_sgd.outer_momentum",
    "train.outer_dtype": "local_sgd.outer_dtype", "dist.comm_hook": "ddp.hook", "dist.powersgd_rank": "powersgd.rank",
    "dist.powersgd_start_iter": "powersgd.start_iter", "dist.powersgd_error_feedback": "powersgd.error_feedback",
}
CHOICES = {
    "model.name": ("mlp", "mlp_wide", "lenet", "vit", "hf_vit"),
    "data.dataset": ("mnist", "fashion-mnist"),
    "train.method": ("full", "subspace", "lora", "vera", "fourierft", "unilora"),
    "subspace.projection": ("dense", "sparse", "fastfood"),
    "subspace.redraw_optimizer": ("reset", "keep"),
    "train.optimizer": ("adam", "sgd"),
    "local_sgd.outer": ("average", "nesterov"),
    "local_sgd.outer_dtype": ("float32", "bfloat16", "float16"),
    "dist.backend": ("auto", "gloo", "nccl"),
    "ddp.hook": ("none", "fp16", "bf16", "powersgd"),
    "sweep.mode": ("split", "ddp"),
    "sweep.search": ("grid", "bisect"),
    "sweep.bisect_on": ("measured", "fixed_1.0", "both"),
}


def _section_keys(section: str) -> list[str]:
    return [f"{section}.{f.name}" for f in dataclasses.fields(SECTIONS[section])]


def valid_keys() -> list[str]:
    """All settable dotted keys, e.g. ``'train.lr'``, plus top-level ``'name'``."""
    return ["name"] + [k for s in SECTIONS for k in _section_keys(s)]


def _unknown(key: str, origin: str) -> ConfigError:
    if key in MOVED:
        return ConfigError(f"'{key}'{origin} has moved: it is {MOVED[key]} now")
    msg = f"unknown key '{key}'{origin}"
    section = key.split(".")[0]
    if "." in key and section not in SECTIONS:
        msg += f" (no section '{section}'; sections are {', '.join(SECTIONS)})"
    close = difflib.get_close_matches(key, valid_keys(), n=1)
    if not close:  # a bare leaf such as 'lr' or 'd': match it against every section's fields
        leaves = {k.split(".")[-1]: k for k in reversed(valid_keys())}  # the first section wins a shared leaf
        close = [leaves[m] for m in difflib.get_close_matches(key.split(".")[-1], list(leaves), n=1)]
    if close:
        return ConfigError(f"{msg}; did you mean '{close[0]}'?")
    if section in SECTIONS:
        return ConfigError(f"{msg}; valid keys: {', '.join(_section_keys(section))}")
    return ConfigError(f"{msg}; valid keys: {', '.join(valid_keys())}")


def _set(cfg: Config, key: str, value: Any, origin: str = "") -> None:
    """Type-check ``value`` and assign it to dotted ``key`` of ``cfg``."""
    parts = key.split(".")
    if parts == ["name"]:
        target, attr = cfg, "name"
    elif len(parts) == 2 and parts[0] in SECTIONS and key in _section_keys(parts[0]):
        target, attr = getattr(cfg, parts[0]), parts[1]
    else:
        raise _unknown(key, origin)
    expected = type(getattr(target, attr))  # every default is a str, int, float, bool or a list of ints
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}{origin}: expected true or false, got {value!r}")
        setattr(target, attr, value)
        return
    if expected is list:
        if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{key}{origin}: expected a list of integers such as [100, 200], got {value!r}")
        setattr(target, attr, value)
        return
    if expected is str and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # a layer name such as --set lora.targets=3
    ok = isinstance(value, expected) and not isinstance(value, bool)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise ConfigError(f"{key}{origin}: expected {expected.__name__}, got {value!r}")
    setattr(target, attr, value)


def _flatten(raw: dict) -> Iterable[tuple[str, Any]]:
    """Yield ``(dotted_key, value)`` pairs from a parsed TOML document."""
    for k, v in raw.items():
        if isinstance(v, dict) and k != "name":
            if not v and k not in SECTIONS:
                raise _unknown(k, "")
            for kk, vv in v.items():
                yield f"{k}.{kk}", vv
        elif k in SECTIONS:
            raise ConfigError(f"'{k}' must be a table ([{k}]), got {v!r}")
        else:
            yield k, v


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``'section.key=value'``; the value is TOML, else the raw string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        parsed = _toml().loads(f"v = {value}")["v"]
    except Exception:
        parsed = value
    return key.strip(), parsed


def _toml():
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise ConfigError("reading TOML needs Python >= 3.11 or the 'tomli' package")
    return tomllib


def validate(cfg: Config) -> None:
    """Check choices and ranges; raise :class:`ConfigError` on the first problem."""
    for key, allowed in CHOICES.items():
        section, attr = key.split(".")
        value = getattr(getattr(cfg, section), attr)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    t, sub, lo, ck, ds, ls, ps = cfg.train, cfg.subspace, cfg.lora, cfg.checkpoint, cfg.dist, cfg.local_sgd, cfg.powersgd
    st, sl, dm = cfg.streaming, cfg.sparse_loco, cfg.demo
    checks = [
        ("dist.strategy", ds.strategy in STRATEGIES or ":" in ds.strategy,
         f"one of {', '.join(map(repr, STRATEGIES))} or a class named by import path, 'package.module:Class'",
         ds.strategy),
        ("train.lr", t.lr > 0, "> 0", t.lr),
        ("train.global_batch", t.global_batch >= 1, ">= 1", t.global_batch),
        ("train.steps", t.steps >= 0, ">= 0", t.steps),
        ("train.epochs", t.epochs > 0 or t.steps > 0, "> 0 (or train.steps > 0)", t.epochs),
        ("train.log_every", t.log_every >= 1, ">= 1", t.log_every),
        ("train.eval_every", t.eval_every >= 0, ">= 0", t.eval_every),
        ("train.stop_plateau", t.stop_plateau >= 0, ">= 0 (0: never stop early)", t.stop_plateau),
        ("train.stop_plateau", t.stop_plateau == 0 or t.eval_every > 0,
         "0 unless train.eval_every > 0 (the plateau is over evaluations)", t.stop_plateau),
        ("train.plateau_delta", t.plateau_delta >= 0, ">= 0", t.plateau_delta),
        ("subspace.d", sub.d >= 1, ">= 1", sub.d),
        ("subspace.max_dense_gb", sub.max_dense_gb >= 0, ">= 0", sub.max_dense_gb),
        ("lora.rank", lo.rank >= 0, ">= 0 (0: match subspace.d)", lo.rank),
        ("lora.n_frequency", lo.n_frequency >= 1, ">= 1", lo.n_frequency),
        ("lora.alpha", lo.alpha >= 0, ">= 0 (0: the rank)", lo.alpha),
        ("checkpoint.every", ck.every >= 0, ">= 0 (0: only at the end)", ck.every),
        ("checkpoint.keep", ck.keep >= 0, ">= 0 (0: no checkpoints)", ck.keep),
        ("dist.check_replicas_every", ds.check_replicas_every >= 0, ">= 0", ds.check_replicas_every),
        ("dist.timeout_s", ds.timeout_s > 0, "> 0", ds.timeout_s),
        ("local_sgd.every", ls.every >= 1, ">= 1 (1: synchronise after every step)", ls.every),
        ("local_sgd.outer_lr", ls.outer_lr > 0, "> 0", ls.outer_lr),
        ("local_sgd.outer_momentum", 0 <= ls.outer_momentum < 1, "in [0, 1)", ls.outer_momentum),
        ("streaming.fragments", st.fragments >= 1, ">= 1", st.fragments),
        ("streaming.fragments", ds.strategy != "streaming_diloco" or ls.every % max(st.fragments, 1) == 0,
         f"a divisor of local_sgd.every = {ls.every} (the fragments' synchronisations are spaced H / fragments apart)",
         st.fragments),
        ("streaming.delay", st.delay >= 0 and (ds.strategy != "streaming_diloco"
                                               or st.delay < ls.every // max(st.fragments, 1)),
         f"in [0, local_sgd.every / streaming.fragments) = [0, {ls.every // max(st.fragments, 1)}) (a fragment's "
         f"all-reduce must land before the next fragment's starts)", st.delay),
        ("streaming.mix", 0 <= st.mix < 1, "in [0, 1) (0: a fragment becomes the global one)", st.mix),
        ("sparse_loco.every", sl.every >= 1, ">= 1", sl.every),
        ("sparse_loco.density", 0 < sl.density <= 1, "in (0, 1]", sl.density),
        ("sparse_loco.chunk", sl.chunk >= 1, ">= 1", sl.chunk),
        ("sparse_loco.density", sl.density * sl.chunk >= 1,
         f"at least 1 / sparse_loco.chunk = {1 / max(sl.chunk, 1):.3g} (one entry per chunk)", sl.density),
        ("sparse_loco.value_bits", sl.value_bits in (1, 2, 4, 8, 32), "one of 1, 2, 4, 8, 32", sl.value_bits),
        ("sparse_loco.error_decay", 0 <= sl.error_decay <= 1, "in [0, 1]", sl.error_decay),
        ("sparse_loco.outer_lr", sl.outer_lr > 0, "> 0", sl.outer_lr),
        ("demo.chunk", dm.chunk >= 1, ">= 1", dm.chunk),
        ("demo.topk", 1 <= dm.topk <= dm.chunk, f"in [1, demo.chunk = {dm.chunk}]", dm.topk),
        ("demo.decay", 0 <= dm.decay < 1, "in [0, 1)", dm.decay),
        ("subspace.redraw_every", sub.redraw_every >= 0, ">= 0 (0: never)", sub.redraw_every),
        ("subspace.redraw_every", sub.redraw_every == 0 or t.method == "subspace",
         f"0 unless train.method = 'subspace' (this run's is {t.method!r})", sub.redraw_every),
        ("powersgd.rank", ps.rank >= 1, ">= 1", ps.rank),
        ("powersgd.start_iter", ps.start_iter >= 2,
         ">= 2 (PowerSGD's error feedback and warm start need DDP's first two steps plain)", ps.start_iter),
    ]
    w = cfg.sweep
    checks += [
        ("data.classes", all(0 <= c <= 9 for c in cfg.data.classes), "a list of labels 0..9", cfg.data.classes),
        ("sweep.d", all(v >= 1 for v in w.d), "a list of d >= 1", w.d),
        ("sweep.d_min", w.d_min >= 1, ">= 1", w.d_min),
        ("sweep.d_max", w.d_max >= w.d_min, ">= sweep.d_min", w.d_max),
        ("sweep.points", w.points >= 1, ">= 1", w.points),
        ("sweep.seeds", w.seeds >= 1, ">= 1", w.seeds),
        ("sweep.threshold", 0 < w.threshold <= 1, "in (0, 1]", w.threshold),
        ("sweep.full_lr", w.full_lr > 0, "> 0", w.full_lr),
        ("sweep.lora_ranks", all(r >= 1 for r in w.lora_ranks), "a list of ranks >= 1", w.lora_ranks),
        ("sweep.lora_lr", w.lora_lr > 0, "> 0", w.lora_lr),
        ("sweep.width", w.width > 0, "> 0 (the bracket's relative width, e.g. 0.1)", w.width),
        ("sweep.fit_window", w.fit_window > 1, "> 1 (a factor of d either side of the crossing, e.g. 1.5)",
         w.fit_window),
        ("sweep.lora_min", w.lora_min >= 1, ">= 1", w.lora_min),
        ("sweep.lora_max", w.lora_max == 0 or w.lora_max >= w.lora_min, "0 (no LoRA search) or >= sweep.lora_min",
         w.lora_max),
    ]
    for key, ok, rule, value in checks:
        if not ok:
            raise ConfigError(f"{key} must be {rule}; got {value!r}")
    _check_strategy_sections(cfg)


def flat(raw: dict) -> dict:
    """{'train.lr': 0.03, ...} of a nested config dict (``to_dict``'s form; top-level keys left out)."""
    return {f"{s}.{k}": v for s, sec in raw.items() if isinstance(sec, dict) for k, v in sec.items()}


def idle_sections(keys: dict) -> set[str]:
    """The sections of APPLIES_WHEN that do not apply to the flat config {'section.key': value}."""
    return {section for section, (key, values) in APPLIES_WHEN.items() if keys.get(key) not in values}


def _check_strategy_sections(cfg: Config) -> None:
    """DDP's hook set while another strategy runs would change nothing: refused, naming the setting
    that would make it apply ([powersgd] and [local_sgd] stay inert until their strategy runs)."""
    keys = flat(to_dict(cfg))
    for section in sorted(idle_sections(keys) & set(REFUSED_WHEN_IDLE)):
        key, (owner, *_) = APPLIES_WHEN[section]
        default, mine = SECTIONS[section](), getattr(cfg, section)
        for f in dataclasses.fields(mine):
            if getattr(mine, f.name) != getattr(default, f.name):
                raise ConfigError(f"{section}.{f.name} = {getattr(mine, f.name)!r} configures {key} = '{owner}', "
                                  f"but this run's {key} is {keys[key]!r}: set {key} = '{owner}', or leave "
                                  f"[{section}] out")


def load_config(path: str | None, overrides: Iterable[str] = ()) -> Config:
    """Read the TOML file at ``path`` (None: defaults), apply overrides, validate."""
    cfg = Config()
    if path is not None:
        cfg.name = Path(path).stem
        try:
            with open(path, "rb") as f:
                raw = _toml().load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        except _toml().TOMLDecodeError as e:
            raise ConfigError(f"invalid TOML in {path}: {e}") from e
        for key, value in _flatten(raw):
            _set(cfg, key, value, f" in {path}")
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, f" in --set {text!r}")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """Nested, JSON-serialisable dict of ``cfg``."""
    return dataclasses.asdict(cfg)


def config_hash(cfg: Config) -> str:
    """First 16 hex chars of the sha256 of the canonical JSON of ``to_dict(cfg)``."""
    canon = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def add_config_args(parser: argparse.ArgumentParser, out: str = "runs/<config name>-<YYYYmmdd-HHMMSS>") -> None:
    """Add ``--config``, ``--set KEY=VALUE`` (repeatable) and ``--out`` (its default folder named in the
    help as `out`) to ``parser``."""
    parser.add_argument("--config", metavar="PATH", default=None, help="TOML config file")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", dest="overrides",
                        default=[], help="override a config value, e.g. subspace.d=1000")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help=f"output directory (default {out})")


def timestamped_dir(name: str) -> str:
    """``runs/<name>-<YYYYmmdd-HHMMSS>``: the default --out of every entry point."""
    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
