"""Benchmarks measured in one run on this machine; every figure beside the machine it came from.

    python -m distid.experiments.bench [--quick] [--out DIR]     everything: kernels and 1-rank steps here, then
                                                   torchrun children for N-rank steps and collectives
    python -m distid.experiments.bench steps [--models mlp]      one or more sections (comma-separated) in this
    torchrun --nproc_per_node=4 -m distid.experiments.bench steps,collectives      process group

Sections: kernels (projection P·d and Pᵀ·g against a copy of D floats, bytes per parameter), memory
(peak of one forward + backward at D = 10⁸: full, subspace with θ whole, θ layer by layer), steps (full / subspace /
LoRA step time as a ratio to full), collectives (hand ring against the backend's all-reduce, α–β
fit), interface (all-reduce, all-gather, reduce-scatter and broadcast of 16 MiB: the wire figure
against the loopback interface's byte counters, at 2 and 4 ranks; --quick: at 2), scaling (the α–β MODEL projected
to 8…4,096 GPUs). Writes bench.json and bench.md to --out.
Time it on a quiet machine (no other timed job beside it); the load average at start and end is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch.distributed as dist

from distid import runtime
from distid.experiments.bench import collectives, interface, kernels, memory, report, scaling, steps, targets
from distid.experiments.bench.timing import load
from distid.config import timestamped_dir

SECTIONS = ("kernels", "memory", "steps", "collectives", "interface", "scaling")
INTERFACE_RANKS = (2, 4)
DEFAULT_ALPHA_S = 50e-6  # α for `scaling` alone, without a collectives fit to take it from


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distid.experiments.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="all", help="'all' or sections, comma-separated: " + ",".join(SECTIONS))
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: checks it runs (CI), times nothing")
    p.add_argument("--out", default=None, help="folder for bench.json and bench.md (default runs/bench-<time>)")
    p.add_argument("--d", "--dim", dest="d", type=int, default=750, help="subspace dimension of the step benchmark")
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--models", default=None, help="step benchmark models (default mlp,mlp_wide; quick: mlp)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 1)")
    p.add_argument("--budget", type=float, default=None, help="seconds per variant per round (default 0.4)")
    p.add_argument("--steps", type=int, default=None, help="(old flag) steps per variant per round: budget from it")
    p.add_argument("--ranks", type=int, default=None, help="'all': world size of the N-rank steps (default 4; quick 2)")
    p.add_argument("--collective-ranks", default=None, help="'all': world sizes for collectives (default 2,3,4)")
    p.add_argument("--max-gb", type=float, default=None, help="memory limit per kernel case (default 5; quick 0.2)")
    a = p.parse_args(argv)
    q = a.quick
    a.models = (a.models or ("mlp" if q else "mlp,mlp_wide")).split(",")
    a.rounds = a.rounds or (1 if q else 5)
    a.budget = a.budget if a.budget is not None else (0.003 * a.steps if a.steps else (0.02 if q else 0.4))
    a.ranks = a.ranks or (2 if q else 4)
    a.collective_ranks = [int(x) for x in (a.collective_ranks or ("2" if q else "2,3,4")).split(",")]
    a.max_gb = a.max_gb or (0.2 if q else 5.0)
    wanted = SECTIONS if a.what == "all" else a.what.split(",")
    bad = [w for w in wanted if w not in SECTIONS]
    if bad:
        p.error(f"unknown section {bad[0]!r}; choose 'all' or from {', '.join(SECTIONS)}")
    a.sections = list(wanted)
    return a


def run_here(a, sections: list[str]) -> dict:
    """The sections that run in this process group (any world size)."""
    out: dict = {}
    if "kernels" in sections:
        runtime.print0("kernels")
        out["kernels"] = kernels.bench_kernels(runtime.device(), a.quick, a.max_gb, 2 * a.budget)
    if "memory" in sections and (not dist.is_initialized() or dist.get_rank() == 0):  # own children: once
        runtime.print0("memory")
        out["memory"] = memory.bench_memory(a.quick)
    if "steps" in sections:
        out["steps"] = steps.bench_steps(a.models, a.d, a.global_batch, a.rounds, a.budget)
    if "collectives" in sections:
        runtime.print0("collectives")
        c = collectives.bench_collectives(a.quick, 2 if a.quick else 3)
        out["collectives"] = dict(rows=c["rows"], fit=fits(c["rows"]))
    if "interface" in sections:
        runtime.print0("interface")
        out["interface"] = interface.measure(interface.SIZE // (16 if a.quick else 1))
    return out


def fits(rows: list[dict]) -> dict:
    return {k: collectives.fit_alpha_beta(rows, f"{k}_ms") for k in collectives.IMPLS}


def spawn(n: int, sections: list[str], a) -> dict:
    """Run `sections` on n ranks under torchrun; its rank 0's bench.json."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "distid.experiments.bench", ",".join(sections), "--out", tmp, "--dim", str(a.d),
               "--global-batch", str(a.global_batch), "--models", ",".join(a.models),
               "--rounds", str(a.rounds), "--budget", str(a.budget)] + (["--quick"] if a.quick else [])
        runtime.print0(f"torchrun: {n} ranks: {','.join(sections)}")
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        return json.loads((Path(tmp) / "bench.json").read_text())


def run_children(a, result: dict) -> dict:
    """N-rank steps and every collective world size, each as a torchrun child, merged into result."""
    rows, result["interface"] = [], []
    at = (a.ranks,) if a.quick else INTERFACE_RANKS  # quick: the interface check runs once, beside the steps
    for n in sorted({a.ranks, *a.collective_ranks, *at}):
        which = (["steps"] if n == a.ranks else []) + (["collectives"] if n in a.collective_ranks else []) + \
            (["interface"] if n in at else [])
        child = spawn(n, which, a)
        result["steps"] += child.get("steps", [])
        rows += child.get("collectives", {}).get("rows", [])
        result["interface"] += child.get("interface", [])
    result["collectives"] = dict(rows=rows, fit=fits(rows))
    return result


def main(argv=None) -> int:
    a = parse(argv)
    start = load()
    rank, _ = runtime.init()
    mach = runtime.machine()
    result = run_here(a, ["kernels", "memory", "steps"] if a.what == "all" else a.sections)
    runtime.shutdown()  # before the children form their own groups
    if a.what == "all":
        result = run_children(a, result)
    if "scaling" in a.sections:
        fit = result.get("collectives", {}).get("fit", {}).get("ring")
        alpha, source = (fit["alpha_us"] / 1e6, "ring fit, this run") if fit else (DEFAULT_ALPHA_S, "default")
        result["scaling"] = scaling.project(alpha, source)
    result = dict(machine=mach, load=dict(start=start, end=load()), quick=a.quick, **result)
    result["targets"] = targets.check(result)
    if rank == 0:
        out = Path(a.out or timestamped_dir("bench"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=2))
        md = report.to_markdown(result)
        (out / "bench.md").write_text(md)
        print(md + f"\nwrote {out}/bench.json, bench.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
