"""Time to accuracy measured on a shaped link, not only modelled: a laptop as a slow network.

    python -m distid.experiments.communication.shaped --config configs/mnist_frontier.toml \\
        [--rates 1gbit,100mbit] [--cells "DDP,DDP + PowerSGD r=2,DiLoCo H=32,subspace d=4000,LoRA r=8"] \\
        [--nproc 4] [--topology shared|per-node] [--delay 20ms] [--out DIR] [--set KEY=VALUE ...]

Linux, iproute2, and root or an ordinary user allowed user namespaces (netns.py says what to set).
The command starts itself again inside a private network namespace that only its own runs use;
there, for the network unshaped (always, first) and for each rate, it shapes the network with tc's
token bucket (tbf) and fits α and β from the bench's all-reduce timings (link_fit.py); then it
trains each cell (the frontier's cells, by name) at every rate in turn, so that each rate's
unshaped baseline is measured beside it (N ranks on a few cores compete for the CPU, and that
share of a step is not the link's). When it ends — done, failed or interrupted (Ctrl-C) — its runs
are stopped and the namespaces go with them.

Two topologies (netns.py). `shared` (the default): every rank on the namespace's one loopback,
under one torchrun — a shared medium, every rank's bytes through one queue (a hub): a ring
all-reduce of S bytes on 4 ranks puts 6·S through it. `per-node`: a namespace per rank, each
behind its own veth pair shaped both ways, joined by a bridge (a switch), one torchrun per node
(`--nnodes`) — one link per worker, what the frontier's link model assumes.

Per cell and rate it reports the median step time (the mean where the strategy synchronises
between steps, so that those count), the training seconds to 90 % and 95 % of DDP's accuracy (the
unshaped DDP run's final test accuracy; the config's evaluation schedule; evaluations excluded),
the wire bytes per step (the ledger's), the bytes the interfaces carried per rank per step (the
whole run: set-up, evaluations and rendezvous included), and what the model predicts.

The model (`predict`): the cell's step (or training seconds to a target) as measured unshaped;
what its collectives took there, t₀ = α per message in a row + wire/b₀ (links.link_s), is the
hosts' own cost, paid on any link, and a slower link makes them take the longer of that and
wire/b, the time the link needs to carry the bytes. The rates b (a rank's; on the shared medium
the medium's ÷ N) and one α for every link (tbf adds no latency) are fitted together on the
all-reduce timings of all the links (link_fit.joint) — never on the training runs.
Where the kernel has netem, --delay adds one-way latency to every packet of a shaped link; where it
does not, the output says so; the model adds it either way. Writes shaped.json, shaped.md and shaped.png
to --out, and each run's own output to <cell>/<rate>/.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from distid import runtime
from distid.config import ConfigError, timestamped_dir
from distid.experiments.communication import frontier, link_fit, links, netns
from distid.experiments.communication.shaped_report import link_rate, plot, rate_words, to_markdown
from distid.observe.summary import Summary
from distid.run import cli

MODULE = "distid.experiments.communication.shaped"
CELLS = ("DDP", "DDP + PowerSGD r=2", "DiLoCo H=32", "subspace d=4000", "LoRA r=8")


def add_args(p) -> None:
    p.add_argument("--rates", default="1gbit,100mbit",
                   help="link rates in tc's units (bit, kbit, mbit, gbit; bps … bytes), comma-separated; the "
                        "unshaped loopback is always measured too, first")
    p.add_argument("--cells", default=",".join(CELLS),
                   help="the frontier's cells by name, comma-separated; DDP (the accuracy the targets are "
                        f"fractions of) is always among them (default {', '.join(CELLS)})")
    p.add_argument("--nproc", type=int, default=4, help="ranks, all on this machine (default 4)")
    p.add_argument("--delay", default="0ms", help="one-way latency per packet through netem (where the kernel has "
                   "it; elsewhere in the model only), e.g. 20ms")
    p.add_argument("--topology", choices=tuple(netns.TOPOLOGIES), default="shared",
                   help="shared: every rank on one shaped loopback (one queue for all, a hub; default); per-node: "
                        "a namespace per rank behind its own shaped veth, joined by a bridge (one link per worker)")
    p.add_argument("--targets", type=lambda t: [float(v) for v in t.split(",") if v.strip()], default=[0.90, 0.95],
                   help="fractions of DDP's accuracy (default 0.90,0.95)")
    p.add_argument("--fit-sizes", default=",".join(map(str, link_fit.SIZES)),
                   help="bytes per all-reduce of the α–β fit, comma-separated")


def frontier_cells() -> dict[str, frontier.Cell]:
    """The frontier's cells at its defaults, by name."""
    p = argparse.ArgumentParser()
    frontier.add_args(p)
    return {c.name: c for c in frontier.cells(p.parse_args([]))}


