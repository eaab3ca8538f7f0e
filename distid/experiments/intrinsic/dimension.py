"""Intrinsic dimension from a sweep's accuracies (Li et al. 2018).

d_int = the smallest d whose test accuracy reaches t = threshold × baseline, where baseline is
full training's accuracy. Two baselines are reported because the paper's plotted numbers use the
second: the measured full-training accuracy, and 1.0 (then t = threshold, e.g. 0.90 accuracy).

Where a curve crosses t, in two steps:
1. `crossing`: between the trained d_i < d_{i+1} around the first rise past t (a_i < t ≤ a_{i+1}),
   linearly in log d:  log c = log d_i + (t − a_i)/(a_{i+1} − a_i) · (log d_{i+1} − log d_i).
2. `fitted`: the least-squares line a = α + β·log d through every trained point within a factor
   `window` of c (default 1.5), solved for t:  log d_int = (t − α)/β. Every d draws its own
   projection, so one run's accuracy scatters by a few thousandths while the curve rises by about
   0.01 per 10 % of d: two points alone place the crossing by their noise; the line averages it.
   With fewer than 3 points in the window (or one d), a slope ≤ 0 or an answer outside the window,
   c stands. A window much wider than 1.5 lets the curve's bend in log d pull the line
   (docs/lesson5_intrinsic_dimension.md).
Each seed's d_int is its own points' line. The headline is one line through every seed's points,
from the mean curve's c (grid) or the mean of the seeds' c (bisect, each seed at its own d).

The interval: the 95 % bootstrap interval of the headline over the seeds (the 2.5th and 97.5th
percentiles of the headline recomputed on BOOTSTRAP resamples of the seeds, with replacement),
given for 3 or more seeds that all cross inside the range (not already at its first d).
"""

from __future__ import annotations

import functools
import math
import random
import statistics
from dataclasses import asdict, dataclass

from distid import runtime

BOOTSTRAP = 10_000  # resamples of the seeds
WINDOW = 1.5  # sweep.fit_window's default: the line goes through points within this factor of the crossing


@dataclass
class Crossing:
    """Where a curve first reaches t: d (None if never), and whether it was at or below the grid's start."""

    d: float | None
    below_grid: bool = False  # the first grid point already reaches t: d_int ≤ d[0]
    bracket: tuple | None = None  # (d before, d after) the interpolation ran between
    fit: tuple | None = None  # (points, lowest d, highest d) the line went through; None: the interpolation stands

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


def fitted(points: list[tuple[int, float]], t: float, start: Crossing, window: float = WINDOW) -> Crossing:
    """start (an interpolated crossing), refined by the least-squares line a = α + β·log d through
    the (d, accuracy) points within a factor `window` of it; start itself where the line cannot be
    trusted (< 3 points or one d, β ≤ 0, the answer outside the window) or start is not a crossing."""
    if start.d is None or start.below_grid:
        return start
    near = [(math.log(d), a) for d, a in points if abs(math.log(d / start.d)) <= math.log(window)]
    if len(near) < 3 or len({x for x, _ in near}) < 2:
        return start
    mx, ma = statistics.fmean(x for x, _ in near), statistics.fmean(a for _, a in near)
    beta = sum((x - mx) * (a - ma) for x, a in near) / sum((x - mx) ** 2 for x, _ in near)
    if beta <= 0 or abs(mx + (t - ma) / beta - math.log(start.d)) > math.log(window):
        return start
    span = (len(near), round(math.exp(min(x for x, _ in near))), round(math.exp(max(x for x, _ in near))))
    return Crossing(math.exp(mx + (t - ma) / beta), bracket=start.bracket, fit=span)


def curve(points: list[dict], seed: int | None = None) -> tuple[list[int], list[float]]:
    """(d ascending, accuracy) of the subspace points; mean over seeds, or one seed's values."""
    by_d: dict[int, list[float]] = {}
    for p in points:
        if p["kind"] == "subspace" and (seed is None or p["seed"] == seed):
            by_d.setdefault(p["x"], []).append(p["test_accuracy"])
    ds = sorted(by_d)
    return ds, [statistics.fmean(by_d[d]) for d in ds]


