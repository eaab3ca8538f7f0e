"""frontier.md and frontier.png from the frontier's rows: the table, and accuracy against bytes per
step (log) and against training wall-clock, one marker per family, the Pareto front drawn."""

from __future__ import annotations

from pathlib import Path

from distid.experiments.plotting import label_points, marker_boxes, pyplot, save

MARKERS = "osD^vPXp*<>hd"
COLORS = ("black", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
          "tab:olive", "tab:cyan", "navy", "darkgoldenrod", "crimson")


def pareto(rows: list[dict], key: str) -> list[dict]:
    """Rows no other row beats on both `key` (lower is better) and accuracy (higher), by `key`."""
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (r[key], -r["test_accuracy"])):
        if r["test_accuracy"] > best:
            front.append(r)
            best = r["test_accuracy"]
    return front


def _acc(r: dict) -> str:
    if len(r["seeds"]) == 1:
        return f"{r['test_accuracy']:.4f}"
    return f"{r['test_accuracy']:.4f} [{r['test_accuracy_min']:.4f}–{r['test_accuracy_max']:.4f}]"


def _reached(hit: dict | None) -> str:
    if not hit:
        return "not reached"
    b = hit["wire_bytes"]
    return (f"{b / 1e6:,.1f} MB" if b >= 1e5 else f"{b / 1e3:,.1f} kB") + f" (step {hit['step']})"


def _size(b: float) -> str:
    return f"{b / 1e6:,.2f} MB" if b >= 1e5 else f"{b / 1e3:,.1f} kB"


def _state(r: dict) -> str:
    """State per rank: everything a rank holds to train (parameters, gradients, optimizer, buffers
    such as θ₀ and P, the strategy's own tensors), the strategy's part in brackets."""
    held = r["state_bytes"]
    return _size(held["total"]) + (f" ({_size(held['strategy'])})" if held.get("strategy") else "")


def _calls(r: dict) -> str:
    return ", ".join(f"{c:.4g} {op.replace('_', '-')}" for op, c in sorted(r["calls_per_step"].items())
                     if op != "barrier") or "0"


def redrawn_table(rows: list[dict]) -> str:
    """Accuracy of the subspace at each d: fixed, and re-drawn every K steps (under DDP: same bytes)."""
    ok = {r["cell"]: r for r in rows if "refused" not in r}
    cells = [r for r in ok.values() if r["family"] == "subspace, re-drawn" and " H=" not in r["cell"]]
    dims = sorted({int(r["cell"].split("d=")[1].split()[0]) for r in cells})
    ks = sorted({int(r["cell"].split("K=")[1]) for r in cells})
    if not dims:
        return ""
    lines = ["## Re-drawn subspaces: accuracy against d and K (under DDP, the same bytes per step)\n",
             "| d | fixed (one subspace) | " + " | ".join(f"re-drawn every K = {k}" for k in ks) + " |",
             "|---:|---:|" + "---:|" * len(ks)]
    for d in dims:
        fixed = ok.get(f"subspace d={d}")
        lines.append(f"| {d:,} | {_acc(fixed) if fixed else '—'} | "
                     + " | ".join(_acc(ok[f"subspace d={d} K={k}"]) if f"subspace d={d} K={k}" in ok else "—"
                                  for k in ks) + " |")
    return "\n".join(lines) + "\n"


def _field(meta: dict) -> str:
    """The field's methods' settings, in a sentence (older frontier.json files have none)."""
    f = meta.get("field")
    if not f:
        return ""
    return (f"DeMo: sign descent at lr {f['demo_lr']} (SGD, DeMo's own momentum β 0.999), k DCT components per "
            f"chunk of 64 (64 × 64 blocks of a matrix). SparseLoCo: H local Adam steps, then the error-fed "
            f"pseudo-gradient's top density × 4,096 per chunk of 4,096 at 2 bits, all-gathered, outer lr "
            f"{f['sparse_outer_lr']}. Streaming DiLoCo: DiLoCo's outer step, P fragments in turn every H/P steps, "
            f"each all-reduce started {f['streaming_delay']} step(s) before it is applied. Re-drawn subspaces: θ₀ ← "
            f"θ₀ + P·d and a new P every K steps, Adam's moments of d reset.")


def _peft_lrs(meta: dict) -> str:
    names = {"vera": "VeRA", "fourierft": "FourierFT", "unilora": "Uni-LoRA"}
    return "".join(f", {meta['lr'][m]} ({n})" for m, n in names.items() if m in meta["lr"])


