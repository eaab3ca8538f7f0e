"""α and β of the link this group talks over, fitted from the bench's all-reduce timings.

    torchrun --nproc_per_node=4 -m distid.experiments.communication.link_fit --out fit.json [--sizes 16384,...]

Times the backend's all-reduce at each size (the bench's `time_all_reduce`: the slowest rank's mean
over back-to-back calls; median over rounds) and fits, by least squares on relative error,

    t(S) = 2(N−1)·α + 2(N−1)/N · S · β_rank        (the bench's ring model, experiments/bench/collectives.py)

On a shared medium — every rank's bytes through one queue, as a shaped loopback — the N ranks
together push N · 2(N−1)/N · S = 2(N−1)·S bytes through it, so the medium's rate is
B = N / β_rank bytes per second. Writes the rows and both readings of the fit to --out (rank 0).
`joint` fits one α for several links of one network (tc's tbf adds no latency) and a rate for each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from distid import runtime
from distid.experiments.bench.collectives import fit_alpha_beta, time_all_reduce
from distid.experiments.bench.timing import median

SIZES = (2**14, 2**17, 2**20, 2**22)  # 16 KiB … 4 MiB: latency and bandwidth both show
ROUNDS = 3


def calls_for(nbytes: int) -> int:
    """Back-to-back calls per timing: 2 MiB handed in, at least 2 calls, at most 20."""
    return max(2, min(20, 2**21 // nbytes))


def measure(sizes=SIZES, rounds: int = ROUNDS) -> dict:
    """Rows (bytes, backend_ms) and the fit, on this group; every rank calls it."""
    n, device = dist.get_world_size(), runtime.device()
    samples = {s: [] for s in sizes}
    for _ in range(rounds):
        for s in sizes:
            samples[s].append(time_all_reduce("backend", s, calls_for(s), device))
    rows = [dict(world_size=n, bytes=s, backend_ms=1e3 * median(samples[s])) for s in sizes]
    fit = fit_alpha_beta(rows, "backend_ms")
    return dict(world_size=n, rows=rows, alpha_s=fit["alpha_us"] / 1e6,
                rank_bytes_per_s=1 / fit["beta_s_per_byte"], medium_bytes_per_s=n / fit["beta_s_per_byte"],
                max_rel_error=fit["max_rel_error"])


def joint(fits: list[dict], delays: list[float] | None = None) -> list[dict]:
    """One α for every link of a network and a rate for each: tbf adds no latency, so what a message
    waits for is the hosts' own, the same at every rate. t = 2(N−1)·α + 2(N−1)/N·S·β_link, least
    squares on the times over every link's rows, so that the large messages decide the rates (on a
    few shared cores a small all-reduce's time is mostly the scheduler's); α ≥ 0, else fitted again
    without it. `delays`: each link's one-way delay that netem added (s), 2(N−1) of them taken off its
    times first. The fits again, their α, rates and largest relative errors replaced by the joint fit's."""
    n, delays = fits[0]["world_size"], delays or [0.0] * len(fits)
    rows = [(k, r["bytes"], r["backend_ms"] / 1e3 - 2 * (n - 1) * delays[k]) for k, f in enumerate(fits)
            for r in f["rows"]]
    a, t = np.zeros((len(rows), 1 + len(fits))), np.array([t for _, _, t in rows])
    for i, (k, size, _) in enumerate(rows):
        a[i, 0], a[i, 1 + k] = 2 * (n - 1), 2 * (n - 1) / n * size
    sol = np.linalg.lstsq(a, t, rcond=None)[0]
    if sol[0] < 0:
        sol = np.concatenate([[0.0], np.linalg.lstsq(a[:, 1:], t, rcond=None)[0]])
    alpha, betas = float(sol[0]), [max(float(b), 1e-15) for b in sol[1:]]
    out = []
    for k, f in enumerate(fits):
        pred = [(2 * (n - 1) * alpha + 2 * (n - 1) / n * size * betas[k], t) for j, size, t in rows if j == k]
        out.append(dict(f, alpha_s=alpha, rank_bytes_per_s=1 / betas[k], medium_bytes_per_s=n / betas[k],
                        max_rel_error=max(abs(p - t) / t for p, t in pred)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distid.experiments.communication.link_fit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the JSON file rank 0 writes")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="bytes per all-reduce, comma-separated")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    a = p.parse_args(argv)
    runtime.init()
    result = measure([int(s) for s in a.sizes.split(",") if s.strip()], a.rounds)
    if dist.get_rank() == 0:
        Path(a.out).write_text(json.dumps(result, indent=2))
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