def pairs(points: list[dict], seed: int) -> list[tuple[int, float]]:
    """One seed's subspace points as (d, accuracy)."""
    return [(p["x"], p["test_accuracy"]) for p in points if p["kind"] == "subspace" and p["seed"] == seed]


def resampled(items: list, stat, seed: int = 0) -> tuple[float, float] | None:
    """95 % bootstrap interval of stat(resample) over BOOTSTRAP resamples of `items` with
    replacement (stat sees a resample as a list; each distinct multiset is computed once);
    None for fewer than 3 items."""
    if len(items) < 3:
        return None
    rng = random.Random(runtime.rng_seed(seed, "bootstrap"))
    once = functools.lru_cache(maxsize=None)(lambda idx: stat([items[i] for i in idx]))
    values = sorted(once(tuple(sorted(rng.choices(range(len(items)), k=len(items))))) for _ in range(BOOTSTRAP))
    return values[int(0.025 * BOOTSTRAP)], values[int(0.975 * BOOTSTRAP) - 1]


def pooled(seeds: list[tuple[list[tuple[int, float]], Crossing]], t: float, window: float) -> float:
    """The headline of seeds given as (points, interpolated crossing): the line through all their
    points, from the mean of their crossings."""
    start = Crossing(statistics.fmean(c.d for _, c in seeds))
    return fitted([p for pts, _ in seeds for p in pts], t, start, window).d


def analyse(points: list[dict], threshold: float, search: str = "grid", window: float = WINDOW) -> dict:
    """d_int for both baselines: the line through every seed's points near the crossing of the mean
    curve (grid) or of the seeds' mean crossing (bisect), each seed's own estimate, and the interval."""
    base = [p["test_accuracy"] for p in points if p["kind"] == "full"]
    if not base:
        raise ValueError("no full-training baseline among the points")
    ds, accs = curve(points)
    seeds = sorted({p["seed"] for p in points if p["kind"] == "subspace"})
    everyone = [pt for s in seeds for pt in pairs(points, s)]
    out = dict(baseline_accuracy=statistics.fmean(base), baseline_per_seed=base, grid=ds, mean_accuracy=accs,
               fit_window=window)
    for name, ref in (("measured", out["baseline_accuracy"]), ("fixed_1.0", 1.0)):
        t = threshold * ref
        starts = [crossing(*curve(points, s), t) for s in seeds]
        per_seed = [fitted(pairs(points, s), t, c, window) for s, c in zip(seeds, starts)]
        found = [c.d for c in per_seed if c.d is not None]
        both = len(found) == len(seeds)
        if search == "grid":
            mean = fitted(everyone, t, crossing(ds, accs, t), window)
            label = mean.label(ds[-1]) if ds else "—"
        else:  # each seed has its own d values: the line through all of them, from the seeds' mean crossing
            below = any(c.below_grid for c in per_seed)
            mean = Crossing(None if not both else statistics.fmean(found) if below else
                            pooled([(pairs(points, s), c) for s, c in zip(seeds, starts)], t, window),
                            below_grid=below)
            label = (f"not reached by {len(seeds) - len(found)} of {len(seeds)} seeds" if not both
                     else f"≤ {mean.d:,.0f}" if mean.below_grid else f"{mean.d:,.0f}")
        spread = both and not any(c.below_grid for c in per_seed)
        ci = resampled([(pairs(points, s), c) for s, c in zip(seeds, starts)],
                       lambda chosen: pooled(chosen, t, window)) if spread else None
        out[name] = dict(
            target_accuracy=t, d_int=mean.d, d_int_label=label, crossing=asdict(mean), interval=ci,
            brackets=[c.bracket for c in per_seed], fits=[c.fit for c in per_seed],
            per_seed=[c.d for c in per_seed], seeds_reached=len(found), seeds=len(seeds),
            seed_min=min(found) if found else None, seed_max=max(found) if found else None,
            seed_std=statistics.stdev(found) if len(found) > 1 else None)
    return out
