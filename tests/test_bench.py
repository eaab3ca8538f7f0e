"""distid.experiments.bench: `--quick` runs every section end to end (structure, not speed: no timed assertion),
`steps` alone still works, and the α–β fit and the scaling model's formulas are right."""

import json
import math
import sys

import pytest

from distid.experiments.bench import collectives, scaling
from procs import run


def test_bench_quick_writes_every_section(tmp_path):
    out = run([sys.executable, "-m", "distid.experiments.bench", "--quick", "--out", str(tmp_path)], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "bench.json").read_text())
    assert r["quick"] and r["machine"]["cores"] >= 1 and len(r["load"]["start"]) == 3
    kinds = {row["kind"] for row in r["kernels"]["rows"]}
    assert kinds == {"dense", "sparse", "fastfood"} and r["kernels"]["copy"]["copy_GBps"] > 0
    assert all(row["matvec_over_floor"] > 0 for row in r["kernels"]["rows"] if row["kind"] == "dense")
    assert all(row["matvec_over_copy"] > 0 and row["rmatvec_over_copy"] > 0 and row["bytes_per_param"] > 0
               for row in r["kernels"]["rows"])
    assert [m["case"] for m in r["memory"]["rows"]] == ["full", "subspace", "layerwise"], r["memory"].get("skipped")
    assert all(m["peak"] >= m["at_rest"] > 0 for m in r["memory"]["rows"])
    assert [s["world_size"] for s in r["steps"]] == [1, 2]
    for s in r["steps"]:
        rows = {row["variant"]: row for row in s["rows"]}
        assert set(rows) == {"full", "subspace/fastfood", "subspace/sparse", "subspace/dense", "lora"}
        assert rows["full"]["ratio_to_full"] == 1.0 and rows["subspace/fastfood"]["trainable"] == 750
    assert {row["world_size"] for row in r["collectives"]["rows"]} == {2} == {row["world_size"] for row in r["interface"]}
    assert set(r["collectives"]["fit"]) == {"ring", "backend"}
    assert len(r["scaling"]["rows"]) == 3 * 2 * 3 * len(scaling.GPU_COUNTS)
    assert [t["target"].split()[0] for t in r["targets"]] == ["Fastfood", "Fastfood", "dense", "Fastfood", "layerwise"]
    md = (tmp_path / "bench.md").read_text()
    for head in ("## 1. Projection kernels", "## 1b. Memory", "## 2. Training step", "## 3. All-reduce", "a MODEL", "## Targets"):
        assert head in md


def test_bench_rejects_unknown_section():
    out = run([sys.executable, "-m", "distid.experiments.bench", "kernel"], timeout=120)
    assert out.returncode == 2 and "unknown section 'kernel'" in out.stderr


def test_alpha_beta_fit_recovers_the_model():
    alpha, beta = 30e-6, 1 / 2e9
    rows = [dict(world_size=n, bytes=s, ring_ms=1e3 * (2 * (n - 1) * alpha + 2 * (n - 1) / n * s * beta))
            for n in (2, 3, 4) for s in (2**12, 2**20, 2**24)]
    fit = collectives.fit_alpha_beta(rows, "ring_ms")
    assert fit["alpha_us"] == pytest.approx(30, rel=1e-6) and fit["bandwidth_GBps"] == pytest.approx(2, rel=1e-6)
    assert fit["max_rel_error"] < 1e-9


def test_scaling_formulas():
    a, nv, ib = 5e-6, scaling.LINKS["nvlink"]["GBps"] * 1e9, scaling.LINKS["ib"]["GBps"] * 1e9
    S = 4e9
    assert sum(scaling.all_reduce(S, 8, a)) == pytest.approx(14 * a + 2 * 7 / 8 * S / nv)  # one NVLink ring
    lat, bw = scaling.all_reduce(S, 64, a)  # 8 nodes: in-node RS + AG, across nodes the cheaper of ring and tree
    ring = 14 * a + 7 / 4 * S / nv + 14 * a + 7 / 4 * S / 8 / ib
    tree = 14 * a + 7 / 4 * S / nv + 6 * a + 2 * S / 8 / ib
    assert lat + bw == pytest.approx(min(ring, tree))
    assert sum(scaling.all_gather(S, 16, a)) == pytest.approx(a + S / 2 / 8 / ib + 7 * a + 7 / 8 * S / nv)
    row = scaling.step_comm("subspace", "ddp", "7B", 4096, d=1000, r=8, alpha=a)
    assert row["bytes"] == 4000 and row["trainable"] == 1000
    assert scaling.step_comm("full", "fsdp", "125M", 8, 1000, 8, a)["bytes"] == 3 * 4 * 125e6
    lora = scaling.step_comm("lora", "ddp", "125M", 8, 1000, 8, a)
    assert lora["trainable"] == 8 * 12 * 18 * 768 and math.isclose(lora["bytes"], 4 * lora["trainable"])