def to_markdown(rows: list[dict], targets: list[dict], meta: dict) -> str:
    m = meta["machine"]
    base = next(r for r in rows if r["cell"] == "DDP")["wire_bytes_per_step"]
    heads = " | ".join(f"to {t['fraction']:.0%} of DDP ({t['accuracy']:.4f})" for t in targets)
    title = f"{meta['model']} on {meta['dataset']}, {meta['world_size']} ranks ({m['backend']})"
    lines = [f"# distid frontier — {title}\n",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Every cell: the same data, global batch "
             f"{meta['global_batch']}, {meta['steps']} steps, seeds {', '.join(map(str, meta['seeds']))}; Adam at lr "
             f"{meta['lr']['full']} (full model, with or without a hook), {meta['lr']['lora']} (LoRA), "
             f"{meta['lr']['subspace']} (subspace, Fastfood)" + _peft_lrs(meta) + ". DiLoCo: H inner steps, "
             f"then the pseudo-gradient averaged and an outer Nesterov step (lr {meta['outer']['lr']}, momentum "
             f"{meta['outer']['momentum']}), every H steps. {meta['powersgd']} " + _field(meta) + "\n",
             "bytes/step: what a rank sends per step under the ring algorithms (all-reduce: 2(N−1)/N of the "
             "tensor handed in), for the payloads the ledger measured once the hook "
             "compresses (PowerSGD's P and Q all-reduces included), beside the formula's. Accuracy: the test set, "
             "seed mean [min–max]. collectives/step: calls per step by op (an all-gather sends (N−1) times a "
             "rank's message: it grows with N). state/rank: what rank 0 holds to train, measured — parameters, "
             "gradients, optimizer state, buffers (θ₀ and P of a subspace) and, in brackets, the strategy's own "
             "tensors (DeMo's momentum, error feedback, θ_start, global copies, outer momenta, receive buffers). "
             "step ms: median of the unbooked steps (with synchronisations between steps: their mean, the "
             "synchronisations included); train s: that × steps; compute ms: one step on one process, one rank's "
             "batch, with the cell's strategy as on a world of one (its own computation counts: DeMo's DCTs, a "
             "synchronisation's compression and outer step), no collective — what the link model below uses. "
             f"Bytes to a target: set-up + warm-up + steps × bytes/step (with synchronisations between steps: set-up + "
             f"those the ledger had booked by then) at the first evaluation (every {meta['eval_every']} steps; with "
             f"local steps the first synchronisation at or after it) whose seed-mean accuracy reaches it. With local "
             f"steps, bytes/step is the synchronisations' bytes ÷ steps (after every H-th step and the last).\n",
             "| cell | trainable | bytes/step | formula | ÷ DDP | collectives/step | state/rank (strategy's) | test acc | step ms | "
             f"train s | compute ms | {heads} |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(targets)]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['cell']} | refused: {r['refused']} |" + " |" * (10 + len(targets)))
            continue
        lines.append(f"| {r['cell']} | {r['trainable_params']:,} | {r['wire_bytes_per_step']:,.0f} | "
                     f"{r['wire_formula_bytes_per_step']:,.0f} | {r['wire_bytes_per_step'] / base:.4f} | {_calls(r)} | "
                     f"{_state(r)} | {_acc(r)} | "
                     f"{1e3 * r['step_time_s']:.2f} | {r['train_time_s']:.1f} | {1e3 * r['compute_step_s']:.2f} | "
                     + " | ".join(_reached(h) for h in r["to_target"]) + " |")
    front = " → ".join(r["cell"] for r in pareto([r for r in rows if "refused" not in r], "wire_bytes_per_step"))
    return "\n".join(lines) + f"\n\nPareto front (fewest bytes/step → highest accuracy): {front}\n\n" \
        + redrawn_table(rows)


TARGET_STYLES = (":", "-.", (0, (1, 3)), (0, (5, 3)))


def plot(rows: list[dict], path: Path, families: tuple, targets: list[dict] = ()) -> bool:
    """frontier.png: accuracy against bytes per step (log) and against training wall-clock, one
    marker per family, each point labelled with its cell, the Pareto front and the targets in the
    legend; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    ok = [r for r in rows if "refused" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(18, 9.5), sharey=True, dpi=110)  # placed at the dpi saved
    panels = (("wire_bytes_per_step", "bytes sent per step per rank (ring algorithms; log)", True),
              ("train_time_s", "training wall-clock, s (median step × steps)", False))
    for ax, (key, label, log) in zip(axes, panels):
        _panel(ax, ok, key, families, targets)
        ax.set_xscale("log" if log else "linear")
        ax.margins(x=0.12, y=0.08)  # room for the labels
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (seed mean, bars: min–max)")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9, borderaxespad=0)
    fig.suptitle("distid frontier — accuracy per byte and per second")
    fig.tight_layout()
    for ax, (key, _, _) in zip(axes, panels):
        _labels(ax, ok, key)
    save(fig, path)
    return True


def _panel(ax, ok: list[dict], key: str, families: tuple, targets: list[dict]) -> None:
    """One panel: the families' points with their min–max bars, the Pareto front, the target lines."""
    for fam, marker, color in zip(families, MARKERS, COLORS):
        pts = [r for r in ok if r["family"] == fam]
        if not pts:
            continue
        ys = [r["test_accuracy"] for r in pts]
        err = [[y - r["test_accuracy_min"] for y, r in zip(ys, pts)],
               [r["test_accuracy_max"] - y for y, r in zip(ys, pts)]]
        ax.errorbar([r[key] for r in pts], ys, yerr=err, fmt=marker, color=color, label=fam, ms=8, capsize=3)
    front = pareto(ok, key)
    ax.step([r[key] for r in front], [r["test_accuracy"] for r in front], where="post", color="grey",
            ls="--", lw=1, zorder=0, label="Pareto front")
    for t, ls in zip(targets, TARGET_STYLES):
        ax.axhline(t["accuracy"], color="grey", ls=ls, lw=0.9,
                   label=f"target: {t['fraction']:.0%} of DDP's accuracy ({t['accuracy']:.4f})")


def _labels(ax, ok: list[dict], key: str) -> None:
    """Each point's cell name beside it, clear of the other labels and of every marker, top first."""
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    order = sorted(ok, key=lambda r: -r["test_accuracy"])
    points = [(r[key], r["test_accuracy"]) for r in order]
    avoid = marker_boxes(ax, [x for x, _ in points], [y for _, y in points], 9)
    label_points(ax, points, [r["cell"].replace("DDP + ", "") for r in order], fontsize=7.5, avoid=avoid)
