"""One meaning per byte figure: compare's headline ratio is of wire bytes, checked
against an independent computation from the MLP's parameter shapes; the loopback interface's
counters agree with the wire figure where gloo runs the ring algorithms, and with gloo's own
algorithm where it does not; reports never mix figures of different meanings."""

import math

import pytest

from datasets_for_tests import have_mnist

SHAPES = [(200, 784), (200,), (200, 200), (200,), (10, 200), (10,)]  # the 784-200-200-10 MLP
D = sum(math.prod(s) for s in SHAPES)
D_SUB, LORA_R = 1600, 1  # configs/mnist_compare.toml: d = 1,600; LoRA's closest budget is r = 1


def padded(shape, n):
    """Elements of a parameter split on dim 0 into n equal rows (FSDP2 pads the last)."""
    rows, cols = shape[0], math.prod(shape[1:])
    return -(-rows // n) * n * cols


def expected_ratios(n):
    """Wire bytes per step per rank of each cell ÷ full DDP's, from the shapes alone."""
    ring_ar, ring_rs = 2 * (n - 1) / n, (n - 1) / n  # all-gather sends (n−1)/n of the full array too
    ddp = ring_ar * 4 * D
    full_fsdp = 2 * ring_rs * 4 * sum(padded(s, n) for s in SHAPES) + ring_rs * 4 * sum(padded(s, n) for s in SHAPES)
    # LoRA r on every Linear: A [r, in], B [out, r]; each unit (base + adapters) gathered twice,
    # only A and B reduce-scattered
    adapters = [(LORA_R, 784), (200, LORA_R), (LORA_R, 200), (200, LORA_R), (LORA_R, 200), (10, LORA_R)]
    gathered = sum(padded(s, n) for s in SHAPES + adapters)
    lora_fsdp = 2 * ring_rs * 4 * gathered + ring_rs * 4 * sum(padded(s, n) for s in adapters)
    # subspace under FSDP: θ₀ sharded (one all-gather of ⌈D/n⌉ per rank), d all-reduced
    sub_fsdp = ring_rs * 4 * n * -(-D // n) + ring_ar * 4 * D_SUB
    return {"full · fsdp": full_fsdp / ddp, "lora · fsdp": lora_fsdp / ddp, "subspace/fastfood · fsdp": sub_fsdp / ddp}


def test_expected_ratios_are_the_measured_figures():
    """The independent computation gives the wire bytes per step compare measured on 4 ranks: 1,195,260
    for full DDP, 1,244,004 for LoRA under FSDP, 607,236 for the subspace under FSDP (1.503× for full
    training under FSDP)."""
    r = expected_ratios(4)
    assert r["full · fsdp"] == pytest.approx(1.503, abs=5e-4)
    assert r["lora · fsdp"] == pytest.approx(1_244_004 / 1_195_260, rel=1e-6)
    assert r["subspace/fastfood · fsdp"] == pytest.approx(607_236 / 1_195_260, rel=1e-6)


@pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
@pytest.mark.parametrize("n", [2, 4])
def test_compare_headline_ratio_is_of_wire_bytes(dist_pool, tmp_path, n):
    from distid.experiments.methods.compare import to_markdown, wire_ratios

    pool = dist_pool(n)
    cells = [pool.run("rank_targets:compare_cell", m, s, str(tmp_path), timeout=240)[0]
             for m, s in (("full", "ddp"), ("full", "fsdp"), ("lora", "fsdp"), ("subspace", "fsdp"))]
    wire_ratios(cells)
    got = {c["cell"]: c["wire_ratio_vs_full_ddp"] for c in cells}
    assert got["full · ddp"] == 1.0
    for cell, ratio in expected_ratios(n).items():
        assert got[cell] == pytest.approx(ratio, rel=1e-9), cell
    assert round(got["full · fsdp"], 2) == 1.50
    for c in cells:  # compare.json's keys: every byte figure names its meaning
        assert _unnamed_byte_keys(c) == [], c["cell"]
    md = to_markdown(cells, dict(model="mlp", dataset="mnist", world_size=n, backend="gloo", steps=13,
                                 global_batch=128, d=D_SUB, machine=dict(cpu="x", cores=2, torch="t")))
    assert f"| {got['lora · fsdp']:.4f} |" in md


def _unnamed_byte_keys(record: dict) -> list[str]:
    """Keys of a report record that hold communicated bytes without saying which figure (wire,
    payload, measured); memory figures (state_bytes_per_rank) are not communication."""
    comm = [k for k in record if k.startswith("comm_") and "bytes" in k or "bytes_per_step" in k
            or k.endswith(("_setup_bytes", "_warmup_bytes", "_formula"))]
    return [k for k in comm if not any(m in k for m in ("wire", "payload", "measured"))]


def test_frontier_rows_name_their_byte_figures():
    """frontier.json's rows and seed runs: every byte key names its meaning, and bytes to a target
    are summed from wire keys only (a payload figure planted beside them changes nothing)."""
    from distid.experiments.communication.frontier import Cell, reach, summarize

    seed = dict(seed=0, wire_bytes_per_step=30.0, wire_setup_bytes=100.0, wire_warmup_bytes=60.0,
                payload_bytes_per_step=1e9, trainable_params=5, lora_rank=None, comm_wire_formula={"total": 30},
                comm_calls_per_step={"all_reduce": 1.0}, comm_steps_warmup=2, steps=10, test_accuracy=0.9,
                eval_curve=[(5, 0.1, 0.5), (10, 0.2, 0.9)], step_time_s=0.01, wall_time_s=1.0,
                state_bytes={"total": 100, "strategy": 0}, strategy_state_bytes={})
    row = summarize(Cell("DDP", "DDP", ()), [seed])
    assert _unnamed_byte_keys(row) == [] and _unnamed_byte_keys(seed) == []
    assert reach(row, 0.85) == dict(step=10, wire_bytes=100 + 60 + 8 * 30)


def test_reports_never_mix_meanings():
    """Every byte key of compare's cells and the frontier's rows names its meaning, and the ratio and
    the frontier's sums read wire keys only (from the code that writes them)."""
    import inspect

    from distid.experiments.communication import frontier
    from distid.experiments.methods import compare
    from distid.observe.summary import Summary

    byte_fields = [f for f in Summary.__dataclass_fields__ if f.startswith("comm_") and "bytes" in f or
                   f.endswith("_formula")]
    assert all(any(m in f for m in ("wire", "payload", "measured")) for f in byte_fields), byte_fields
    ratio_src = inspect.getsource(compare.wire_ratios)
    assert "payload" not in ratio_src and "wire_bytes_per_step" in ratio_src
    sums = inspect.getsource(frontier.cumulative_bytes) + inspect.getsource(frontier.run_seed)
    assert "payload" not in sums and sums.count("wire_") >= 6


@pytest.mark.alone  # the loopback counts every process's bytes: no other test may run beside it
def test_interface_counts_what_gloo_sends(dist_pool):
    """2 ranks, 16 MiB each: all-reduce and all-gather within 3 % of the wire figure (TCP/IP headers,
    ≈ 0.1 %); reduce-scatter within 3 % of gloo's all-reduce (twice the ring's); broadcast within 3 %
    of (N−1)/N·S a rank — the interface counts every rank's bytes together."""
    import psutil

    if "lo" not in psutil.net_io_counters(pernic=True):
        pytest.fail("no loopback interface 'lo' on this machine")
    rows = {r["op"]: r for r in dist_pool(2).run("rank_targets:interface_bytes", 16 * 2**20, timeout=120)[0]}
    S = 16 * 2**20
    for op, r in rows.items():
        assert r["measured"] == pytest.approx(r["gloo"], rel=0.03), (op, r)
    assert rows["all_reduce"]["measured"] == pytest.approx(S, rel=0.03)  # 2(N−1)/N·S at N = 2
    assert rows["all_gather"]["measured"] == pytest.approx(S / 2, rel=0.03)
    assert rows["reduce_scatter"]["measured"] == pytest.approx(2 * rows["reduce_scatter"]["wire"], rel=0.03)
    assert rows["broadcast"]["measured"] == pytest.approx(S / 2, rel=0.03)


@pytest.mark.alone  # the loopback counts every process's bytes: another test's traffic in its idle windows skews it
@pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
def test_a_run_measures_its_interface_bytes_when_asked(dist_pool, tmp_path):
    """dist.measure_interface = "lo": full training under DDP on 4 ranks sends 2(N−1)/N·4·D bytes per
    step on the wire (its payload is 4·D); the interface carries that plus TCP/IP headers (within 3 %)."""
    from datasets_for_tests import DATA_ROOT

    over = [f"data.root={DATA_ROOT}", "train.steps=14", "train.method=full", "train.lr=1e-3",
            "dist.measure_interface=lo"]
    s, _ = dist_pool(4).run("rank_targets:train_run", over, str(tmp_path), timeout=180)[0]
    assert s["comm_payload_bytes_per_step"]["total"] == 4 * D
    assert s["comm_wire_bytes_per_step"]["total"] == pytest.approx(1.5 * 4 * D)
    assert s["comm_measured_interface"] == "lo"
    assert s["comm_measured_bytes_per_step"] == pytest.approx(1.5 * 4 * D, rel=0.03)
    steps, seconds, _ = zip(*s["eval_curve"])
    assert seconds[-1] < s["wall_time_s"]  # the idle windows are not training time


@pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
def test_an_unknown_interface_is_refused_in_one_line(tmp_path):
    import subprocess
    import sys

    from datasets_for_tests import DATA_ROOT, REPO

    out = subprocess.run([sys.executable, "-m", "distid.train", "--set", f"data.root={DATA_ROOT}", "--set",
                          "train.steps=2", "--set", "dist.measure_interface=nosuch0", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "no such network interface" in out.stderr and "'nosuch0'" in out.stderr
