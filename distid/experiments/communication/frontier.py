"""The communication frontier: test accuracy against bytes per step for every way distid knows to
shrink DDP's all-reduce, measured side by side in one run.

    torchrun --nproc_per_node=4 -m distid.experiments.communication.frontier --config configs/mnist_frontier.toml [--seeds 0,1,2]

Cells: full DDP; full DDP with PyTorch's fp16 and bf16 compression hooks and with PowerSGD at
several ranks; LoRA at several ranks; the subspace (Fastfood) at several d; PEFT's VeRA, FourierFT
and Uni-LoRA (DDP over the PEFT-wrapped model); and the other axis, syncing less often: DiLoCo
(`dist.strategy = "local_sgd"`, H steps between synchronisations, outer Nesterov step) for full
training, the subspace and LoRA; the field's low-communication methods on full training — DeMo
(`demo`, at several k), SparseLoCo (`sparse_loco`, at several densities), Streaming DiLoCo
(`streaming_diloco`, at several fragment counts) — and subspaces re-drawn every K steps (under DDP
at several d and K, and with local steps). Each cell is `distid.train.train` with a few keys
changed — same data, global batch, steps and seeds — and its bytes are wire bytes: what a rank sends
for the payloads the ledger measured at the dispatcher (PowerSGD's P and Q all-reduces included),
under the ring algorithms (all-reduce 2(N−1)/N of the payload; an all-gather (N−1) times a rank's
message). Its state per rank is what the run holds to train, measured (parameters, gradients,
optimizer, buffers, the strategy's own tensors). Bytes to a target accuracy (a fraction of full
DDP's): set-up + warm-up (PowerSGD's plain steps) + steps × bytes/step (with synchronisations
between steps: those the ledger had booked by then), at the first evaluation (train.eval_every;
with local steps the first synchronisation at or after it) whose seed-mean accuracy reaches it. Time to a target on named links is a model (experiments/communication/links.py);
--shaped puts the times measured on shaped networks (experiments/communication/shaped.py) beside it.
Writes frontier.json, frontier.md, frontier.png and links.png to --out; a cell already in --out with the same
config, world size and code (its summary.json) is reused, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from distid import runtime
from distid.config import METHOD_LR, ConfigError, config_hash, load_config, timestamped_dir
from distid.data import ShardedLoader
from distid.data.datasets import load_split
from distid.experiments.communication import links
from distid.experiments.communication.report import plot, to_markdown
from distid.observe.summary import Summary
from distid.run import cli
from distid.train import train_logged, train_step
from distid.observe.ledger import CommLedger
from distid.run.build import build, make_optimizer
from distid.strategies import choose, hooks, local_sgd, sparse_loco, streaming_diloco
from distid.run import redraw

FAMILIES = ("DDP", "DDP + fp16/bf16", "DDP + PowerSGD", "LoRA", "subspace", "PEFT", "DiLoCo", "subspace + DiLoCo",
            "LoRA + DiLoCo", "DeMo", "SparseLoCo", "Streaming DiLoCo", "subspace, re-drawn")
PEFT_NAMES = {"vera": "VeRA", "fourierft": "FourierFT", "unilora": "Uni-LoRA"}


@dataclass(frozen=True)
class Cell:
    family: str
    name: str
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        return self.name.replace(" + ", "-").replace(" ", "-").replace("=", "")


def cells(args) -> list[Cell]:
    """Every cell of the frontier, in the order of FAMILIES."""
    full = ("train.method=full", f"train.lr={args.lr_full}")
    ddp = hooks.overrides("none")
    out = [Cell("DDP", "DDP", (*full, *ddp))]
    out += [Cell("DDP + fp16/bf16", f"DDP + {h}", (*full, *hooks.overrides(h))) for h in ("fp16", "bf16")]
    out += [Cell("DDP + PowerSGD", f"DDP + PowerSGD r={r}",
                 (*full, *hooks.overrides("powersgd", r))) for r in args.powersgd_ranks]
    out += [Cell("LoRA", f"LoRA r={r}", ("train.method=lora", f"lora.rank={r}", f"train.lr={args.lr_lora}", *ddp))
            for r in args.lora_ranks]
    out += [Cell("subspace", f"subspace d={d}", ("train.method=subspace", "subspace.projection=fastfood",
                                                 f"subspace.d={d}", f"train.lr={args.lr_subspace}", *ddp))
            for d in args.dims]
    out += [Cell("PEFT", PEFT_NAMES[m] + (f" d={args.unilora_d}" if m == "unilora" else ""),
                 (f"train.method={m}", f"train.lr={getattr(args, 'lr_' + m)}", f"subspace.d={args.unilora_d}", *ddp))
            for m in args.peft]
    diloco = lambda h: (*hooks.overrides("none"), *local_sgd.overrides(h))  # no hook: the strategy is local_sgd
    out += [Cell("DiLoCo", f"DiLoCo H={h}", (*full, *diloco(h))) for h in args.diloco_h]
    out += [Cell("subspace + DiLoCo", f"subspace d={d} H={h}", ("train.method=subspace", "subspace.projection=fastfood",
                 f"subspace.d={d}", f"train.lr={args.lr_subspace}", *diloco(h)))
            for d in args.diloco_dims for h in args.diloco_dims_h]
    out += [Cell("LoRA + DiLoCo", f"LoRA r={r} H={h}", ("train.method=lora", f"lora.rank={r}",
                 f"train.lr={args.lr_lora}", *diloco(h))) for r in args.diloco_lora_ranks for h in args.diloco_lora_h]
    return out + field_cells(args, full)


def field_cells(args, full: tuple) -> list[Cell]:
    """The field's low-communication methods on full training, and subspaces re-drawn every K steps."""
    out = [Cell("DeMo", f"DeMo k={k}", ("train.method=full", "train.optimizer=sgd", f"train.lr={args.lr_demo}",
                                         "dist.strategy=demo", f"demo.topk={k}")) for k in args.demo_topk]
    out += [Cell("SparseLoCo", f"SparseLoCo {q:g}% H={args.sparse_h}",
                 (*full, *sparse_loco.overrides(args.sparse_h, q / 100, args.sparse_outer_lr)))
            for q in args.sparse_density]
    out += [Cell("Streaming DiLoCo", f"Streaming DiLoCo H={args.streaming_h} P={f}",
                 (*full, *streaming_diloco.overrides(args.streaming_h, f, args.streaming_delay)))
            for f in args.streaming_fragments]
    sub = lambda d: ("train.method=subspace", "subspace.projection=fastfood", f"subspace.d={d}",
                     f"train.lr={args.lr_subspace}")
    out += [Cell("subspace, re-drawn", f"subspace d={d} K={k}", (*sub(d), *hooks.overrides("none"),
                                                                 f"subspace.redraw_every={k}"))
            for d in args.redraw_dims for k in args.redraw_k]
    out += [Cell("subspace, re-drawn", f"subspace d={d} H={h} K={k}", (*sub(d), *hooks.overrides("none"),
                 *local_sgd.overrides(h), f"subspace.redraw_every={k}")) for d, h, k in args.redraw_local]
    return out


