"""What budget does this task need? The subspace d and the LoRA rank that reach 90 % of full
training, with what each costs per step.

    python -m distid.probe --config configs/mnist_fc_id.toml [--set …] [--out DIR]
    torchrun --standalone --nproc_per_node=2 -m distid.probe --config configs/mnist_fc_id.toml

On the config's model and data (any model the config accepts, the Hugging Face ones included),
with sweep.seeds seeds, as one bisection sweep (bisect_sweep.py, sweep.search = "bisect"):
full training (the baseline); a bisection on log d in [sweep.d_min, sweep.d_max] for the subspace
(subspace.projection); a bisection over LoRA ranks in [sweep.lora_min, sweep.lora_max] on
lora.targets (lora_max 0: the largest rank every target takes, at most MAX_RANK) — each to
t = sweep.threshold × the measured baseline (sweep.bisect_on picks another target). The
recommendation for each is the largest of the seeds' first budgets that reached t, and every seed
is trained at it (the check, in the same run). The table: per method the budget, the trainable
numbers T, the wire bytes one rank sends per step under DDP at N = 4 and 64 ranks (a ring
all-reduce of T float32 gradients: 2(N−1)/N · 4T), the median step time measured here, and each
seed's accuracy at the budget. Points are kept in OUT/sweep.json (default runs/probe-<config>) and
a rerun reuses them.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from distid import lora, runtime
from distid.config import Config
from distid.experiments.intrinsic import bisect, bisect_sweep, points
from distid.experiments.intrinsic.report import finish
from distid.primitives.formulas import wire_factor
from distid.run import cli

MAX_RANK = 64  # the LoRA search's top rank when sweep.lora_max = 0
RANKS = (4, 64)  # the DDP world sizes whose wire bytes the table gives


def prepare(cfg: Config) -> Config:
    """The config as the probe runs it: a bisection, every point on all ranks, LoRA searched."""
    from distid.models import build_model

    cfg.sweep.search, cfg.sweep.mode = "bisect", "ddp"
    if not cfg.sweep.lora_max:
        top = lora.max_rank(build_model(cfg.model.name), lora.parse_targets(cfg.lora.targets))
        cfg.sweep.lora_max = max(cfg.sweep.lora_min, min(top, MAX_RANK))
    return cfg


def target(cfg: Config, records: list[dict]) -> float:
    """The accuracy the probe asks for: the first of bisect_sweep.targets, from the mean baseline."""
    return bisect_sweep.targets(cfg, statistics.fmean(r["test_accuracy"] for r in records if r["kind"] == "full"))[0]


def recommended(cfg: Config, records: list[dict], kind: str) -> int | None:
    """The largest of the seeds' first budgets (bracket tops) that reached the target; None if a seed never did."""
    t = target(cfg, records)
    _, lo, hi, width = next((r for r in bisect_sweep.searched(cfg) if r[0] == kind))
    tops = [bisect.bracket(bisect_sweep.curve_of(records, kind, sd), t, lo, hi, width).hi for sd in points.seeds_of(cfg)]
    return None if None in tops else max(tops)


def checks(cfg: Config, records: list[dict]) -> list[dict]:
    """The points still missing at each recommendation: every seed is trained at it."""
    have = {points.key(r) for r in records}
    todo = []
    for kind in ("subspace", "lora"):
        x = recommended(cfg, records, kind)
        todo += [dict(kind=kind, x=x, seed=sd) for sd in points.seeds_of(cfg)
                 if x is not None and points.key(dict(kind=kind, x=x, seed=sd)) not in have]
    return todo


