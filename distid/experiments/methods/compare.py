"""Full vs subspace vs LoRA, under DDP and FSDP, measured side by side in one run.

    torchrun --nproc_per_node=4 -m distid.experiments.methods.compare --config configs/mnist_compare.toml [--set train.steps=50]

Every cell of {full, subspace (dense, sparse, fastfood), LoRA} × {DDP, FSDP} trains the config's
model on the same data, seed and steps; LoRA's rank is the one whose trainable count is closest
to subspace.d. Each cell is `distid.train.train` with the config changed in three keys; a cell the
machine or the method refuses (a dense P too large, a dense P under FSDP) is listed with the
reason. Writes compare.json, compare.md and compare.png to --out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from distid import runtime
from distid.config import METHOD_LR, ConfigError, load_config, timestamped_dir
from distid.experiments.plotting import pyplot, save
from distid.run import cli
from distid.train import train_logged

METHODS = [("full", None), ("subspace", "dense"), ("subspace", "sparse"), ("subspace", "fastfood"), ("lora", None)]
STRATEGIES = ("ddp", "fsdp")


def cell_name(method: str, projection: str | None, strategy: str) -> str:
    return f"{method}{'/' + projection if projection else ''} · {strategy}"


def run_cell(args, method: str, projection: str | None, strategy: str, out: Path) -> dict:
    over = [*args.overrides, f"train.method={method}", f"dist.strategy={strategy}",
            f"train.lr={getattr(args, 'lr_' + method)}"] + ([f"subspace.projection={projection}"] if projection else [])
    name = cell_name(method, projection, strategy)
    folder = out / name.replace(" · ", "-").replace("/", "-")
    try:
        s = train_logged(load_config(args.config, over), folder)
    except (ConfigError, MemoryError) as e:
        runtime.print0(f"{name:<24} refused: {e}")
        return dict(cell=name, method=method, projection=projection, strategy=strategy, refused=str(e))
    runtime.print0(f"{name:<24} test acc {s.test_accuracy:.4f}, {s.wire_per_step:>11,.0f} B sent/step, "
                   f"{1e3 * (s.step_time_s or float('nan')):6.2f} ms/step  ({folder}/train.log)")
    keep = ("trainable_params", "total_params", "lora_rank", "comm_wire_bytes_per_step", "comm_wire_formula",
            "comm_payload_bytes_per_step", "comm_payload_formula", "comm_measured_bytes_per_step",
            "peak_rss_mb_per_rank", "state_bytes_per_rank", "step_time_s",
            "flops_per_step", "projection_flops_per_step", "test_accuracy", "train_loss", "steps")
    return dict(cell=name, method=method, projection=projection, strategy=strategy, wire_bytes_per_step=s.wire_per_step,
                **{k: getattr(s, k) for k in keep})


def wire_ratios(cells: list[dict]) -> None:
    """Each cell's `wire_ratio_vs_full_ddp`: its wire bytes per step ÷ full·DDP's (None without full·DDP)."""
    base = next((c for c in cells if c["cell"] == "full · ddp" and "refused" not in c), None)
    full = base["wire_bytes_per_step"] if base else None
    for c in cells:
        if "refused" not in c:
            c["wire_ratio_vs_full_ddp"] = c["wire_bytes_per_step"] / full if full else None


def _ops(figures: dict | None) -> str:
    return ", ".join(f"{op} {b:,.0f}" for op, b in (figures or {}).items() if op != "total") or "0"


def to_markdown(cells: list[dict], meta: dict) -> str:
    lines = [f"# distid compare — {meta['model']} on {meta['dataset']}, {meta['world_size']} ranks ({meta['backend']})\n",
             f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, torch {meta['machine']['torch']}. "
             f"Same data, seed and {meta['steps']} steps of global batch {meta['global_batch']} in every cell; "
             f"subspace d = {meta['d']}, LoRA at the rank closest to d. Bytes are per rank per step. *sent*: what the "
             f"rank sends under the ring algorithms (all-reduce 2(N−1)/N·S, all-gather and reduce-scatter "
             f"(N−1)/N·S of the full array S), for the tensors the ledger saw handed to each collective, beside the "
             f"formula's; the ratio to full·DDP is of these. *handed in*: the tensors themselves (all-gather: this "
             f"rank's 1/N shard), a different figure, never divided by the first. *measured*: what the network "
             f"interface counted (dist.measure_interface; gloo's reduce-scatter is an all-reduce, so FSDP's "
             f"measured bytes exceed the ring figure). MFLOP/step: what torch.utils.flop_counter counts per rank "
             f"(matmul-class ops; it misses sparse products); P MFLOP: the projection's own products, analytic.\n",
             "| cell | trainable | sent B/step by op | formula (sent) | sent ÷ full·DDP's | handed in B/step "
             "| measured on the interface B/step | state MB/rank | peak RSS MB/rank | step ms | MFLOP/step | P MFLOP "
             "| test acc |",
             "|---|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        if "refused" in c:
            lines.append(f"| {c['cell']} | — | refused: {c['refused']} | | | | | | | | | | |")
            continue
        ratio = f"{c['wire_ratio_vs_full_ddp']:.4f}" if c.get("wire_ratio_vs_full_ddp") is not None else "—"
        rank = f" (r={c['lora_rank']})" if c["lora_rank"] else ""
        got = c.get("comm_measured_bytes_per_step")
        measured = f"{got:,.0f}" if got is not None else "—"
        lines.append(
            f"| {c['cell']} | {c['trainable_params']:,}{rank} | {_ops(c['comm_wire_bytes_per_step'])} | "
            f"{_ops(c['comm_wire_formula'])} | {ratio} | {_ops(c['comm_payload_bytes_per_step'])} | {measured} | "
            f"{max(c['state_bytes_per_rank']) / 2**20:.1f} | {max(c['peak_rss_mb_per_rank']):.0f} | "
            f"{1e3 * (c['step_time_s'] or float('nan')):.2f} | {c['flops_per_step'] / 1e6:.1f} | "
            f"{c['projection_flops_per_step'] / 1e6:.1f} | {c['test_accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def chart_title(cells: list[dict]) -> str:
    """compare.png's title: the colours, and the refused cells the chart leaves out."""
    refused = [c["cell"] for c in cells if "refused" in c]
    return "distid compare — blue: DDP, orange: FSDP" + (
        f"; not shown, refused: {', '.join(refused)} (see compare.md)" if refused else "")


