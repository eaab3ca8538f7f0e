"""matplotlib (an optional dependency) for the reports: pyplot on the file-only Agg backend, or None;
`save`, the one way a report writes a chart, refuses a chart whose texts overlap; helpers that place
direct labels so that they do not."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

SLACK_PX = 1.0  # texts may touch, or share this many pixels, without counting as overlapping


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display needed), or None when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def drawn_texts(fig) -> list:
    """The Text artists (annotations included) that drawing `fig` renders, in drawing order: visible,
    not empty, and — for tick labels — only the ticks matplotlib draws (those inside the view)."""
    from matplotlib.text import Text

    seen, plain = [], Text.draw

    def record(self, renderer):
        if self.get_visible() and self.get_text().strip():
            seen.append(self)
        return plain(self, renderer)

    Text.draw = record
    try:
        fig.canvas.draw()
    finally:
        Text.draw = plain
    return list(dict.fromkeys(seen))


def _overlap(a, b) -> bool:
    """Whether two window extents share more than SLACK_PX in both directions."""
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > SLACK_PX) and (min(a.y1, b.y1) - max(a.y0, b.y0) > SLACK_PX)


def _outside(box, fig_box) -> bool:
    return (box.x0 < fig_box.x0 - SLACK_PX or box.y0 < fig_box.y0 - SLACK_PX
            or box.x1 > fig_box.x1 + SLACK_PX or box.y1 > fig_box.y1 + SLACK_PX)


def check_text(fig) -> None:
    """Raise ValueError (one line, naming the strings) if a text of `fig` runs outside the figure or
    overlaps another. Checked: every Text artist the canvas draws — suptitle and figure texts, axes
    titles, axis labels, the tick labels matplotlib draws (major and minor; tick labels of one axis
    count like any other text, so crowded ticks fail too), the axis offset text, annotations and
    ax.text, legend entries and titles — each by its window extent (rotation included) after
    `fig.canvas.draw()`. Two texts overlap when their extents share more than SLACK_PX pixels both
    across and up; a text is outside when its extent leaves the figure by more than SLACK_PX. Not
    checked: texts against lines, markers or patches."""
    from matplotlib.text import Text

    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # an annotation's text, not its arrow
    for t, box in zip(texts, boxes):
        if _outside(box, fig.bbox):
            raise ValueError(f"text {t.get_text()!r} runs outside the figure")
    for i, (t, a) in enumerate(zip(texts, boxes)):
        for u, b in zip(texts[i + 1:], boxes[i + 1:]):
            if _overlap(a, b):
                raise ValueError(f"texts overlap: {t.get_text()!r} and {u.get_text()!r}")


STRICT = "DISTID_STRICT_CHARTS"  # set (to 1) by the docs generator and the tests: an overlap fails the run


def save(fig, path: Path, dpi: int = 110) -> None:
    """Check `fig` at `dpi` (`check_text`: what is checked is what is written), write it to `path`
    and close it. Texts that overlap: with DISTID_STRICT_CHARTS=1 (the docs generator, the tests) a
    ValueError, the figure closed and nothing written; otherwise a one-line warning, and the chart is
    written all the same (a finished run does not fail on its chart's labels)."""
    plt = pyplot()
    try:
        fig.set_dpi(dpi)
        try:
            check_text(fig)
        except ValueError as e:
            if os.environ.get(STRICT) == "1":
                raise
            print(f"warning: {path}: {e}", file=sys.stderr)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def spread(wanted: list[float], gap: float, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """Positions (same order and units as `wanted`, shape [n]) at least `gap` apart inside [lo, hi],
    each as near its wanted place as a greedy pass allows: sorted, pushed up past the one below, then
    pushed down under the one above and under `hi`; evenly spaced when they cannot all fit."""
    order = sorted(range(len(wanted)), key=lambda i: wanted[i])
    if len(order) > 1 and (len(order) - 1) * gap > hi - lo:
        step = (hi - lo) / (len(order) - 1)
        return [lo + step * order.index(i) for i in range(len(wanted))]
    at = [min(max(wanted[i], lo), hi) for i in order]
    for k in range(1, len(at)):
        at[k] = max(at[k], at[k - 1] + gap)
    for k in range(len(at) - 1, -1, -1):
        at[k] = min(at[k], hi if k == len(at) - 1 else at[k + 1] - gap)
    out = [0.0] * len(wanted)
    for k, i in enumerate(order):
        out[i] = at[k]
    return out


def label_column(ax, points: list[tuple[float, float]], texts: list[str], colors: list, x_text: float,
                 fontsize: float = 7, pad: float = 0.01) -> None:
    """Direct labels in a column at data x `x_text`, right-aligned, each joined to its point (data
    coordinates, [n] pairs) by a thin leader line, their heights spread (`spread`) one text line apart
    inside the axes. Call it once the axes' limits, the figure's layout and its dpi are final."""
    to_axes = ax.transAxes.inverted()
    ys = [to_axes.transform(ax.transData.transform(p))[1] for p in points]
    height_pt = ax.get_window_extent().height * 72 / ax.figure.dpi
    placed = spread(ys, 1.25 * fontsize / height_pt, pad, 1 - pad)
    for (x, y), y_text, text, color in zip(points, placed, texts, colors):
        ax.annotate(text, (x, y), xytext=(x_text, y_text), textcoords=("data", "axes fraction"), ha="right",
                    va="center", fontsize=fontsize, color=color,
                    arrowprops=dict(arrowstyle="-", color=color, lw=0.5, alpha=0.7, relpos=(1, 0.5), shrinkA=1,
                                    shrinkB=3))


def _free(box, taken: list, inside, pad_px: float) -> bool:
    """Whether `box` lies inside `inside` and, grown by pad_px on every side, overlaps nothing in `taken`."""
    grown = box.padded(pad_px)
    return inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1) and \
        not any(_overlap(grown, t) for t in taken)


def label_points(ax, points: list[tuple[float, float]], texts: list[str], fontsize: float = 8,
                 avoid: list | None = None) -> None:
    """Labels beside scattered points (data coordinates, [n] pairs), placed greedily in order: for
    each, the first spot on rings of growing radius around its point whose text box overlaps no label
    placed before, no box in `avoid` (display boxes: markers, a legend) — LABEL_PAD_PT apart — and
    stays inside the axes; a thin leader line once it stands off its point. Call it once the axes'
    limits, the figure's layout and its dpi (the one `save` writes at: text widths do not scale
    exactly with it) are final."""
    from matplotlib.text import Text

    renderer = ax.figure.canvas.get_renderer()
    inside, taken = ax.get_window_extent(renderer), list(avoid or [])
    for (x, y), text in zip(points, texts):
        note = ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=fontsize, va="center",
                           arrowprops=dict(arrowstyle="-", color="dimgrey", lw=0.6, shrinkA=0, shrinkB=4))
        box = next((b for r in RINGS_PT for b in [_place(note, r, taken, inside, renderer)] if b is not None), None)
        if box is None:  # nowhere free: beside the point, for check_text to report
            note.xyann = (RINGS_PT[0], 0)
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer)
        if math.hypot(*note.xyann) <= RINGS_PT[0]:
            note.arrowprops = note.arrow_patch = None
        taken.append(box)