def table(cfg: Config, records: list[dict], n: int) -> str:
    """The markdown table of the probe's recommendations."""
    t = target(cfg, records)
    head = (f"| method | budget | trainable | accuracy per seed (target {t:.4f}) | wire B/step, DDP "
            + " | ".join(f"{k} ranks" for k in RANKS) + f" | step time here ({n} rank{'s' * (n > 1)}) |")
    lines = [head, "|---|---:|---:|---|" + "---:|" * (len(RANKS) + 1)]
    for kind, label in (("full", "full training"), ("subspace", f"subspace ({cfg.subspace.projection})"),
                        ("lora", f"LoRA on {cfg.lora.targets or 'every layer'}")):
        x = 0 if kind == "full" else recommended(cfg, records, kind)
        if x is None:
            lines.append(f"| {label} | not reached in the range searched | | | " + "| " * (len(RANKS) + 1))
            continue
        at = [r for r in records if r["kind"] == kind and r["x"] == x]
        trainable = at[0]["trainable_params"]
        accs = ", ".join(f"{r['test_accuracy']:.4f}" + (" ✓" if r["test_accuracy"] >= t else " ✗")
                         for r in sorted(at, key=lambda r: r["seed"]))
        wire = " | ".join(f"{wire_factor('all_reduce', k) * 4 * trainable:,.0f}" for k in RANKS)
        times = [r["step_time_s"] for r in at if r["step_time_s"]]
        ms = f"{statistics.median(times) * 1e3:.2f} ms" if times else "—"
        budget = "—" if kind == "full" else (f"d = {x:,}" if kind == "subspace" else f"r = {x}")
        lines.append(f"| {label} | {budget} | {trainable:,} | {accs} | {wire} | {ms} |")
    return "\n".join(lines)


def probe(args, cfg: Config) -> None:
    rank, n = runtime.init(cfg.dist.timeout_s, cfg.dist.backend)
    cfg = prepare(cfg)
    out = Path(args.out or f"runs/probe-{cfg.name}")
    points.check_range(cfg)
    points.check_lora_ranks(args, cfg, [cfg.sweep.lora_min, cfg.sweep.lora_max])
    if rank == 0:
        print(f"probe {cfg.name}: {cfg.model.name} on {cfg.data.dataset}, {cfg.sweep.seeds} seed(s), {n} rank(s): "
              f"subspace d in [{cfg.sweep.d_min:,}, {cfg.sweep.d_max:,}], LoRA r in "
              f"[{cfg.sweep.lora_min}, {cfg.sweep.lora_max}]", flush=True)
    t0 = time.perf_counter()
    records, trained = bisect_sweep.run_bisect(args, cfg, out, rank, n, then=lambda recs: checks(cfg, recs))
    if rank == 0:
        md = finish(cfg, out, records, n, t0, trained, echo=False).splitlines()
        first = next(i for i, line in enumerate(md) if line.startswith("Baseline ("))
        last = next(i for i, line in enumerate(md) if line.startswith("Each seed's d_int"))
        text = ("\n".join(md[first:last + 1]) + f"\n\n## Recommended budgets — {cfg.model.name} on {cfg.data.dataset}\n\n"
                f"{table(cfg, records, n)}\n\n"
                f"Target: {cfg.sweep.threshold:.0%} of "
                f"{'1.0' if cfg.sweep.bisect_on == 'fixed_1.0' else 'the measured baseline'}; a budget is the largest of the "
                f"seeds' first budgets reaching it, and every seed was trained there (✓: reached). "
                f"{trained} points trained in {time.perf_counter() - t0:.0f} s "
                f"({runtime.machine()['cpu']}, {n} rank(s)); every point: sweep.md beside this file.\n")
        (out / "probe.md").write_text(text)
        print(text + f"\nwrote {out}/probe.md, sweep.md, sweep.json", flush=True)


def main(argv=None) -> int:
    def add_args(p):
        p.add_argument("--redo", action="store_true", help="train every point again, ignoring OUT/sweep.json")

    return cli.main(argv, "python -m distid.probe", __doc__, probe, add_args, join=False,
                    out="runs/probe-<config name> (a rerun reuses its finished points)")


if __name__ == "__main__":
    sys.exit(main())
