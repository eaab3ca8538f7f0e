"""distid.experiments.communication.frontier: a tiny 2-rank run writes every file with every family; the byte bookkeeping
(cumulative bytes, with and without local steps, targets, Pareto front) and the link model's time
to a target on hand-made rows."""

import json

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.strategies.hooks import CPU_POWERSGD_ON_GPU_MACHINE
from distid.experiments.communication import links
from distid.experiments.communication.frontier import FAMILIES, cumulative_bytes, reach
from distid.experiments.communication.report import pareto
from procs import torchrun


@pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
@pytest.mark.skipif(torch.cuda.is_available(), reason=CPU_POWERSGD_ON_GPU_MACHINE)
def test_a_tiny_two_rank_frontier_writes_every_file_and_resumes(tmp_path):
    args = ["-m", "distid.experiments.communication.frontier", "--config", "configs/mnist_frontier.toml", "--set", f"data.root={DATA_ROOT}",
            "--set", "train.steps=14", "--set", "train.eval_every=7", "--set", "powersgd.start_iter=2",
            "--powersgd-ranks", "1", "--lora-ranks", "1", "--dims", "100", "--peft", "vera", "--diloco-h", "7",
            "--diloco-dims", "100", "--diloco-dims-h", "7", "--diloco-lora-ranks", "1", "--diloco-lora-h", "7",
            "--demo-topk", "4", "--sparse-density", "3", "--sparse-h", "7", "--streaming-fragments", "1",
            "--streaming-h", "7", "--redraw-dims", "100", "--redraw-k", "5", "--redraw-local", "100:7:7",
            "--out", str(tmp_path)]
    res = torchrun(2, *args, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "frontier.json").read_text())
    cells = {c["cell"]: c for c in out["cells"]}
    assert set(cells) == {"DDP", "DDP + fp16", "DDP + bf16", "DDP + PowerSGD r=1", "LoRA r=1", "subspace d=100", "VeRA",
                          "DiLoCo H=7", "subspace d=100 H=7", "LoRA r=1 H=7", "DeMo k=4", "SparseLoCo 3% H=7",
                          "Streaming DiLoCo H=7 P=1", "subspace d=100 K=5", "subspace d=100 H=7 K=7"}
    assert {c["family"] for c in cells.values()} == set(FAMILIES)
    full = cells["DDP"]["wire_bytes_per_step"]  # 2 ranks: a ring all-reduce sends 2(N−1)/N = 1× the payload
    assert cells["DDP + fp16"]["wire_bytes_per_step"] == full / 2
    assert cells["DDP + PowerSGD r=1"]["wire_bytes_per_step"] == 4 * (1 * (410 + 1184) + 410)
    assert cells["subspace d=100"]["wire_bytes_per_step"] == 400
    assert cells["DiLoCo H=7"]["wire_bytes_per_step"] == pytest.approx(full / 7)  # one all-reduce every 7 steps
    assert cells["subspace d=100 H=7"]["wire_bytes_per_step"] == pytest.approx(400 / 7)
    assert cells["VeRA"]["wire_bytes_per_step"] == 4 * 1178
    assert cells["DeMo k=4"]["wire_bytes_per_step"] == 340 * (4 + 2)  # 340 DCT components (tests/test_demo.py)
    assert cells["subspace d=100 K=5"]["wire_bytes_per_step"] == 400  # a re-draw sends nothing
    assert cells["subspace d=100 H=7 K=7"]["wire_bytes_per_step"] == pytest.approx(400 / 7)
    assert cells["DeMo k=4"]["state_bytes"]["strategy"] == 4 * 199_210 + 2 * 340 * 6  # momentum + receive buffer
    # 49 chunks of 4,096, k = 123 each: int16 indices, 2-bit values, a 20 B table; 2 syncs in 14 steps
    assert cells["SparseLoCo 3% H=7"]["wire_bytes_per_step"] == pytest.approx(2 * (6027 * 2 + 1507 + 20) / 14)
    assert cells["Streaming DiLoCo H=7 P=1"]["wire_bytes_per_step"] == pytest.approx(full / 7)  # one fragment: DiLoCo
    # the ledger's synchronisation bytes at each evaluation (7 and 14): one all-reduce of the model each
    assert cells["DiLoCo H=7"]["seeds"][0]["wire_sync_by_eval"] == {"7": 796_840, "14": 2 * 796_840}
    for c in cells.values():
        assert c["wire_bytes_per_step"] == c["wire_formula_bytes_per_step"]
        assert [step for step, _ in c["curve"]] == [7, 14] and len(c["to_target"]) == 2
    md = (tmp_path / "frontier.md").read_text()
    assert all(f"| {name} |" in md for name in cells) and "Pareto front" in md
    assert (tmp_path / "frontier.png").stat().st_size > 10_000 and (tmp_path / "links.png").stat().st_size > 10_000
    assert "Time to 90% of DDP's accuracy on named links — a model" in md
    # a second run with the same --out reuses every cell's summary.json instead of training again
    stamp = (tmp_path / "DDP" / "seed0" / "summary.json").stat().st_mtime_ns
    again = torchrun(2, *args, timeout=300)
    assert again.returncode == 0 and "step     14/14" not in again.stdout
    assert (tmp_path / "DDP" / "seed0" / "summary.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "frontier.json").read_text())["cells"] == out["cells"]


def run_(warmup_steps=3, setup=100.0, warmup=300.0, per_step=10.0, curve=((2, 0.5), (6, 0.9))):
    return dict(comm_steps_warmup=warmup_steps, wire_setup_bytes=setup, wire_warmup_bytes=warmup,
                wire_bytes_per_step=per_step,
                eval_curve=[(step, 0.1 * step, acc) for step, acc in curve])


def test_cumulative_bytes_counts_setup_warmup_then_steps():
    r = run_()
    assert cumulative_bytes(r, 2) == 100 + 200  # two of three warm-up steps
    assert cumulative_bytes(r, 5) == 100 + 300 + 2 * 10
    cell = dict(curve=[(2, 0.5), (6, 0.9)], seeds=[r])
    assert reach(cell, 0.8) == dict(step=6, wire_bytes=100 + 300 + 3 * 10)
    assert reach(cell, 0.95) is None


def test_pareto_keeps_only_undominated_cells():
    rows = [dict(cell=c, b=b, test_accuracy=a) for c, b, a in
            [("a", 10, 0.5), ("b", 20, 0.4), ("c", 30, 0.9), ("d", 30, 0.8), ("e", 5, 0.1)]]
    assert [r["cell"] for r in pareto(rows, "b")] == ["e", "a", "c"]


def test_a_cell_is_trained_again_after_a_code_or_world_size_change(monkeypatch):
    from types import SimpleNamespace

    from distid import runtime
    from distid.experiments.communication.frontier import reusable

    done = SimpleNamespace(config_hash="abc", world_size=4, code_version=runtime.code_version())
    assert reusable(done, "abc", 4)
    assert not reusable(done, "abd", 4)  # another config
    assert not reusable(done, "abc", 2)  # another world size
    monkeypatch.setattr(runtime, "_code_version", runtime.code_version() + "-edited")
    assert not reusable(done, "abc", 4)  # another code


def test_cumulative_bytes_with_local_steps_counts_the_synchronisations_done():
    r = dict(run_(), sync_period=4, wire_sync_by_eval={3: 0.0, 8: 2000.0, 10: 3000.0}, steps=10)
    assert cumulative_bytes(r, 3) == 100  # set-up only: no synchronisation yet
    assert cumulative_bytes(r, 8) == 100 + 2000  # what the ledger had booked at that evaluation
    assert cumulative_bytes(r, 10) == 100 + 3000  # the last step synchronises too


def test_the_link_model_is_the_alpha_beta_ring_formula():
    link = links.Link("test", 8e6, 1e-3, "a test")  # 1 MB/s, 1 ms
    assert links.allreduce_s(1e6, 4, link) == pytest.approx(2 * 3 * 1e-3 + 2 * 3 / 4 * 1.0)
    assert links.allreduce_s(1e6, 1, link) == 0
    seed = dict(wire_setup_bytes=100.0)
    row = dict(seeds=[seed], compute_step_s=0.01, calls_per_step={"all_reduce": 0.25},
               to_target=[dict(step=8, wire_bytes=100.0 + 1.5 * 2e6)])  # 2 MB handed in, sent 1.5× on 4 ranks
    expect = 8 * 0.01 + 100 / 1e6 + 2 * 2 * 63 * 1e-3 + 2 * 63 / 64 * 2.0  # 2 calls on 64 workers
    assert links.time_to(row, 0, 4, 64, link) == pytest.approx(expect)
    assert links.time_to(dict(row, to_target=[None]), 0, 4, 64, link) is None


def test_the_link_model_of_a_sparse_exchange_grows_with_the_workers():
    """An all-gather of a shard s per worker: (N−1)·α + (N−1)·s/β per call — each worker receives the
    other N−1 shards, so 64 workers take 21× what 4 take where a ring all-reduce takes ~1.3×."""
    link = links.Link("test", 8e6, 1e-3, "a test")  # 1 MB/s, 1 ms
    assert links.allgather_s(1e4, 4, link) == pytest.approx(3 * 1e-3 + 3 * 0.01)
    row = dict(seeds=[dict(wire_setup_bytes=100.0)], compute_step_s=0.01, calls_per_step={"all_gather": 1.0},
               to_target=[dict(step=10, wire_bytes=100.0 + 3 * 10 * 2000)])  # 2,000 B shards, sent 3× on 4 ranks
    expect = 10 * 0.01 + 100 / 1e6 + 10 * 63 * 1e-3 + 63 * 10 * 2000 / 1e6  # 10 gathers on 64 workers
    assert links.time_to(row, 0, 4, 64, link) == pytest.approx(expect)