def plot(cells: list[dict], path: Path) -> bool:
    """compare.png: bytes/step (log), accuracy, step time, state per rank; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    ok = [c for c in cells if "refused" not in c]
    names = [c["cell"] for c in ok]
    panels = [("bytes sent per step per rank (ring algorithms; log)",
               [max(c["wire_bytes_per_step"], 1) for c in ok], True),
              ("test accuracy", [c["test_accuracy"] for c in ok], False),
              ("step time (ms)", [1e3 * (c["step_time_s"] or 0) for c in ok], False),
              ("model state per rank (MB, log)", [max(c["state_bytes_per_rank"]) / 2**20 for c in ok], True)]
    fig, axes = plt.subplots(1, 4, figsize=(18, 0.45 * len(ok) + 2), sharey=True)
    colors = ["tab:blue" if c["strategy"] == "ddp" else "tab:orange" for c in ok]
    for ax, (title, values, log) in zip(axes, panels):
        ax.barh(names, values, color=colors)
        ax.set_title(title)
        if log:
            log_ticks(ax.xaxis, values)
        ax.invert_yaxis() if ax is axes[0] else None
    fig.suptitle(chart_title(cells))
    fig.tight_layout()
    save(fig, path)
    return True


def log_ticks(axis, values: list[float]) -> None:
    """A log axis labelled without crowding: at 1, 2 and 5 × 10^k when `values` span under two
    decades, at the decades otherwise; no labels on the minor ticks."""
    import matplotlib.ticker as ticker

    axis.axes.set_xscale("log") if axis is axis.axes.xaxis else axis.axes.set_yscale("log")
    if max(values) / min(values) < 100:
        axis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def compare(args, cfg) -> None:
    rank, n = dist.get_rank(), dist.get_world_size()
    out = Path(args.out or timestamped_dir("compare"))
    cells = [run_cell(args, m, p_, s, out) for m, p_ in METHODS for s in STRATEGIES]
    wire_ratios(cells)
    if rank == 0:
        meta = dict(model=cfg.model.name, dataset=cfg.data.dataset, world_size=n, backend=runtime.machine()["backend"],
                    steps=cfg.train.steps, global_batch=cfg.train.global_batch, d=cfg.subspace.d,
                    machine=runtime.machine())
        (out / "compare.json").write_text(json.dumps(dict(meta=meta, cells=cells), indent=2))
        md = to_markdown(cells, meta)
        (out / "compare.md").write_text(md)
        drew = plot(cells, out / "compare.png")
        print("\n" + md + f"\nwrote {out}/compare.json, compare.md"
              + (", compare.png" if drew else " (matplotlib missing: no compare.png)")
              + "; each cell's own output: <cell>/train.log")


def add_args(p) -> None:
    for method in ("full", "subspace", "lora"):
        lr = METHOD_LR[method]
        p.add_argument(f"--lr-{method}", type=float, default=lr, help=f"Adam learning rate of {method} (default {lr})")


def main(argv=None) -> int:
    return cli.main(argv, "python -m distid.experiments.methods.compare", __doc__, compare, add_args,
                    out="runs/compare-<YYYYmmdd-HHMMSS>")


if __name__ == "__main__":
    sys.exit(main())