RINGS_PT = (7, 14, 24, 36, 50, 66, 84, 104, 126)  # label_points' radii, points from the point
LABEL_PAD_PT = 1.5  # room label_points keeps between a label and the labels and markers placed before it
ANGLES = [math.radians(a) for a in (30, -30, 150, -150, 0, 180, 90, -90, 60, -60, 120, -120)]


def _place(note, r: float, taken: list, inside, renderer):
    """Move `note` to radius r (points) at each of ANGLES in turn; its display box at the first spot
    `_free` of `taken` and inside `inside`, or None."""
    from matplotlib.text import Text

    for a in ANGLES:
        dx, dy = r * math.cos(a), r * math.sin(a)
        note.xyann = (dx, dy)
        note.set_ha("left" if dx > 1 else "right" if dx < -1 else "center")
        note.update_positions(renderer)
        box = Text.get_window_extent(note, renderer)  # the text, not its leader line
        if _free(box, taken, inside, LABEL_PAD_PT * note.figure.dpi / 72):
            return box
    return None


def marker_boxes(ax, xs: list[float], ys: list[float], size_pt: float = 8) -> list:
    """Display boxes ([n] Bboxes) of markers `size_pt` across at data points, for label_points' `avoid`."""
    from matplotlib.transforms import Bbox

    half = size_pt * ax.figure.dpi / 72 / 2
    return [Bbox.from_extents(px - half, py - half, px + half, py + half)
            for px, py in ax.transData.transform(list(zip(xs, ys)))]
