"""What a sweep writes beside its points: the analysis, sweep.md (tables) and id_curve.png (accuracy vs d)."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from distid import runtime
from distid.config import Config, to_dict
from distid.experiments.intrinsic import dimension, store
from distid.experiments.plotting import pyplot, save

BUDGET_RANKS = (1, 2, 4, 8)  # LoRA ranks whose trainable counts are marked on the d axis


def lora_budgets(cfg: Config) -> dict[int, int]:
    """{r: trainable parameters of LoRA at rank r} on the config's model and targets."""
    from distid import lora
    from distid.models import build_model

    model = build_model(cfg.model.name)
    targets = lora.parse_targets(cfg.lora.targets)
    out = {}
    for r in BUDGET_RANKS:
        try:
            out[r] = lora.lora_param_count(model, r, targets)
        except ValueError:  # a layer too narrow for rank r
            break
    return out


def _by(points: list[dict], kind: str) -> dict[int, dict[int, float]]:
    """{x: {seed: accuracy}} of one kind of point."""
    table: dict[int, dict[int, float]] = {}
    for p in points:
        if p["kind"] == kind:
            table.setdefault(p["x"], {})[p["seed"]] = p["test_accuracy"]
    return dict(sorted(table.items()))


def markdown(result: dict, cfg: Config) -> str:
    a, pts, m, t = result["analysis"], result["points"], result["machine"], cfg.train
    seeds = sorted({p["seed"] for p in pts})
    full = next(p for p in pts if p["kind"] == "full")
    thr = cfg.sweep.threshold
    point_time = sum(p["wall_time_s"] for p in pts)
    runs = result.get("invocations", [])
    history = "" if len(runs) < 2 else (
        f" It is invocation {len(runs)}; wall times of all: "
        + ", ".join(f"{r['wall_time_s']:.0f} s on {r['ranks']} rank(s), {r.get('trained', '?')} points trained"
                   for r in runs) + ".")
    bisected = result.get("search") == "bisect"
    lines = [
        f"# Intrinsic dimension — {cfg.model.name} on {cfg.data.dataset}"
        + (f", classes {cfg.data.classes}" if cfg.data.classes else "")
        + (f", from θ₀ = {cfg.model.init_from}" if cfg.model.init_from else "") + "\n",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; {result['ranks']} rank(s), mode "
        f"{result['mode']}. This invocation: {result['wall_time_s']:.0f} s wall, {result['trained']} points trained; "
        f"the points' own run times add up to {point_time:.0f} s.{history}\n",
        *([search_line(result, cfg)] if bisected else []),
        budget_line(pts, cfg) + f" {t.optimizer}; lr full {cfg.sweep.full_lr:g}, subspace {t.lr:g} ({cfg.subspace.projection} projection)"
        + (f", LoRA {cfg.sweep.lora_lr:g}" if cfg.sweep.lora_ranks else "") + f"; seeds {', '.join(map(str, seeds))}.\n",
        f"Baseline (full training, D = {full['total_params']:,}): test accuracy "
        f"{a['baseline_accuracy']:.4f} (per seed {', '.join(f'{b:.4f}' for b in a['baseline_per_seed'])}).\n",
        f"| threshold | target accuracy | d_int ({'all seeds' if bisected else 'mean curve'}) | "
        "95 % interval (bootstrap over seeds) | per seed (points of its line) | seeds reaching it |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, label in (("measured", f"{thr:.0%} of the measured baseline"),
                        ("fixed_1.0", f"{thr:.0%} of 1.0 (the convention of Li et al.'s plots)")):
        r = a[name]
        per = ", ".join(seed_cell(d, b, f) for d, b, f in zip(r["per_seed"], r["brackets"], r["fits"]))
        ci = r.get("interval")
        ci = f"{ci[0]:,.0f}–{ci[1]:,.0f}" if ci else "— (needs ≥ 3 seeds, all crossing inside the range)"
        lines.append(f"| {label} | {r['target_accuracy']:.4f} | {r['d_int_label']} | {ci} | {per} | "
                     f"{r['seeds_reached']}/{r['seeds']} |")
    lines += ["", f"Each seed's d_int: where the least-squares line of accuracy against log d through its points within a "
              f"factor {a['fit_window']:g} of the crossing reaches the target (`sweep.fit_window`); with fewer than 3 "
              f"such points, the interpolation between the two trained d around the crossing (d before–after). The "
              f"headline: the same line through {'every seed' if bisected else 'the mean curve'}'s points.", "",
              "| method | d / rank | trainable | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
              "|---|---:|---:|" + "---:|" * (len(seeds) + 1)]
    trainable = {(p["kind"], p["x"]): p["trainable_params"] for p in pts}
    for kind in ("full", "subspace", "lora"):
        for x, accs in _by(pts, kind).items():
            cells = " | ".join(f"{accs[s]:.4f}" if s in accs else "—" for s in seeds)
            lines.append(f"| {kind} | {x or '—'} | {trainable[(kind, x)]:,} | {cells} | "
                         f"{statistics.fmean(accs.values()):.4f} |")
    return "\n".join(lines) + "\n\n![accuracy against d](id_curve.png)\n"


