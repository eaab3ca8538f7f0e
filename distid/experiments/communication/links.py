"""Time to accuracy on real links: a model, labelled as one.

Each frontier cell's measured figures are turned into wall-clock time on named links with the
α–β (Hockney) model of a ring all-reduce (Thakur, Rabenseifner & Gropp 2005):
    t(S, N) = 2(N−1)·α + 2(N−1)/N · S/β     per all-reduce of S bytes handed in,
N workers, α the one-way latency of a message, β the bandwidth. A cell's time to a target is
    steps × compute per step  +  set-up bytes / β  +  Σ over its all-reduces up to that step of t(S, N),
and for a sparse exchange (an all-gather of a shard s per worker: DeMo, SparseLoCo)
    t(s, N) = (N−1)·α + (N−1)·s/β     per all-gather: what each worker receives grows with N,
with steps, set-up bytes, the all-reduce calls and the bytes handed in measured by the frontier run
(PowerSGD's plain warm-up steps included, DiLoCo's synchronisations counted as they happened), and
the compute per step measured by the frontier on one process, one rank's batch, no collective
(`frontier.compute_step_s`). Assumptions, all of them the model's, none measured: compute does not
overlap communication; a comm hook's own compute (PowerSGD's matmuls and orthogonalisation, the
casts to 16 bits) is left out; the accuracy reached after a given
number of steps at 4 workers holds at 64 (each worker keeps its batch, so the global batch grows);
a link carries one all-reduce at a time at its full bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distid.experiments.communication.report import COLORS
from distid.experiments.plotting import label_column, pyplot, save
from distid.primitives.formulas import wire_factor


@dataclass(frozen=True)
class Link:
    name: str
    bits_per_s: float  # β in bits per second
    alpha_s: float  # one-way latency of one message, seconds
    source: str  # where β and α come from

    @property
    def bytes_per_s(self) -> float:
        return self.bits_per_s / 8


LINKS = (  # β: the link's line rate; α: one-way latency of a small message, from the named source
    Link("internet 100 Mb/s", 100e6, 40e-3, "half the 80.55 ms between AWS US East (N. Virginia) and EU "
         "(Ireland) in “Latency Between AWS Global Regions” (acomputerscientistlearnsaws.blogspot.com, 2017)"),
    Link("1 GbE", 1e9, 25e-6, "NW-GRID Liverpool, “Gigabit Ethernet MPI Performance Tests”: minimum MPI "
         "latency 23.6 µs, 118.2 MB/s (nw-grid.ac.uk/LivMPI)"),
    Link("10 GbE", 10e9, 10e-6, "Dive into Deep Learning, “Hardware”: “Send 4KB over 10 Gbps ethernet: 10 μs” "
         "(d2l.ai/chapter_computational-performance/hardware.html)"),
    Link("InfiniBand 100 Gb/s", 100e9, 1e-6, "D. K. Panda, “The MVAPICH2 Project”, SC'18: InfiniBand "
         "“<1usec latency, 100Gbps Bandwidth”"),
)


def allreduce_s(payload: float, n: int, link: Link, calls: float = 1.0) -> float:
    """Seconds for `calls` ring all-reduces handing in `payload` bytes in all, on n workers."""
    if n < 2:
        return 0.0
    return calls * 2 * (n - 1) * link.alpha_s + 2 * (n - 1) / n * payload / link.bytes_per_s


def allgather_s(shard: float, n: int, link: Link, calls: float = 1.0) -> float:
    """Seconds for `calls` ring all-gathers of `shard` bytes per worker in all: (N−1)·α per call, and
    each worker receives the other N−1 shards — a sparse exchange grows with N where an all-reduce
    does not."""
    if n < 2:
        return 0.0
    return calls * (n - 1) * link.alpha_s + (n - 1) * shard / link.bytes_per_s


def latency_hops(calls: dict, n: int) -> float:
    """Messages in a row a rank waits for in `calls` ({op: how many}): 2(N−1) per ring all-reduce, N−1 per
    any other collective (all-gather, reduce-scatter, broadcast)."""
    return sum(c * (2 * (n - 1) if op == "all_reduce" else n - 1) for op, c in calls.items())


def link_s(wire_bytes: float, calls: dict, n: int, bytes_per_s: float, alpha_s: float) -> float:
    """Seconds a rank takes to send `wire_bytes` in `calls` collectives over a link of its own of
    bytes_per_s: wire/β + α per message in a row (`latency_hops`); the ring all-reduce's
    2(N−1)·α + 2(N−1)/N·S/β. On a shared medium of B bytes/s — every rank's bytes through one queue
    (one shaped loopback, a hub) — a rank's share is B/n: a ring all-reduce of S on 4 ranks takes
    6·S/B, 4 times what a link of B per worker would."""
    return wire_bytes / bytes_per_s + latency_hops(calls, n) * alpha_s


def time_to(row: dict, target: int, measured_n: int, n: int, link: Link) -> float | None:
    """Model seconds for the frontier cell `row` to reach targets[target] on n workers over `link`
    (None if the run never reached it)."""
    hit = row["to_target"][target]
    if hit is None:
        return None
    step, seeds = hit["step"], row["seeds"]
    setup = sum(s["wire_setup_bytes"] for s in seeds) / len(seeds)
    calls = row["calls_per_step"]
    if calls.get("all_gather"):  # a sparse exchange (DeMo, SparseLoCo): the shards a worker handed in by
        # then, from the wire bytes measured at measured_n ((N−1)·shard), gathered at n workers
        shards = (hit["wire_bytes"] - setup) / (measured_n - 1)
        return step * row["compute_step_s"] + setup / link.bytes_per_s + allgather_s(shards, n, link,
                                                                                     step * calls["all_gather"])
    payload = (hit["wire_bytes"] - setup) / wire_factor("all_reduce", measured_n)  # handed in, warm-up included
    return step * row["compute_step_s"] + setup / link.bytes_per_s + allreduce_s(payload, n, link,
                                                                                  step * calls.get("all_reduce", 0))


def _target(targets: list[dict], fraction: float = 0.90) -> int:
    return min(range(len(targets)), key=lambda i: abs(targets[i]["fraction"] - fraction))


def _fmt(t: float | None) -> str:
    if t is None:
        return "not reached"
    return f"{1e3 * t:,.0f} ms" if t < 1 else f"{t:,.1f} s" if t < 600 else f"{t / 60:,.1f} min"


def _rate(link: Link) -> str:
    b, a = link.bits_per_s, link.alpha_s
    return (f"β {b / 1e9:g} Gb/s" if b >= 1e9 else f"β {b / 1e6:g} Mb/s") + \
        (f", α {1e3 * a:g} ms" if a >= 1e-3 else f", α {1e6 * a:g} µs")


def to_markdown(rows: list[dict], targets: list[dict], measured_n: int, workers: list[int]) -> str:
    """The model's table: time to 90 % of DDP's accuracy per cell, link and worker count."""
    i = _target(targets)
    ok = [r for r in rows if "refused" not in r and r["to_target"][i] is not None]
    cols = [(n, link) for n in workers for link in LINKS]
    times = {(r["cell"], n, link.name): time_to(r, i, measured_n, n, link) for r in ok for n, link in cols}
    best = {(n, link.name): min(ok, key=lambda r: times[r["cell"], n, link.name])["cell"] for n, link in cols}
    lines = [f"## Time to {targets[i]['fraction']:.0%} of DDP's accuracy on named links — a model\n",
             "Ring all-reduce t = 2(N−1)·α + 2(N−1)/N·S/β per call (α–β model), plus steps × the compute per "
             "step (one process, one rank's batch, no collective: the table's compute ms) and the set-up bytes / "
             f"β; steps, calls and bytes as measured on {measured_n} ranks; accuracy after s steps assumed the same "
             "at 64 workers. "
             "Bold: the fastest cell in the column. Links: "
             + "; ".join(f"{k.name} ({_rate(k)}; {k.source})" for k in LINKS) + ".\n",
             "| cell | " + " | ".join(f"{k.name}, N={n}" for n, k in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for r in ok:
        cells = [_fmt(times[r["cell"], n, k.name]) for n, k in cols]
        cells = [f"**{c}**" if best[n, k.name] == r["cell"] else c for c, (n, k) in zip(cells, cols)]
        lines.append(f"| {r['cell']} | " + " | ".join(cells) + " |")
    never = [r["cell"] for r in rows if "refused" not in r and r["to_target"][i] is None]
    if never:
        lines.append(f"\nNot reached within the run: {', '.join(never)}.")
    return "\n".join(lines) + "\n"


def shaped_points(shaped: dict, fraction: float) -> list[dict]:
    """A shaped run's rows (shaped.py's shaped.json) at a rate, with their measured and modelled
    seconds to the target nearest `fraction`."""
    i = _target(shaped["targets"], fraction)
    return [dict(r, measured_s=r["to_target"][i]["seconds"], model_s=r["to_target"][i]["model_s"])
            for r in shaped["rows"] if r["rate"] is not None]


NETWORKS = {"shared": "one loopback (shared)", "per-node": "a link per rank"}


def measured_markdown(rows: list[dict], targets: list[dict], measured_n: int, shaped: list[dict]) -> str:
    """The shaped runs' measured times to 90 % of DDP's accuracy (shaped.py's shaped.json, one per
    network) beside two models: the shaped run's own (its unshaped time + max(0, wire/b − t₀), b and
    α fitted on the shaped network) and this page's per-rank model on a link of the network's fitted
    rate and α, at the shaped run's world size."""
    i = _target(targets)
    by_cell = {r["cell"]: r for r in rows if "refused" not in r}
    machines = "; ".join(dict.fromkeys(f"{x['meta']['machine']['cpu']}, {x['meta']['machine']['cores']} cores"
                                       for x in shaped))
    lines = ["\n### Measured on a shaped network, beside the model\n",
             f"`python -m distid.experiments.communication.shaped` on one machine ({machines}): "
             "its ranks in private network namespaces, the links shaped by tc's tbf — either every rank on one "
             "loopback (a shared medium: every rank's bytes through one queue, a rank's share of the rate 1/N) or a "
             "namespace per rank behind its own shaped link (what this page's model assumes); one seed; training "
             f"seconds to {targets[i]['fraction']:.0%} of that run's unshaped DDP accuracy. Its model: the cell's "
             "unshaped time + max(0, wire/b − t₀), t₀ what its collectives took unshaped, b a rank's rate and α "
             "fitted on the shaped network. This page's: the table above's, on a link per worker of the network's "
             "fitted rate and α.\n",
             "| cell | network | link | measured | its model | this page's model |", "|---|---|---|---:|---:|---:|"]
    for one in shaped:
        meta, fits = one["meta"], {f["rate"]: f for f in one["fits"]}
        net = meta.get("topology", "shared")
        for p in shaped_points(one, targets[i]["fraction"]):
            f, row = fits[p["rate"]], by_cell.get(p["cell"])
            rate = f["medium_bytes_per_s"] if net == "shared" else f["rank_bytes_per_s"]
            link = Link(p["rate_name"], 8 * rate, f["alpha_s"], "fitted on the shaped network")
            page = time_to(row, i, measured_n, meta["world_size"], link) if row and row["to_target"][i] else None
            lines.append(f"| {p['cell']} | {NETWORKS[net]}, N={meta['world_size']} | {p['rate_name']} | "
                         f"{_fmt(p['measured_s'])} | {_fmt(p['model_s'])} | "
                         f"{_fmt(page) if row else 'not in this frontier'} |")
    return "\n".join(lines) + "\n"


