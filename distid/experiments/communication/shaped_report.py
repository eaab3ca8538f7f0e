"""The shaped runs' report (experiments/communication/shaped.py): shaped.md's tables and shaped.png."""

from __future__ import annotations

import math
from pathlib import Path

from distid.experiments.communication import links, netns
from distid.experiments.plotting import pyplot, save


def link_rate(fit: dict, topology: str) -> float:
    """The fitted rate of what the topology calls its link (bytes/s): the shared medium's (N × a rank's
    share of it) or each node's own."""
    return fit["medium_bytes_per_s"] if topology == "shared" else fit["rank_bytes_per_s"]


def rate_words(bytes_per_s: float) -> str:
    bits = 8 * bytes_per_s
    if bits >= 1e12:  # the fit found no bandwidth term: latency and CPU decide every size timed
        return "no bandwidth term"
    return f"{bits / 1e9:,.2f} Gb/s" if bits >= 1e9 else f"{bits / 1e6:,.1f} Mb/s"


def _s(t: float | None, none: str = "—") -> str:
    """Seconds in words; `none` where there is no figure (a step too few to time; a target not reached)."""
    if t is None or math.isnan(t):
        return none
    return f"{1e3 * t:,.1f} ms" if t < 1 else f"{t:,.1f} s"


def to_markdown(res: dict, meta: dict) -> str:
    m = meta["machine"]
    fr = [f"{t['fraction']:.0%}" for t in res["targets"]]
    lat = ("netem added " + f"{1e3 * meta['delay']:g} ms one way") if meta["applied"] else \
        ("No netem in this kernel: no latency added" + (f"; the {1e3 * meta['delay']:g} ms one way are in the model only"
                                                         if meta["delay"] else ""))
    lines = [f"# Time to accuracy on a shaped network — {meta['model']} on {meta['dataset']}, "
             f"{meta['world_size']} ranks (gloo)\n",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}. Topology: {meta['topology_words']}. "
             "One seed; the config's evaluation schedule; "
             f"targets {' and '.join(fr)} of unshaped DDP's test accuracy {res['reference_accuracy']:.4f}; "
             f"times are training seconds (evaluations excluded). {lat}.\n",
             f"**The link**, fitted from the bench's all-reduce on {meta['world_size']} ranks:\n",
             f"| link | {'the medium' if meta['topology'] == 'shared' else 'each link'}'s rate, fitted | "
             "α, fitted (one for every link: tbf adds no latency) | largest error of the fit |", "|---|---:|---:|---:|"]
    for f in res["fits"]:
        lines.append(f"| {f['rate_name']} | {rate_words(link_rate(f, meta['topology']))} | "
                     f"{1e6 * f['alpha_s']:,.0f} µs | {f['max_rel_error']:.0%} |")
    lines += ["", "**Each cell on each link**, measured, and the model's prediction. "
              "Model: the cell's unshaped step (or seconds to the target) + max(0, wire/b − t₀): its collectives "
              "took t₀ = wire/b₀ + α per message in a row unshaped (the hosts' own cost, paid on any link), and take "
              "the longer of that and wire/b on the shaped link; b a rank's rate (" + ("the medium's ÷ N" if
              meta["topology"] == "shared" else "its link's") + "), b₀ and α as fitted above. Interface: bytes the "
              "ranks' interfaces carried per rank per step over the whole run (set-up, evaluations, rendezvous).\n",
              "| cell | link | step, measured | step, model | " + " | ".join(f"to {f}, measured | model" for f in fr)
              + " | wire B/step | interface B/step |",
              "|---|---|---:|---:|" + "---:|---:|" * len(fr) + "---:|---:|"]
    for r in res["rows"]:
        reach = " | ".join(f"{_s(t['seconds'], 'not reached')} | {_s(t['model_s'], 'not reached')}"
                           for t in r["to_target"])
        lines.append(f"| {r['cell']} | {r['rate_name']} | {_s(r['step_time_s'])} | {_s(r['model_step_s'])} | {reach} | "
                     f"{r['wire_bytes_per_step']:,.0f} | {r['interface_bytes_per_step']:,.0f} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, topology: str, path: Path) -> str | None:
    """shaped.png: training seconds to the first target against the tc rate, per cell: the measured
    points, the model's curve through the rates, the unshaped run at the right; None, or why not."""
    shaped = sorted({r["rate"] for r in res["rows"] if r["rate"] is not None})
    if not shaped:
        return "no shaped rate to draw"
    plt = pyplot()
    if plt is None:
        return "no matplotlib"
    right = max(shaped) * 10  # where the unshaped runs stand
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    colors = plt.get_cmap("tab10")
    for k, cell in enumerate(dict.fromkeys(r["cell"] for r in res["rows"])):
        pts = [r for r in res["rows"] if r["cell"] == cell and r["to_target"][0]["seconds"] is not None]
        ax.plot([r["rate"] or right for r in pts], [r["to_target"][0]["seconds"] for r in pts], "o",
                color=colors(k % 10))
        curve = res["curves"].get(cell)
        if curve:
            xs, ys = zip(*curve)
            ax.plot(xs, ys, "-", color=colors(k % 10), lw=1, alpha=0.7)
        ax.plot([], [], "o-" if curve else "o", color=colors(k % 10), lw=1, label=cell)  # its legend entry
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([*shaped, right], [*(netns.rate_name(r).replace(" ", "\n") for r in shaped), "unshaped"])
    ax.set_xticks([], minor=True)  # the named rates only: log minor labels would sit on them
    ax.set_xlabel("the link's rate (tc), log")
    ax.set_ylabel(f"training seconds to {res['targets'][0]['fraction']:.0%} of DDP's accuracy (log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, title="points: measured; lines: the model", title_fontsize=8)
    ax.set_title(f"Time to accuracy on a shaped network ({links.NETWORKS[topology]})")
    fig.tight_layout()
    save(fig, path)
    return None