def seed_cell(d: float | None, bracket: list | None, fit: list | None) -> str:
    """One seed's d_int with the points behind it: "513 (3 points, 400–600)" or "491 (400–500)"."""
    if d is None:
        return "—"
    if fit:
        return f"{d:,.0f} ({fit[0]} points, {fit[1]:,}–{fit[2]:,})"
    return f"{d:,.0f}" + (f" ({bracket[0]:,}–{bracket[1]:,})" if bracket else "")


def search_line(result: dict, cfg: Config) -> str:
    """What the bisection did: its range, width, threshold and the points it trained."""
    s, pts = cfg.sweep, result["points"]
    grid_points = s.seeds * (1 + (len(s.d) if s.d else s.points))
    return (f"Search: bisection on log d in [{s.d_min:,}, {s.d_max:,}], each seed's bracket of the "
            f"{'two thresholds' if s.bisect_on == 'both' else s.bisect_on.replace('_', ' ') + ' threshold'} "
            f"narrowed to hi/lo ≤ {1 + s.width:g}: {len(pts)} points ({sum(p['kind'] == 'full' for p in pts)} "
            f"baselines), where the grid of sweep.d/sweep.points would train {grid_points}.\n")


def budget_line(pts: list[dict], cfg: Config) -> str:
    """The training budget of a point, and where points stopped early, how many steps they took."""
    t, full = cfg.train, next(p for p in pts if p["kind"] == "full")
    planned = full.get("steps_planned") or full["steps"]
    line = (f"Budget of every point: {planned * full['epochs'] / full['steps']:.2f} epochs = {planned} steps of "
            f"global batch {t.global_batch},")
    if not t.stop_plateau:
        return line
    steps = [p["steps"] for p in pts]
    early = sum(p.get("stopped_early", False) for p in pts)
    return (line + f" stopping early once {t.stop_plateau} evaluation{'s' * (t.stop_plateau > 1)} in a row (every "
                   f"{t.eval_every} steps) gain "
            f"at most {t.plateau_delta:g} test accuracy on the best before them: {early} of {len(pts)} points "
            f"stopped early; steps trained {min(steps)}–{max(steps)} (mean {statistics.fmean(steps):.0f});")