KEEP = ("trainable_params", "lora_rank", "comm_wire_formula", "comm_calls_per_step", "comm_steps_warmup",
        "steps", "test_accuracy", "eval_curve", "step_time_s", "wall_time_s", "sync_period", "state_bytes",
        "strategy_state_bytes")


def run_seed(args, cell: Cell, seed: int, out: Path) -> dict:
    """One training run of `cell` (reused from out/ when its summary.json is `reusable`)."""
    cfg = load_config(args.config, [*args.overrides, *cell.overrides, f"train.seed={seed}"])
    where = out / cell.slug / f"seed{seed}"
    cached = _cached(where / "summary.json", config_hash(cfg))
    s = cached or train_logged(cfg, where)
    runtime.print0(f"{cell.name:<28} seed {seed}: test acc {s.test_accuracy:.4f}, "
                   f"{s.wire_per_step:>11,.0f} B sent/step  ({where}"
                   f"{'; reused: same config, world size and code' if cached else ''})")
    return seed_record(s, seed)


def seed_record(s: Summary, seed: int) -> dict:
    """What the frontier keeps of one run's summary: its bytes (per step, set-up, warm-up, per
    synchronisation and by each evaluation), its collectives per step and the KEEP fields."""
    calls = s.comm_calls_per_step
    if s.comm_syncs:  # the steps between call nothing; the synchronisations' calls spread over the steps
        calls = {op: c * s.comm_syncs / s.steps for op, c in (s.comm_calls_per_sync or {}).items()}
    return dict(seed=seed, wire_bytes_per_step=s.wire_per_step,
                wire_setup_bytes=s.comm_wire_bytes_setup["total"], wire_warmup_bytes=s.comm_wire_bytes_warmup["total"],
                wire_bytes_per_sync=(s.comm_wire_bytes_per_sync or {}).get("total", 0.0),
                wire_sync_by_eval=dict(s.comm_wire_sync_by_eval or []),
                **{k: getattr(s, k) for k in KEEP if k != "comm_calls_per_step"}, comm_calls_per_step=calls)


