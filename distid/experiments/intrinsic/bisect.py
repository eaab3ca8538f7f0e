"""Bisection on log x (x = d, or a LoRA rank): the fewest training runs that pin down where one
seed's accuracy curve first reaches a target t.

A seed's trained points (x ascending, accuracy) bracket t at (lo, hi): hi is the first point that
reaches t, read as `dimension.crossing` reads a curve, and lo the point before it. The bracket is
settled when hi/lo ≤ 1 + width, or hi − lo ≤ 1 (x is an integer). While hi/lo > WIDE the next
probe is the bracket's middle in log x (plain bisection: a chord across a wide, curved stretch of
the curve misplaces the crossing); then the next probes are the pair c·(1 + width)^∓0.4 around
the crossing c interpolated in log x, kept a sixteenth of the bracket's log range away from either
end: where the curve is smooth the pair settles the bracket in one round, and where it is not the
bracket is at least a sixteenth narrower per round (a safeguarded regula falsi), so that noise
cannot stall the search.
Without a bracket: the first seed probes the middle of [x_min, x_max] in log x and then the end of
the range the crossing must lie towards; a later seed starts from a bracket of ratio (1 + width)^0.9
around the mean crossing of the seeds before it (one round of two runs, which settles it when the
seeds agree) and, if that misses, steps outwards by max((1 + width)^0.9, top/bottom), a reach that
doubles in log x each step, within [x_min, x_max]. A bracket already within (1 + width)^1.9 takes one
probe, its middle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distid.experiments.intrinsic import dimension

WIDE = 4.0  # brackets wider than this ratio are halved in log x before interpolating


@dataclass(frozen=True)
class Bracket:
    """Where one seed's points put the crossing of t: lo < crossing ≤ hi (None: no point there)."""

    lo: int | None  # the point before the first one reaching t (None: the first point already does)
    hi: int | None  # the first point reaching t (None: none does)
    settled: bool  # nothing more to train: narrow enough, or at the end of [x_min, x_max]


def bracket(curve: dict[int, float], t: float, x_min: int, x_max: int, width: float) -> Bracket:
    """The bracket of t on curve {x: accuracy} (one seed's trained points)."""
    xs = sorted(curve)
    first = next((i for i, x in enumerate(xs) if curve[x] >= t), None)
    if not xs:
        return Bracket(None, None, False)
    if first is None:
        return Bracket(xs[-1], None, xs[-1] >= x_max)
    if first == 0:
        return Bracket(None, xs[0], xs[0] <= x_min)
    lo, hi = xs[first - 1], xs[first]
    return Bracket(lo, hi, hi / lo <= 1 + width or hi - lo <= 1)


def probes(curve: dict[int, float], t: float, x_min: int, x_max: int, width: float,
           start: tuple[int, int] | None = None, interpolate: bool = True) -> list[int]:
    """The x values to train next for this seed and target ([] once its bracket is settled).
    start: the bracket a seed with no points yet tries first (`search` centres it on earlier seeds).
    interpolate=False: plain bisection in log x (for LoRA ranks: few, and accuracy often jumps)."""
    b = bracket(curve, t, x_min, x_max, width)
    if b.settled:
        return []
    if not curve:
        if start:
            return sorted({min(max(x, x_min), x_max) for x in start})
        return [round(math.sqrt(x_min * x_max))]
    if b.hi is None or b.lo is None:
        if not interpolate:
            return [x_max if b.hi is None else x_min]
        return _outwards(curve, t, x_min, x_max, width, up=b.hi is None)
    log_lo, log_hi = math.log(b.lo), math.log(b.hi)
    if not interpolate or b.hi / b.lo > WIDE or log_hi - log_lo <= 1.9 * math.log(1 + width):
        # plain halving; or a bracket so narrow that one probe in its middle settles both halves
        return [min(max(round(math.sqrt(b.lo * b.hi)), b.lo + 1), b.hi - 1)]
    margin = (log_hi - log_lo) / 16
    return _pair(math.log(_crossing(curve, b, t)), log_lo + margin, log_hi - margin, b.lo + 1, b.hi - 1, width)


def _crossing(curve: dict[int, float], b: Bracket, t: float) -> float:
    """The crossing of t interpolated in log x between the bracket's ends (dimension.crossing)."""
    return dimension.crossing([b.lo, b.hi], [curve[b.lo], curve[b.hi]], t).d


def _pair(guess: float, log_a: float, log_b: float, a: int, b: int, width: float) -> list[int]:
    """The probes c·(1 + width)^∓0.4 around exp(guess) (0.4: room for rounding to integers),
    each kept within [log_a, log_b] and then [a, b]."""
    half = 0.4 * math.log(1 + width)
    pair = (math.exp(min(max(g, log_a), log_b)) for g in (guess - half, guess + half))
    return sorted({min(max(round(x), a), b) for x in pair})


def _outwards(curve: dict[int, float], t: float, x_min: int, x_max: int, width: float, up: bool) -> list[int]:
    """One probe beyond every point, towards t: from one point the range's end; from more, a factor
    max((1 + width)^0.9, top/bottom) beyond the nearest one: the first step settles the bracket
    if t lies within it, and each further step reaches twice as far in log x."""
    xs = sorted(curve)
    if len(xs) == 1:
        return [x_max if up else x_min]
    step = max((1 + width) ** 0.9, xs[-1] / xs[0])
    return [min(x_max, max(round(xs[-1] * step), xs[-1] + 1))] if up else \
        [max(x_min, min(round(xs[0] / step), xs[0] - 1))]


def search(curves: list[dict[int, float]], t: float, x_min: int, x_max: int, width: float,
           interpolate: bool = True) -> tuple[int, list[int]] | None:
    """Seeds in order: (index of the first seed not yet settled, the x values it should train next);
    None when every seed is settled. A seed with no points yet starts from a bracket of ratio
    (1 + width)^0.9 centred on the mean crossing of the seeds before it (settled at once if its own
    crossing lies inside; plain bisection starts from the previous seed's bracket)."""
    crossings, start = [], None
    for i, curve in enumerate(curves):
        if crossings and interpolate:
            c, r = sum(crossings) / len(crossings), (1 + width) ** 0.45
            start = (max(x_min, round(c / r)), min(x_max, round(c * r)))
        todo = probes(curve, t, x_min, x_max, width, start, interpolate)
        if todo:
            return i, todo
        b = bracket(curve, t, x_min, x_max, width)
        if b.lo is not None and b.hi is not None:
            crossings.append(_crossing(curve, b, t))
            start = (b.lo, b.hi)
    return None