def plot(result: dict, cfg: Config, path: Path) -> bool:
    """id_curve.png: test accuracy against trainable parameters (log x); False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    import matplotlib.ticker

    a, pts = result["analysis"], result["points"]
    fig, ax = plt.subplots(figsize=(8, 5))
    sub = [p for p in pts if p["kind"] == "subspace"]
    what = subspace_name(cfg)
    if result.get("search") == "bisect":  # each seed at its own d: no mean curve
        ax.scatter([p["x"] for p in sub], [p["test_accuracy"] for p in sub], s=18, color="tab:blue",
                   label=f"{what}, one seed (the d values the bisection chose)")
    else:
        ax.scatter([p["x"] for p in sub], [p["test_accuracy"] for p in sub], s=14, color="tab:blue", alpha=0.35,
                   label=f"{what}, one seed")
        ax.plot(a["grid"], a["mean_accuracy"], "o-", color="tab:blue", label=f"{what}, mean over seeds")
    lora = {}
    for p in pts:
        if p["kind"] == "lora":
            lora.setdefault(p["trainable_params"], []).append(p["test_accuracy"])
    if lora:
        xs = sorted(lora)
        ax.plot(xs, [statistics.fmean(lora[x]) for x in xs], "s--", color="tab:orange", label="LoRA, mean over seeds")
    ax.axhline(a["baseline_accuracy"], color="black", ls="--", lw=1, label=f"full training {a['baseline_accuracy']:.3f}")
    for name, color, ls in (("measured", "tab:red", "-"), ("fixed_1.0", "tab:gray", ":")):
        r = a[name]
        tag = "measured baseline" if name == "measured" else "baseline 1.0"
        ax.axhline(r["target_accuracy"], color=color, ls=ls, lw=1,
                   label=f"{cfg.sweep.threshold:.0%} of {tag}: d_int = {r['d_int_label']}")
        if r["d_int"] is not None:
            ax.axvline(r["d_int"], color=color, ls=ls, lw=1)
    for i, (r, count) in enumerate(lora_budgets(cfg).items()):
        ax.axvline(count, color="tab:orange", lw=0.8, alpha=0.6, label="LoRA on every layer: trainable at rank r"
                   if i == 0 else None)
        ax.text(count, 0.98, f" r={r}", transform=ax.get_xaxis_transform(), fontsize=8, color="tab:orange", va="top")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(minor_label(ax.xaxis)))
    ax.set_xlabel(f"trainable parameters ({what}: d)")
    ax.set_ylabel("test accuracy")
    lo = min([p["test_accuracy"] for p in pts] + [a["fixed_1.0"]["target_accuracy"]])
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Intrinsic dimension{' with SAID' if cfg.subspace.said else ''}: {cfg.model.name} on "
                 f"{cfg.data.dataset}{' ' + ','.join(map(str, cfg.data.classes)) if cfg.data.classes else ''}"
                 f"{' (pretrained θ₀)' if cfg.model.init_from else ''} "
                 f"({next(p for p in pts if p['kind'] == 'full')['epochs']:.1f} epochs per point)", fontsize=11)
    fig.tight_layout()
    save(fig, path, dpi=120)
    return True


def minor_label(axis):
    """A log axis's minor tick label: 2 and 5 × 10^k while the axis spans at most 3 decades (more
    would crowd them), nothing otherwise."""

    def label(v: float, _) -> str:
        lo, hi = axis.get_view_interval()
        lead = round(v / 10 ** math.floor(math.log10(v)))
        return f"{v:,.0f}" if lead in (2, 5) and math.log10(hi / lo) <= 3 else ""

    return label


def subspace_name(cfg: Config) -> str:
    """What the chart calls the subspace points: "subspace", or "SAID subspace" when subspace.said
    adds its per-tensor scales."""
    return "SAID subspace" if cfg.subspace.said else "subspace"


def write(out: Path, result: dict, cfg: Config) -> str:
    """sweep.json (report fields beside the points), sweep.md, id_curve.png; returns what to print."""
    result = dict(result, invocations=store.report(out, result))
    md = markdown(result, cfg)
    (out / "sweep.md").write_text(md)
    drew = plot(result, cfg, out / "id_curve.png")
    return md + (f"\nwrote {out}/sweep.json, sweep.md, id_curve.png" if drew else
                 f"\nwrote {out}/sweep.json, sweep.md (matplotlib missing: no id_curve.png)")


def finish(cfg: Config, out: Path, records: list[dict], n: int, t0: float, trained: int, grid: list[int] = (),
           echo: bool = True) -> str:
    """Rank 0, at a sweep's end: the analysis, sweep.json's report fields, sweep.md and the chart;
    returns (and with echo, prints) the report. grid: the d values of a grid sweep."""
    s = cfg.sweep
    result = dict(config=to_dict(cfg), grid=list(grid), points=records,
                  machine=runtime.machine(), ranks=n, mode=s.mode, search=s.search,
                  wall_time_s=time.perf_counter() - t0, trained=trained,
                  analysis=dimension.analyse(records, s.threshold, s.search, s.fit_window))
    text = write(out, result, cfg)
    if echo:
        print(text, flush=True)
    return text