def compute_step_s(cfg, n: int, steps: int = 30, warm: int = 5) -> float:
    """Seconds of one optimizer step of `cfg`'s model (plain, LoRA, PEFT or subspace) on one rank's
    batch (global_batch / n), with the cell's strategy as on a world of one: its own computation
    (DeMo's DCTs and top-k; a synchronisation's compression, copies and outer step) counts, no
    collective runs. The median of `steps`; with synchronisations between steps, the mean over a
    whole number of periods (at least `steps`). What a step computes, for the link model (a step timed among 4 ranks
    sharing 2 cores also waits for its peers). Call it in a process without a process group."""
    model = build(cfg)
    strategy = choose(cfg, 1, torch.device("cpu"))
    net = strategy.wrap(model)
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad], strategy)
    period = strategy.period
    steps = steps if period == 1 else period * -(-steps // period)
    strategy.attach(opt, CommLedger(1), 0, warm + steps + 1)  # no "last step" inside the timed ones
    redraw.attach(cfg, model, strategy, opt, CommLedger(1), 0, warm + steps + 1)
    train = load_split(cfg.data.dataset, cfg.data.root, "train", verify=False).only(cfg.data.classes)  # the
    # cell's runs checked the files
    times = []
    for i, (x, y) in zip(range(warm + steps), ShardedLoader(train, cfg.train.global_batch, 0, n, seed=cfg.train.seed)):
        t0 = time.perf_counter()
        train_step(net, opt, x, y)
        if i >= warm:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) if period == 1 else statistics.mean(times)


def fresh_process() -> multiprocessing.context.BaseContext:
    """A context whose processes are forks of a server that has imported torch and this module and
    nothing more (no process group, no threads): a fresh process without a fresh import per cell."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__spec__.name if __spec__ else __name__, "torch._dynamo"])  # distid before
    # torch, as in every entry (distid sets THP_MEM_ALLOC_ENABLE before torch's first allocation)
    return ctx


def measure_compute(args, cell: Cell, out: Path) -> float:
    """compute_step_s of the cell's first seed, timed in a fresh process (`fresh_process`) that rank 0
    starts while the other ranks wait (a world of one: the strategy calls no collective), or read from
    out/<cell>/compute.json when the config, world size and code match, as a cell's runs are; every
    rank's answer."""
    box = [None]
    if dist.get_rank() == 0:
        seed = (args.seeds or [None])[0]
        over = [*args.overrides, "dist.strategy=ddp", *cell.overrides] + ([f"train.seed={seed}"] if seed is not None else [])
        cfg, path = load_config(args.config, over), out / cell.slug / "compute.json"
        key = dict(config_hash=config_hash(cfg), world_size=dist.get_world_size(), code_version=runtime.code_version())
        saved = json.loads(path.read_text()) if path.is_file() else {}
        if {k: saved.get(k) for k in key} != key:
            with fresh_process().Pool(1) as alone:
                seconds = alone.apply(compute_step_s, (cfg, dist.get_world_size()))
            saved = dict(key, compute_step_s=seconds)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(saved))
        box = [saved["compute_step_s"]]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _cached(path: Path, hash_: str) -> Summary | None:
    """Rank 0's summary.json at `path` if it is `reusable`, for every rank."""
    box = [None]
    if dist.get_rank() == 0 and path.exists():
        try:
            s = Summary.load(path)
            box = [s if reusable(s, hash_, dist.get_world_size()) else None]
        except (TypeError, ValueError):  # written by an older distid: train the cell again
            pass
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reusable(s: Summary, hash_: str, world_size: int) -> bool:
    """A finished run stands for this one if its config, world size and code (runtime.code_version) match."""
    return s.config_hash == hash_ and s.world_size == world_size and s.code_version == runtime.code_version()


