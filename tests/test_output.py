"""What a student reads: the progress line, the closing table in words, the LoRA label, compare's
chart title. Built from a Summary by hand, so that each line's rule is checked without a run."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from distid.config import load_config
from distid.experiments.methods.compare import chart_title, plot
from distid.observe.ledger import CommLedger
from distid.observe.progress import Progress, final_table, method_label
from distid.observe.summary import Summary
from distid.run.after_step import AfterStep

LEDGER = ("op               calls/step  sent B/step  handed in B/step\n"
          "all_reduce             1.00        4,500             3,000")


def summary(**kv) -> Summary:
    """A Summary of a 4-rank d = 750 subspace run under DDP, with `kv` changed."""
    base = dict(method="subspace", strategy="ddp", strategy_label="DDP", world_size=4, nnodes=1, backend="gloo", device="cpu",
                projection="fastfood", total_params=199_210, trainable_params=750, lora_rank=None, steps=1404,
                global_batch=128, comm_wire_bytes_per_step={"all_reduce": 4500.0, "total": 4500.0},
                comm_wire_formula={"all_reduce": 4500.0, "total": 4500.0},
                comm_wire_bytes_setup={"total": 3439.0}, comm_measured_bytes_per_step=None, comm_steps_booked=10,
                test_accuracy=0.8922, step_time_s=0.03537, peak_rss_mb=555.0, flops_per_step=130_400_000,
                config={"train": {}}, out_dir="runs/x", checkpoint=None, checkpoint_bytes=None,
                full_state_dict_bytes=796_840)
    base.update(kv)
    fields = {f.name: None for f in dataclasses.fields(Summary) if f.default is dataclasses.MISSING}
    return Summary(**{**fields, **base})


def test_closing_table_of_a_ddp_run_says_what_each_rank_sent_beside_full_training():
    text = final_table(summary(), LEDGER)
    assert "subspace (fastfood, d = 750), DDP on 4 ranks, 1 node (gloo), 1,404 steps of global batch 128" in text
    assert "trained numbers   750 of D = 199,210" in text
    assert "4,500 B by each rank; full training under DDP would send 1,195,260 B (265.6× this)" in text
    assert "sent at set-up    3,439 B by each rank, once" in text
    assert "collectives per step on rank 0 (10 steps booked" in text and LEDGER in text
    assert "files in runs/x/: summary.json" in text and "tensorboard --logdir runs/x" in text


def test_closing_table_of_a_run_that_sends_more_than_full_ddp():
    s = summary(method="full", projection=None, strategy="fsdp", trainable_params=199_210,
                comm_wire_bytes_per_step={"total": 1_796_508.0})
    assert "full training under DDP would send 1,195,260 B (this run sends 1.50× that)" in final_table(s, LEDGER)


def test_one_process_prints_no_collectives_and_no_bytes():
    text = final_table(summary(world_size=1, comm_wire_bytes_per_step={"total": 0.0}), "op  calls/step")
    assert "one process (cpu)" in text and "sent per step     nothing: one process" in text
    assert "collectives per step" not in text and "set-up" not in text and "op  calls/step" not in text


@pytest.mark.parametrize("targets,said", [("3", "layer 3"), ("q,v", "q, v"), ("", "every Linear/Conv layer")])
def test_lora_label_names_its_rank_and_targets(targets, said):
    s = summary(method="lora", projection=None, lora_rank=2, config={"lora": {"targets": targets}})
    assert method_label(s) == f"lora (rank 2 on {said})"
    assert "(the adapters; the model's D = 199,210 stay frozen)" in final_table(s, LEDGER)


def test_progress_line_averages_rank_0s_batches_since_the_last_line(tmp_path, capsys):
    """AfterStep sums each step's loss and correct count; the line shows their means since the last."""
    progress = Progress(tmp_path, rank=0, world=1, steps=4, every=2)
    assert "training loss and accuracy averaged over rank 0's batches" in capsys.readouterr().out
    cfg = load_config(None, ["train.log_every=2", "train.steps=4", "checkpoint.keep=0"])
    job = SimpleNamespace(cfg=cfg, start=0, total_steps=4, strategy=SimpleNamespace(period=1, digest=lambda model: "same"), trainable=[],
                          ckpt=SimpleNamespace(last=None), losses=[], progress=progress, ledger=CommLedger(1),
                          meter=SimpleNamespace(wire_per_step=lambda done: 0.0), settled_at=None, model=None)
    after = AfterStep(job)
    for step, (loss, correct) in enumerate(((1.0, 3), (3.0, 5), (0.5, 8), (0.5, 8))):
        logits = torch.zeros(8, 2)
        logits[:correct, 0], logits[correct:, 1] = 1.0, 1.0  # the first `correct` rows predict label 0
        after(step, torch.tensor(loss), logits, torch.zeros(8, dtype=torch.long))
    progress.close()
    first, second = capsys.readouterr().out.splitlines()
    assert "step      2/4 | train loss 2.0000 | train acc 0.500 |" in first and "B sent/step" not in first
    assert "step      4/4 | train loss 0.5000 | train acc 1.000 |" in second


def test_compare_chart_names_the_cells_it_leaves_out(tmp_path):
    cell = dict(cell="full · ddp", strategy="ddp", wire_bytes_per_step=8.0, test_accuracy=0.9,
                step_time_s=0.01, state_bytes_per_rank=[2**20])
    cells = [cell, dict(cell="subspace/dense · fsdp", refused="no")]
    assert chart_title(cells).endswith("not shown, refused: subspace/dense · fsdp (see compare.md)")
    assert "refused" not in chart_title(cells[:1])
    assert plot(cells, tmp_path / "compare.png") and (tmp_path / "compare.png").stat().st_size > 0


@pytest.mark.parametrize("module,folder", [("methods.compare", "runs/compare-<YYYYmmdd-HHMMSS>"),
                                           ("communication.frontier", "runs/frontier-<YYYYmmdd-HHMMSS>"),
                                           ("intrinsic.sweep", "runs/sweep-<config name>"),
                                           ("methods.convergence", "runs/convergence-<config name>-<YYYYmmdd-HHMMSS>")])
def test_help_names_the_folder_each_experiment_writes_by_default(module, folder, capsys):
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(f"distid.experiments.{module}").main(["--help"])
    assert folder.replace(" ", "") in "".join(capsys.readouterr().out.split())  # argparse wraps lines
