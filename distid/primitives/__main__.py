"""Lesson 1 — collectives from send/recv.

    torchrun --nproc_per_node=4 -m distid.primitives [--sizes 1200,120000,1200000] [--reps 5] [--out DIR]

For each size and op, runs the hand-written collective and torch's on the same tensor, checks the
results agree (exact for int64, allclose for float32), checks every rank's measured bytes sent
against the exact formula, and prints one table on rank 0. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from distid import runtime
from distid.config import timestamped_dir
from distid.primitives.check import run_case
from distid.primitives.formulas import OPS

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distid.primitives", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1200,120000,1200000",
                   help="comma-separated element counts (multiples of 12 make ring bytes equal the textbook for N ≤ 4)")
    p.add_argument("--dtypes", default="float32,int64", type=_choices(DTYPES),
                   help=f"comma-separated, from {', '.join(DTYPES)}")
    p.add_argument("--ops", default=",".join(OPS), type=_choices(OPS), help="comma-separated subset of the ops")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per op (median reported)")
    p.add_argument("--out", default=None,
                   help="folder for records.json (every rank's records) and table.txt (default runs/primitives-<time>)")
    return p.parse_args(argv)


def _choices(allowed):
    """argparse type: a comma-separated list whose items must come from `allowed`."""
    def parse(text: str) -> list[str]:
        items = text.split(",")
        bad = [i for i in items if i not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
        return items
    return parse


def _row(recs: list[dict]) -> str:
    r0 = recs[0]
    worst = max(recs, key=lambda r: r["sent"])
    recv = max(recs, key=lambda r: r["received"])
    ok = all(r["ok"] for r in recs)
    mark = "*" if r0["op"] in ("reduce_scatter", "all_gather") and r0["torch_reference"] != r0["op"] else ""
    return (f"{r0['op']:<17} {r0['dtype']:<8} {r0['numel']:>10,} {worst['sent']:>12,} {worst['expected_sent']:>12,}"
            f" {worst['textbook_sent']:>12,.0f} {recv['received']:>12,} {recv['expected_received']:>12,}"
            f" {1e3 * max(r['hand_s'] for r in recs):>8.3f}"
            f" {1e3 * max(r['torch_s'] for r in recs):>8.3f}{mark:1} {'ok' if ok else 'FAIL'}")


def render(everyone: list[list[dict]], reps: int, n: int, passed: int) -> str:
    """The lesson's table, one row per (dtype, size, op), worst rank shown."""
    lines = [f"collectives from send/recv — world size {n}, backend {dist.get_backend()}; bytes sent and"
             f" received per rank (max over ranks), times are medians of {reps} runs",
             f"{'op':<17} {'dtype':<8} {'elements':>10} {'sent':>12} {'formula':>12} {'textbook':>12}"
             f" {'received':>12} {'formula':>12} {'hand ms':>8} {'torch ms':>8}  check"]
    rows = [_row([recs[i] for recs in everyone]) for i in range(len(everyone[0]))]
    lines += rows
    if any("* " in row for row in rows):
        lines.append("* uneven chunks: torch's reduce_scatter/all_gather need equal ones, so the reference"
                     " (and its time) is an all_reduce")
    lines.append(f"{passed} of {len(rows) * n} rank-checks passed")
    return "\n".join(lines)


def count_failures(everyone: list[list[dict]]) -> int:
    """Rank-checks that failed: wrong result, or bytes sent or received ≠ the exact formula."""
    return sum(not r["ok"] or r["sent"] != r["expected_sent"] or r["received"] != r["expected_received"]
               for recs in everyone for r in recs)


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, n = runtime.init()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    records = []
    for dtype_name in args.dtypes:
        for numel in sizes:
            for op in args.ops:
                res, _ = run_case(op, numel, DTYPES[dtype_name], seed=numel, reps=args.reps)
                records.append(res.as_dict())
    everyone: list = [None] * n
    dist.all_gather_object(everyone, records)
    failed = count_failures(everyone)
    if rank == 0:
        table = render(everyone, args.reps, n, len(records) * n - failed)
        print(table)
        out = Path(args.out or timestamped_dir("primitives"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "records.json").write_text(json.dumps(everyone, indent=1))
        (out / "table.txt").write_text(table + "\n")
        print(f"wrote {out}/table.txt (this table) and records.json (every check, every rank)")
    runtime.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
