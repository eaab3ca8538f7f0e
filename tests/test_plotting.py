"""The charts' text check (experiments/plotting.py) and every chart drawn through it from small
inputs shaped like what its caller passes: a chart whose texts overlap or leave the figure fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distid.config import load_config
from distid.experiments import plotting
from distid.experiments.communication import links, report, shaped_report
from distid.experiments.communication.frontier import FAMILIES
from distid.experiments.intrinsic import report as id_report
from distid.experiments.methods import compare, convergence

plt = plotting.pyplot()
pytestmark = pytest.mark.skipif(plt is None, reason="matplotlib not installed")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def checked(monkeypatch):
    """Every figure that goes through plotting.save, after its check passed: [figure]."""
    seen, check = [], plotting.check_text

    def record(fig):
        check(fig)
        seen.append(fig)

    monkeypatch.setattr(plotting, "check_text", record)
    return seen


def test_the_check_names_two_overlapping_texts():
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "first label")
    ax.text(0.52, 0.5, "second label")
    with pytest.raises(ValueError, match="overlap: 'first label' and 'second label'"):
        plotting.check_text(fig)
    plt.close(fig)


def test_the_check_names_a_text_outside_the_figure():
    fig, ax = plt.subplots()
    ax.text(1.05, 0.5, "falls off the right edge", transform=ax.transAxes)
    with pytest.raises(ValueError, match="'falls off the right edge' runs outside the figure"):
        plotting.check_text(fig)
    plt.close(fig)


def test_the_check_names_crowded_tick_labels_and_passes_a_clean_figure(tmp_path):
    fig, ax = plt.subplots(figsize=(4, 3))
    fig.subplots_adjust(bottom=0.3)
    ax.set_xticks(range(6), [f"label number {i}" for i in range(6)])
    ax.set_xlim(-4, 9)  # every label inside the figure: only their crowding fails
    with pytest.raises(ValueError, match="'label number 0' and 'label number 1'"):
        plotting.save(fig, tmp_path / "crowded.png")
    assert not (tmp_path / "crowded.png").exists()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a line")
    ax.set(title="a title", xlabel="x", ylabel="y")
    ax.legend()
    fig.tight_layout()
    plotting.save(fig, tmp_path / "clean.png")
    assert (tmp_path / "clean.png").stat().st_size > 0


def test_spread_keeps_order_and_gap_inside_the_bounds():
    assert plotting.spread([0.5, 0.1, 0.9], 0.1) == [0.5, 0.1, 0.9]  # already apart: unmoved
    got = plotting.spread([0.5, 0.5, 0.5, 0.99], 0.1)
    assert sorted(got) == got and all(b - a >= 0.1 - 1e-9 for a, b in zip(got, got[1:])) and got[-1] <= 1.0
    assert plotting.spread([0.5] * 3, 1.0) == [0.0, 0.5, 1.0]  # cannot fit: evenly spaced


def frontier_rows() -> tuple[list[dict], list[dict]]:
    """Frontier rows (frontier.json's cells): one for every family, four of the first crowded onto
    one point, every third family at the same accuracy; and the two targets."""
    targets = [dict(fraction=0.95, accuracy=0.91), dict(fraction=0.9, accuracy=0.86)]
    rows = []
    for k, fam in enumerate(FAMILIES):
        for j in range(1 if k else 4):
            acc = 0.95 if k % 3 == 0 else 0.8 + 0.01 * k
            hit = dict(step=50, wire_bytes=1e6 * (k + 1))
            rows.append(dict(cell=f"{fam} cell {j}", family=fam, test_accuracy=acc, test_accuracy_min=acc - 0.01,
                             test_accuracy_max=acc + 0.01, wire_bytes_per_step=1e3 * (k + 1),
                             train_time_s=2.0 + 0.1 * k, to_target=[hit, hit], compute_step_s=0.005,
                             seeds=[dict(wire_setup_bytes=1e3)],
                             calls_per_step={"all_gather": 1.0} if "Sparse" in fam else {"all_reduce": 1.0}))
    rows.append(dict(cell="refused cell", family=FAMILIES[0], refused="no"))
    return rows, targets


def test_the_frontier_and_links_charts_pass_the_check(tmp_path, checked):
    rows, targets = frontier_rows()
    shaped = json.loads((REPO / "tests" / "shaped_tiny.json").read_text())
    assert report.plot(rows, tmp_path / "frontier.png", FAMILIES, targets)
    assert links.plot(rows, targets, 2, [2, 64], tmp_path / "links.png", FAMILIES, [shaped])
    frontier, link_fig = checked
    legend = [t.get_text() for t in frontier.axes[1].get_legend().get_texts()]
    assert "target: 95% of DDP's accuracy (0.9100)" in legend and "Pareto front" in legend
    names = {t.get_text() for ax in link_fig.axes for t in ax.texts}
    assert {r["cell"] for r in rows if "refused" not in r} == names  # every line named


def test_links_gives_each_cell_of_a_family_its_own_style():
    styles = links.cell_styles(["a", "b", "c"], ["DDP", "DDP", "LoRA"], FAMILIES)
    assert len({styles["a"], styles["b"]}) == 2 and styles["a"][1] != styles["b"][1]


@pytest.mark.parametrize("rate", [None, 40e6, 1e9])  # the tiny run's own rate, and others moved onto it
def test_the_shaped_chart_passes_the_check(tmp_path, checked, rate):
    shaped = json.loads((REPO / "tests" / "shaped_tiny.json").read_text())
    if rate:
        old = next(r["rate"] for r in shaped["rows"] if r["rate"])
        for r in shaped["rows"]:
            r["rate"] = r["rate"] and r["rate"] * rate / old
        shaped["curves"] = {c: [[x * rate / old, y] for x, y in pts] for c, pts in shaped["curves"].items()}
    assert shaped_report.plot(shaped, "shared", tmp_path / "shaped.png") is None and len(checked) == 1


def sweep_result() -> dict:
    """A grid sweep's result (intrinsic/report.finish): points, the mean curve and the analysis."""
    pts = [dict(kind="full", x=0, seed=0, test_accuracy=0.96, trainable_params=10_000, epochs=1.0)]
    pts += [dict(kind="subspace", x=d, seed=s, test_accuracy=a + 0.01 * s, trainable_params=d, epochs=1.0)
            for d, a in ((100, 0.5), (300, 0.8), (1000, 0.9)) for s in (0, 1)]
    pts += [dict(kind="lora", x=1, seed=0, test_accuracy=0.93, trainable_params=2_000, epochs=1.0)]
    line = dict(target_accuracy=0.86, d_int=500.0, d_int_label="500")
    return dict(points=pts, analysis=dict(grid=[100, 300, 1000], mean_accuracy=[0.505, 0.805, 0.905],
                                          baseline_accuracy=0.96, measured=line,
                                          **{"fixed_1.0": dict(line, target_accuracy=0.9, d_int_label="900")}))


@pytest.mark.parametrize("said", [False, True])
def test_the_intrinsic_chart_passes_the_check_and_names_said(tmp_path, checked, said):
    cfg = load_config(None, [f"subspace.said={'true' if said else 'false'}"])
    assert id_report.plot(sweep_result(), cfg, tmp_path / "id_curve.png")
    ax = checked[0].axes[0]
    texts = [ax.get_title()] + [t.get_text() for t in ax.get_legend().get_texts()]
    assert ("SAID" in texts[0] and "SAID subspace, mean over seeds" in texts
            and ax.get_xlabel() == "trainable parameters (SAID subspace: d)") == said
    assert said or not any("SAID" in t for t in texts)


def test_the_compare_and_convergence_charts_pass_the_check(tmp_path, checked):
    cells = [dict(cell=compare.cell_name(m, p, s), strategy=s, wire_bytes_per_step=8e7 / (10 ** k),
                  test_accuracy=0.9 - 0.1 * k, step_time_s=0.01 * (k + 1), state_bytes_per_rank=[2**20 * (20 + 40 * k)])
             for k, (m, p) in enumerate(compare.METHODS) for s in compare.STRATEGIES]
    assert compare.plot(cells + [dict(cell="subspace/dense · fsdp", refused="no")], tmp_path / "compare.png")
    curves = [dict(method=m, trainable_params=1000 * (k + 1), eval_curve=[(24 * i, 1.5 * i, 0.5 + 0.04 * i)
                                                                           for i in range(1, 10)])
              for k, m in enumerate(convergence.METHODS)]
    assert convergence.plot(curves, load_config(None), tmp_path / "convergence.png")
    assert len(checked) == 2


def test_the_intrinsic_charts_minor_ticks_are_labelled_only_over_a_few_decades():
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    label = id_report.minor_label(ax.xaxis)
    ax.set_xlim(100, 5000)
    assert [label(v, 0) for v in (200, 300, 5000)] == ["200", "", "5,000"]
    ax.set_xlim(10, 1e6)
    assert label(200, 0) == ""
    plt.close(fig)


def test_outside_the_docs_an_overlap_warns_and_the_chart_is_still_written(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(plotting.STRICT, raising=False)  # a student's run, not the docs generator
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.text(0.5, 0.5, "one label here")
    ax.text(0.5, 0.5, "another label")
    plotting.save(fig, tmp_path / "run.png")
    assert (tmp_path / "run.png").stat().st_size > 0
    assert "warning:" in capsys.readouterr().err