MARKERS = "osD^v<>ph*"  # one per cell within a family


def cell_styles(cells: list[str], families: list[str], order: tuple) -> dict[str, tuple]:
    """{cell: (colour, marker)}: the family's colour (report.COLORS, as in frontier.png), darker for
    each further cell of it, and a marker of its own within the family; cells [n], families [n]."""
    from matplotlib.colors import to_rgb

    seen: dict[str, int] = {}
    out = {}
    for cell, fam in zip(cells, families):
        k = seen[fam] = seen.get(fam, -1) + 1
        base = to_rgb(COLORS[order.index(fam) % len(COLORS)] if fam in order else "grey")
        shade = 1 - 0.45 * (k % 4) / 3  # 1, 0.85, 0.7, 0.55 of the base
        out[cell] = (tuple(c * shade for c in base), MARKERS[k % len(MARKERS)])
    return out


def plot(rows: list[dict], targets: list[dict], measured_n: int, workers: list[int], path: Path,
         families: tuple, shaped: list[dict] | None = None) -> bool:
    """links.png: model time to 90 % of DDP's accuracy against link bandwidth, one panel per worker
    count, one line per cell (colour: its family's, a shade and marker of its own), each named at its
    left end; the times measured on shaped networks as large markers in their cell's colour; False
    without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    i = _target(targets)
    ok = [r for r in rows if "refused" not in r and r["to_target"][i] is not None]
    styles = cell_styles([r["cell"] for r in ok], [r["family"] for r in ok], families)
    fig, axes = plt.subplots(1, len(workers), figsize=(8 * len(workers), 9), sharey=True, squeeze=False,
                             dpi=110)  # labels placed at the dpi saved
    for ax, n in zip(axes[0], workers):
        _panel(ax, ok, i, measured_n, n, styles)
        _measured(ax, shaped, n, targets[i]["fraction"], styles)
    axes[0][0].set_ylabel(f"time to {targets[i]['fraction']:.0%} of DDP's accuracy, s (model; log)")
    handles = _measured_keys(shaped, workers)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9)
    fig.suptitle("Time to accuracy on named links — the α–β model applied to the frontier's measured steps, "
                 "step times and bytes")
    fig.tight_layout(rect=(0, 0.04 if handles else 0, 1, 1))
    for ax, n in zip(axes[0], workers):
        points = [(LINKS[0].bits_per_s, time_to(r, i, measured_n, n, LINKS[0])) for r in ok]
        label_column(ax, points, [r["cell"] for r in ok], [styles[r["cell"]][0] for r in ok],
                     LINKS[0].bits_per_s / 1.8)
    save(fig, path)
    return True


def _panel(ax, ok: list[dict], i: int, measured_n: int, n: int, styles: dict) -> None:
    """One worker count: a line per cell through the links, log–log, room at the left for the names."""
    xs = [k.bits_per_s for k in LINKS]
    for r in ok:
        color, marker = styles[r["cell"]]
        ax.plot(xs, [time_to(r, i, measured_n, n, k) for k in LINKS], marker=marker, color=color, lw=1, ms=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [k.name.replace(" ", "\n", 1) for k in LINKS], fontsize=8)
    ax.set_xlim(xs[0] / 40, xs[-1] * 2)
    ax.set_title(f"{n} workers")
    ax.set_xlabel("link (bandwidth, log)")
    ax.grid(alpha=0.3, which="both")


def _measured(ax, shaped: list[dict] | None, n: int, fraction: float, styles: dict) -> None:
    """The shaped runs at n workers: a star (one shared loopback) or a plus (a link per rank) per
    cell and rate, in the cell's colour."""
    for one in (x for x in shaped or [] if x["meta"]["world_size"] == n):
        net = one["meta"].get("topology", "shared")
        for p in (q for q in shaped_points(one, fraction) if q["measured_s"]):
            color = styles.get(p["cell"], ("grey",))[0]
            ax.plot([p["rate"]], [p["measured_s"]], SHAPED_MARKERS[net], ms=12, color=color, mec="black", mew=0.8)


SHAPED_MARKERS = {"shared": "*", "per-node": "P"}


def _measured_keys(shaped: list[dict] | None, workers: list[int]) -> list:
    """Legend entries (uncoloured) for the shaped networks drawn: one per network."""
    from matplotlib.lines import Line2D

    drawn = (x for x in shaped or [] if x["meta"]["world_size"] in workers)
    nets = dict.fromkeys(x["meta"].get("topology", "shared") for x in drawn)
    return [Line2D([], [], ls="", marker=SHAPED_MARKERS[net], ms=12, color="white", mec="black", mew=0.8,
                   label=f"measured on a shaped network, {NETWORKS[net]} (in its cell's colour)") for net in nets]