def cumulative_bytes(seed_run: dict, step: int) -> float:
    """Wire bytes this rank sent by the end of `step` (1-based): set-up, the warm-up steps
    (PowerSGD's plain all-reduces among them) as booked, then bytes/step for each later step; with
    synchronisations between steps (period H > 1), set-up + those done by then, as the ledger booked
    them at that evaluation (`step` is one)."""
    if seed_run.get("sync_period", 1) > 1:  # the synchronisations' bytes by then, booked (all are)
        return seed_run["wire_setup_bytes"] + seed_run["wire_sync_by_eval"][step]
    warm = seed_run["comm_steps_warmup"]
    done_warm = min(step, warm)
    warm_part = seed_run["wire_warmup_bytes"] * done_warm / warm if warm else 0.0
    return seed_run["wire_setup_bytes"] + warm_part + max(step - warm, 0) * seed_run["wire_bytes_per_step"]


def summarize(cell: Cell, seeds: list[dict]) -> dict:
    """Seed means of a cell; its accuracy curve averaged over seeds at each evaluation."""
    curve = [(step, statistics.mean(s["eval_curve"][i][2] for s in seeds))
             for i, (step, _, _) in enumerate(seeds[0]["eval_curve"])]
    accs = [s["test_accuracy"] for s in seeds]
    return dict(cell=cell.name, family=cell.family, trainable_params=seeds[0]["trainable_params"],
                sync_period=seeds[0].get("sync_period", 1),
                wire_bytes_per_step=statistics.mean(s["wire_bytes_per_step"] for s in seeds),
                wire_formula_bytes_per_step=seeds[0]["comm_wire_formula"]["total"],
                calls_per_step=seeds[0]["comm_calls_per_step"], warmup_steps=seeds[0]["comm_steps_warmup"],
                state_bytes=seeds[0]["state_bytes"], strategy_state_bytes=seeds[0]["strategy_state_bytes"] or {},
                test_accuracy=statistics.mean(accs), test_accuracy_min=min(accs), test_accuracy_max=max(accs),
                step_time_s=statistics.mean(s["step_time_s"] or float("nan") for s in seeds),
                train_time_s=statistics.mean((s["step_time_s"] or float("nan")) * s["steps"] for s in seeds),
                curve=curve, seeds=seeds)


def reach(cell: dict, target: float) -> dict | None:
    """First evaluation whose seed-mean accuracy ≥ target: its step and the bytes sent by then."""
    for step, acc in cell["curve"]:
        if acc >= target:
            return dict(step=step, wire_bytes=statistics.mean(cumulative_bytes(s, step) for s in cell["seeds"]))
    return None


def add_targets(rows: list[dict], fractions: list[float]) -> list[dict]:
    """Targets = fractions of full DDP's seed-mean accuracy; each cell gets its bytes to each."""
    base = next(r for r in rows if r["cell"] == "DDP" and "refused" not in r)
    targets = [dict(fraction=f, accuracy=f * base["test_accuracy"]) for f in fractions]
    for r in rows:
        if "refused" not in r:
            r["to_target"] = [reach(r, t["accuracy"]) for t in targets]
    return targets


