"""Intrinsic dimension from a sweep's accuracies (Li et al. 2018).

d_int = the smallest d whose test accuracy reaches t = threshold × baseline, where baseline is
full training's accuracy. Between grid points d_i < d_{i+1} (acc a_i < t ≤ a_{i+1}) the crossing
is interpolated linearly in log d:  log d_int = log d_i + (t − a_i)/(a_{i+1} − a_i) · (log d_{i+1} − log d_i).
Two baselines are reported because the paper's plotted numbers use the second: the measured
full-training accuracy, and 1.0 (then t = threshold, e.g. 0.90 accuracy).

The interval: each seed's own crossing c_s, and the 95 % bootstrap interval of their mean (the
2.5th and 97.5th percentiles of the mean over BOOTSTRAP resamples of the seeds, with replacement),
given for 3 or more seeds that all cross. A bisection (sweep.search = "bisect") trains each seed at
its own d values, so its headline d_int is the mean of the c_s rather than the mean curve's crossing.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass

from distid import runtime

BOOTSTRAP = 10_000  # resamples of the seeds


@dataclass
class Crossing:
    """Where a curve first reaches t: d (None if never), and whether it was at or below the grid's start."""

    d: float | None
    below_grid: bool = False  # the first grid point already reaches t: d_int ≤ d[0]
    bracket: tuple | None = None  # (d before, d after) the interpolation ran between

    def label(self, grid_max: int) -> str:
        if self.d is None:
            return f"> {grid_max:,}"
        return f"≤ {self.d:,.0f}" if self.below_grid else f"{self.d:,.0f}"


def crossing(ds: list[int], accs: list[float], t: float) -> Crossing:
    """First d where the curve (ds ascending, accs) reaches t, interpolated in log d."""
    for i, (d, a) in enumerate(zip(ds, accs)):
        if a >= t:
            if i == 0:
                return Crossing(float(d), below_grid=True)
            d0, a0 = ds[i - 1], accs[i - 1]
            frac = (t - a0) / (a - a0)
            return Crossing(math.exp(math.log(d0) + frac * (math.log(d) - math.log(d0))), bracket=(d0, d))
    return Crossing(None)


def curve(points: list[dict], seed: int | None = None) -> tuple[list[int], list[float]]:
    """(d ascending, accuracy) of the subspace points; mean over seeds, or one seed's values."""
    by_d: dict[int, list[float]] = {}
    for p in points:
        if p["kind"] == "subspace" and (seed is None or p["seed"] == seed):
            by_d.setdefault(p["x"], []).append(p["test_accuracy"])
    ds = sorted(by_d)
    return ds, [statistics.fmean(by_d[d]) for d in ds]


def interval(values: list[float], seed: int = 0) -> tuple[float, float] | None:
    """95 % bootstrap interval of the mean of `values` (one per seed); None for fewer than 3."""
    if len(values) < 3:
        return None
    rng = random.Random(runtime.rng_seed(seed, "bootstrap"))
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP))
    return means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]


def analyse(points: list[dict], threshold: float, search: str = "grid") -> dict:
    """d_int for both baselines: from the mean curve (grid) or the mean of the seeds' crossings
    (bisect), each seed's crossing, and the interval of their mean."""
    base = [p["test_accuracy"] for p in points if p["kind"] == "full"]
    if not base:
        raise ValueError("no full-training baseline among the points")
    ds, accs = curve(points)
    seeds = sorted({p["seed"] for p in points if p["kind"] == "subspace"})
    out = dict(baseline_accuracy=statistics.fmean(base), baseline_per_seed=base, grid=ds, mean_accuracy=accs)
    for name, ref in (("measured", out["baseline_accuracy"]), ("fixed_1.0", 1.0)):
        t = threshold * ref
        per_seed = [crossing(*curve(points, s), t) for s in seeds]
        found = [c.d for c in per_seed if c.d is not None]
        both = len(found) == len(seeds)
        if search == "grid":
            mean = crossing(ds, accs, t)
            label = mean.label(ds[-1]) if ds else "—"
        else:  # each seed has its own d values: the mean of the seeds' crossings
            mean = Crossing(statistics.fmean(found) if both else None,
                            below_grid=any(c.below_grid for c in per_seed))
            label = (f"not reached by {len(seeds) - len(found)} of {len(seeds)} seeds" if not both
                     else f"≤ {mean.d:,.0f}" if mean.below_grid else f"{mean.d:,.0f}")
        out[name] = dict(
            target_accuracy=t, d_int=mean.d, d_int_label=label, crossing=asdict(mean),
            interval=interval(found) if both else None, brackets=[c.bracket for c in per_seed],
            per_seed=[c.d for c in per_seed], seeds_reached=len(found), seeds=len(seeds),
            seed_min=min(found) if found else None, seed_max=max(found) if found else None,
            seed_std=statistics.stdev(found) if len(found) > 1 else None)
    return out