def choose_cells(text: str) -> list[frontier.Cell]:
    known = frontier_cells()
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in known]
    if unknown:
        raise ConfigError(f"--cells: no frontier cell {unknown[0]!r}; choose from {', '.join(known)}")
    return [known[c] for c in dict.fromkeys(["DDP", *names])]


def fit_sizes(text: str) -> list[int]:
    """--fit-sizes as bytes; ConfigError unless two or more distinct sizes, each a positive multiple of 4."""
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        sizes = []
    if len(sizes) < 2 or any(v < 4 or v % 4 for v in sizes):
        raise ConfigError(f"--fit-sizes {text!r}: two or more distinct sizes in bytes, each a multiple of 4 (float32), "
                          "for example 16384,131072,1048576,4194304: α and β are two unknowns")
    return sizes


def plan_rates(text: str) -> list[float | None]:
    """None (unshaped) first, then each rate once, in the order given."""
    return list(dict.fromkeys([None, *(netns.parse_rate(r) for r in text.split(",") if r.strip())]))


def slug(rate: float | None) -> str:
    return netns.rate_name(rate).replace(" ", "").replace("/", "")


# ---- the measurements ------------------------------------------------------------------------

def launch(net, module_argv: list[str], log: Path) -> None:
    """module_argv on the network's ranks (one torchrun, or one per node), each one's output in log
    (node i > 0: log.<i>); all stopped when one fails or this process is interrupted; RuntimeError
    naming the log of the one that failed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    commands = net.commands(module_argv)
    logs = [log if i == 0 else log.with_name(f"{log.name}.{i}") for i in range(len(commands))]
    procs = []
    try:
        for (argv, env), path in zip(commands, logs):
            procs.append(netns.start(argv, env, path))
        while None in (codes := [p.poll() for p in procs]) and not any(codes):
            time.sleep(0.1)
    finally:
        netns.stop_all(procs)
    failed = next((i for i, c in enumerate(codes) if c), None)
    if failed is not None:
        said = logs[failed].read_text().strip().splitlines() or [""]
        said = next((x for x in said if x.startswith("error:")), said[-1])  # distid's own line, if any
        raise RuntimeError(f"{' '.join(module_argv[:2])} exited with {codes[failed]} ({said.strip()}); "
                           f"its output: {logs[failed]}")


def fit_link(args, net, rate, out: Path) -> dict:
    """link_fit on the network as shaped now: α, the per-rank rate, the rows."""
    path = out / "fit" / f"{slug(rate)}.json"
    launch(net, ["-m", "distid.experiments.communication.link_fit", "--out", str(path.resolve()),
                 "--sizes", ",".join(map(str, fit_sizes(args.fit_sizes)))], path.with_suffix(".log"))
    return dict(json.loads(path.read_text()), rate=rate, rate_name=netns.rate_name(rate))


def train_cell(args, cell: frontier.Cell, rate, out: Path, net) -> dict:
    """One training run of `cell` on the network as shaped now; its summary and the bytes its
    interfaces carried."""
    where = out / cell.slug / slug(rate)
    sets = [x for o in [*args.overrides, *cell.overrides] for x in ("--set", o)]
    before = net.tx_bytes()
    launch(net, ["-m", "distid.train", *(["--config", args.config] if args.config else []), *sets,
                 "--out", str(where)], where / "torchrun.log")
    sent = net.tx_bytes() - before
    return dict(summary=Summary.load(where / "summary.json"), interface_bytes=sent)


def measure(args, cells: list[frontier.Cell], rates: list, delay: float, out: Path) -> dict:
    """Inside the namespace: the fits, then every cell at every rate; {"fits", "runs", "netem", "delay", "applied"}."""
    fits, runs = {}, {c.name: {} for c in cells}
    with netns.TOPOLOGIES[args.topology](args.nproc) as net:
        netem = net.has_netem()
        applied = delay if netem else 0.0
        if delay and not netem:
            print(f"netem: this kernel has none, so no latency is added; the {1e3 * delay:g} ms enter the model only",
                  flush=True)
        for rate in rates:
            net.shape(rate, applied if rate else 0.0)  # the unshaped baseline: no rate limit, no delay
            fits[rate] = fit_link(args, net, rate, out)
        fits = dict(zip(rates, link_fit.joint([fits[r] for r in rates], [applied if r else 0.0 for r in rates])))
        for rate, f in fits.items():
            print(f"link {netns.rate_name(rate):>10}: fitted {rate_words(link_rate(f, args.topology))} a "
                  f"{'link' if args.topology == 'per-node' else 'medium'}, α {1e6 * f['alpha_s']:,.0f} µs", flush=True)
        for cell in cells:
            for rate in rates:  # the cell's unshaped run, then its shaped ones: the baseline beside them
                net.shape(rate, applied if rate else 0.0)
                runs[cell.name][rate] = r = train_cell(args, cell, rate, out, net)
                s = r["summary"]
                print(f"{cell.name:<22} {netns.rate_name(rate):>10}: step {1e3 * (s.step_time_s or math.nan):8,.1f} ms, "
                      f"test acc {s.test_accuracy:.4f}, {s.wall_time_s:6.1f} s in all", flush=True)
    return dict(fits=fits, runs=runs, netem=netem, delay=delay, applied=applied)


# ---- the model -------------------------------------------------------------------------------

def _hit(curve: list, target: float):
    """The first evaluation (steps done, training seconds, accuracy) at or above target, or None."""
    return next((e for e in curve if e[2] >= target), None)


def predict(base: dict, fit: dict, fit0: dict, n: int, delay: float, step: int | None = None) -> float | None:
    """Model seconds of the unshaped run `base` (a frontier.seed_record plus its curve and step time) on
    the link of `fit`: per step (step None) or to the end of `step`. What its collectives took
    unshaped, t0 = α per message in a row + wire/b0 (fit0), is the hosts' own cost — scheduling, copies,
    latency — paid on any link; a slower link makes them take the longer of that and the time it needs
    to carry the bytes, wire/b: own + max(0, wire/b − t0); plus the link's one-way `delay` per message
    in a row (netem's, or assumed where the kernel has none: the unshaped run had none either way)."""
    if step is None:
        wire, calls, own = base["wire_bytes_per_step"], base["comm_calls_per_step"], base["step_time_s"]
    else:
        wire = frontier.cumulative_bytes(base, step) - base["wire_setup_bytes"]
        calls = {op: c * step for op, c in base["comm_calls_per_step"].items()}
        own = next(e[1] for e in base["eval_curve"] if e[0] == step)
    if own is None:  # too few steps to time one
        return None
    t0 = links.link_s(wire, calls, n, fit0["rank_bytes_per_s"], fit0["alpha_s"])
    return own + max(0.0, wire / fit["rank_bytes_per_s"] - t0) + links.latency_hops(calls, n) * delay


def curve(base: dict, fits: dict, n: int, topology: str, delay: float, step: int) -> list[tuple[float, float]]:
    """[(tc rate, model seconds to the end of `step`)] over rates around the shaped ones: a rank's rate
    the tc rate (÷ N on the shared medium) times the median of fitted ÷ tc rate."""
    shaped = [r for r in fits if r is not None]
    kept = statistics.median(8 * link_rate(fits[r], topology) / r for r in shaped)  # fitted ÷ tc's rate
    lo, hi = math.log10(min(shaped) / 3), math.log10(max(shaped) * 3)
    out = []
    for k in range(25):
        rate = 10 ** (lo + (hi - lo) * k / 24)
        fit = dict(rank_bytes_per_s=kept * rate / 8 / (n if topology == "shared" else 1))
        out.append((rate, predict(base, fit, fits[None], n, delay, step)))
    return out


def results(measured: dict, cells: list[frontier.Cell], rates: list, fractions: list[float], n: int,
            topology: str) -> dict:
    """The table's rows from measure()'s runs: measured beside the model, per cell and rate; the
    model's curve of each cell's time to the first target against the tc rate."""
    fits, runs = measured["fits"], measured["runs"]
    model_delay = measured["delay"]  # a shaped link's latency, netem's or assumed: the unshaped run had none
    reference = runs["DDP"][None]["summary"].test_accuracy
    targets = [dict(fraction=f, accuracy=f * reference) for f in fractions]
    rows, curves = [], {}
    for cell in cells:
        s0 = runs[cell.name][None]["summary"]
        base = dict(frontier.seed_record(s0, s0.config["train"]["seed"]), step_time_s=s0.step_time_s)
        first = _hit(s0.eval_curve, targets[0]["accuracy"])
        if first and len(rates) > 1:
            curves[cell.name] = curve(base, fits, n, topology, model_delay, first[0])
        for rate in rates:
            s, fit = runs[cell.name][rate]["summary"], fits[rate]
            lag = model_delay if rate is not None else 0.0
            reach = []
            for t in targets:
                got, want = _hit(s.eval_curve, t["accuracy"]), _hit(s0.eval_curve, t["accuracy"])
                reach.append(dict(fraction=t["fraction"], step=got[0] if got else None, seconds=got[1] if got else None,
                                  model_s=predict(base, fit, fits[None], n, lag, want[0]) if want else None))
            rows.append(dict(cell=cell.name, family=cell.family, rate=rate, rate_name=netns.rate_name(rate),
                             step_time_s=s.step_time_s, model_step_s=predict(base, fit, fits[None], n, lag),
                             wire_bytes_per_step=s.wire_per_step, test_accuracy=s.test_accuracy, steps=s.steps,
                             interface_bytes_per_step=runs[cell.name][rate]["interface_bytes"] / n / s.steps,
                             to_target=reach))
    return dict(reference_accuracy=reference, targets=targets, rows=rows, curves=curves,
                fits=[fits[r] for r in rates])


# ---- the command -----------------------------------------------------------------------------

def body(args, cfg, argv: list[str]) -> int:
    rates, cells = plan_rates(args.rates), choose_cells(args.cells)
    delay = netns.parse_delay(args.delay)
    fit_sizes(args.fit_sizes)
    if not 2 <= args.nproc <= 253:
        raise ConfigError(f"--nproc {args.nproc}: use 2 or more (one rank sends nothing) and at most 253 (one /24)")
    if not all(0 < t <= 1 for t in args.targets):
        raise ConfigError(f"--targets {args.targets}: fractions of DDP's accuracy, each in (0, 1]")
    if cfg.train.eval_every < 1:
        raise ConfigError("time to accuracy needs accuracy curves: set train.eval_every >= 1")
    out = Path(args.out or timestamped_dir("shaped"))
    if not netns.inside():
        netns.check_namespace()
        return netns.run_entered([sys.executable, "-m", MODULE, *argv, "--out", str(out)])
    netns.stop_on_signals()
    try:
        measured = measure(args, cells, rates, delay, out)
    except KeyboardInterrupt:
        print("interrupted: the runs are stopped; the namespace goes with this process", file=sys.stderr, flush=True)
        return 130
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    res = results(measured, cells, rates, args.targets, args.nproc, args.topology)
    meta = dict(model=cfg.model.name, dataset=cfg.data.dataset, world_size=args.nproc, machine=runtime.machine(),
                topology=args.topology, topology_words=netns.TOPOLOGIES[args.topology].words,
                netem=measured["netem"], delay=delay, applied=measured["applied"], config=args.config,
                overrides=args.overrides)
    (out / "shaped.json").write_text(json.dumps(dict(meta=meta, **res), indent=2))
    md = to_markdown(res, meta)
    (out / "shaped.md").write_text(md)
    why = plot(res, args.topology, out / "shaped.png")
    print("\n" + md + f"\nwrote {out}/shaped.json, shaped.md" + (f" ({why}: no chart)" if why else ", shaped.png"))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.main(argv, f"python -m {MODULE}", __doc__, lambda args, cfg: body(args, cfg, argv), add_args,
                    join=False, out="runs/shaped-<YYYYmmdd-HHMMSS>")


if __name__ == "__main__":
    sys.exit(main())