def _floats(text: str, kind=float) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def add_args(p) -> None:
    p.add_argument("--seeds", type=lambda t: _floats(t, int), default=None,
                   help="comma-separated seeds, every cell trained once per seed (default: train.seed)")
    p.add_argument("--powersgd-ranks", type=lambda t: _floats(t, int), default=[1, 2, 4])
    p.add_argument("--lora-ranks", type=lambda t: _floats(t, int), default=[1, 4, 8],
                   help="LoRA ranks (the MLP's 200→10 layer allows r <= 10)")
    p.add_argument("--dims", type=lambda t: _floats(t, int), default=[250, 1000, 4000], help="subspace d values")
    p.add_argument("--peft", type=lambda t: [m.strip() for m in t.split(",") if m.strip()],
                   default=["vera", "fourierft", "unilora"], help="PEFT methods (VeRA r=256, FourierFT n=1000 "
                   "per layer, Uni-LoRA), through the installed peft; '' for none")
    p.add_argument("--unilora-d", type=int, default=1000, help="Uni-LoRA's trainable vector length (default 1000)")
    p.add_argument("--diloco-h", type=lambda t: _floats(t, int), default=[8, 32, 128],
                   help="full-training DiLoCo cells: their H values")
    p.add_argument("--diloco-dims", type=lambda t: _floats(t, int), default=[1000, 4000])
    p.add_argument("--diloco-dims-h", type=lambda t: _floats(t, int), default=[8, 32],
                   help="the subspace DiLoCo cells: every d of --diloco-dims at every H here")
    p.add_argument("--diloco-lora-ranks", type=lambda t: _floats(t, int), default=[8])
    p.add_argument("--diloco-lora-h", type=lambda t: _floats(t, int), default=[32])
    p.add_argument("--demo-topk", type=lambda t: _floats(t, int), default=[4, 32],
                   help="DeMo cells: DCT components sent per chunk of 64 (64 × 64 blocks of a matrix)")
    p.add_argument("--lr-demo", type=float, default=3e-3, help="DeMo's sign-descent rate (SGD, no momentum: DeMo's own)")
    p.add_argument("--sparse-density", type=_floats, default=[1, 3],
                   help="SparseLoCo cells: the percent of each chunk's entries sent (2-bit values)")
    p.add_argument("--sparse-h", type=int, default=32, help="SparseLoCo's H")
    p.add_argument("--sparse-outer-lr", type=float, default=2.0,
                   help="SparseLoCo's outer rate (2.0 beat 1.0 at 1 %% and 3 %% density, one seed, one epoch)")
    p.add_argument("--streaming-fragments", type=lambda t: _floats(t, int), default=[2, 4],
                   help="Streaming DiLoCo cells: fragments, each synchronised once every H steps, staggered")
    p.add_argument("--streaming-h", type=int, default=32)
    p.add_argument("--streaming-delay", type=int, default=1, help="steps a fragment's all-reduce overlaps")
    p.add_argument("--redraw-dims", type=lambda t: _floats(t, int), default=[1000, 4000],
                   help="re-drawn subspace cells (under DDP): every d here at every K of --redraw-k")
    p.add_argument("--redraw-k", type=lambda t: _floats(t, int), default=[100, 200])
    p.add_argument("--redraw-local", type=lambda t: [tuple(int(v) for v in c.split(":")) for c in t.split(",") if c],
                   default=[(4000, 32, 128)], help="re-drawn subspaces with local steps: d:H:K,...")
    p.add_argument("--links-workers", type=lambda t: _floats(t, int), default=[4, 64],
                   help="worker counts of the time-to-accuracy model on named links (experiments/communication/links.py)")
    p.add_argument("--shaped", default="", metavar="JSON[,JSON]",
                   help="shaped.json files of `python -m distid.experiments.communication.shaped` (one per network), "
                        "comma-separated: their measured times to accuracy beside the link model's")
    p.add_argument("--targets", type=_floats, default=[0.95, 0.90],
                   help="target accuracies as fractions of full DDP's (default 0.95,0.90)")
    for method, lr in METHOD_LR.items():
        p.add_argument(f"--lr-{method}", type=float, default=lr, help=f"Adam learning rate of {method} (default {lr})")


def frontier(args, cfg, out: Path) -> tuple[list[dict], list[dict]]:
    """Train every cell for every seed; returns (rows, targets)."""
    rows = []
    for cell in cells(args):
        try:
            seeds = [run_seed(args, cell, seed, out) for seed in args.seeds or [cfg.train.seed]]
        except (ConfigError, MemoryError) as e:
            runtime.print0(f"{cell.name}: refused — {e}")
            rows.append(dict(cell=cell.name, family=cell.family, refused=str(e)))
            continue
        rows.append(dict(summarize(cell, seeds), compute_step_s=measure_compute(args, cell, out)))
    return rows, add_targets(rows, args.targets)


def load_shaped(paths: str) -> list[dict]:
    """The shaped.json files (experiments/communication/shaped.py) named in `paths`, comma-separated;
    ConfigError naming one that cannot be read."""
    out = []
    for path in (p.strip() for p in paths.split(",") if p.strip()):
        try:
            one = json.loads(Path(path).read_text())
            missing = [k for k in ("meta", "fits", "rows", "targets") if k not in one]
            if missing:
                raise ValueError(f"no {', '.join(missing)}: not a shaped.json")
        except (OSError, ValueError) as e:
            raise ConfigError(f"--shaped {path}: cannot read it ({e}); write it with python -m "
                              "distid.experiments.communication.shaped --out DIR (DIR/shaped.json)") from None
        out.append(one)
    return out


def main_body(args, cfg) -> None:
    if cfg.train.eval_every < 1:
        raise ConfigError("the frontier needs accuracy curves: set train.eval_every >= 1")
    rank, n = dist.get_rank(), dist.get_world_size()
    if n < 2:
        raise ConfigError("one rank sends nothing; run the frontier under torchrun with 2 or more processes")
    out = Path(args.out or timestamped_dir("frontier"))
    shaped = load_shaped(args.shaped)
    rows, targets = frontier(args, cfg, out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        steps = next((r["seeds"][0]["steps"] for r in rows if "seeds" in r), cfg.train.steps)
        meta = dict(model=cfg.model.name, dataset=cfg.data.dataset, world_size=n, steps=steps,
                    global_batch=cfg.train.global_batch, eval_every=cfg.train.eval_every,
                    seeds=args.seeds or [cfg.train.seed], powersgd=hooks.describe(cfg), machine=runtime.machine(),
                    lr={m: getattr(args, f"lr_{m}") for m in METHOD_LR}, outer=local_sgd.describe(cfg),
                    field=dict(demo_lr=args.lr_demo, sparse_outer_lr=args.sparse_outer_lr,
                               streaming_delay=args.streaming_delay))
        (out / "frontier.json").write_text(json.dumps(dict(meta=meta, targets=targets, cells=rows), indent=2))
        md = to_markdown(rows, targets, meta) + "\n" + links.to_markdown(rows, targets, n, args.links_workers) \
            + (links.measured_markdown(rows, targets, n, shaped) if shaped else "")
        (out / "frontier.md").write_text(md)
        drew = plot(rows, out / "frontier.png", FAMILIES, targets)
        drew = links.plot(rows, targets, n, args.links_workers, out / "links.png", FAMILIES, shaped) and drew
        print(md + f"\nwrote {out}/frontier.json, frontier.md"
              + (", frontier.png, links.png" if drew else " (matplotlib missing: no frontier.png, links.png)")
              + "; each run's own output: <cell>/seed<k>/train.log")


def main(argv=None) -> int:
    return cli.main(argv, "python -m distid.experiments.communication.frontier", __doc__, main_body, add_args,
                    out="runs/frontier-<YYYYmmdd-HHMMSS>")


if __name__ == "__main__":
    sys.exit(main())
