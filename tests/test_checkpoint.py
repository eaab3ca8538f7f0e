"""Checkpoints (gloo, 1–2 ranks): the resume matrix — k steps + resume ends bitwise where 2k steps
straight do, for DDP, FSDP, subspace, LoRA and PowerSGD (whose error feedback, warm start and step
count travel in the checkpoint); a resume with other trajectory settings is refused in one line; a
finished run resumed changes no file; subspace checkpoints are kilobytes; another world size resumes;
export loads into a plain nn.Module; the resume hash ignores only what may change."""

import json
import sys

import pytest
import torch
from torch import nn

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.run.checkpoint import find, flat_config, resume_hash
from distid.config import load_config
from distid.strategies.hooks import CPU_POWERSGD_ON_GPU_MACHINE
from procs import run, torchrun

pytestmark = pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
# 20 global batches of 3,000 per epoch: 24 steps cross an epoch; checkpoints every 5 steps and at 13
BASE = {"data.root": DATA_ROOT, "train.global_batch": 3000, "checkpoint.every": 5, "train.log_every": 100,
        "subspace.d": 64}
CASES = {
    "subspace-ddp": {},
    "lora-ddp": {"train.method": "lora", "train.lr": 1e-2},
    "full-ddp": {"train.method": "full", "train.lr": 1e-3},
    "full-fsdp": {"train.method": "full", "train.lr": 1e-3, "dist.strategy": "fsdp"},
    "lora-fsdp": {"train.method": "lora", "train.lr": 1e-2, "dist.strategy": "fsdp"},
    "powersgd-full-ddp": {"train.method": "full", "train.lr": 1e-3, "ddp.hook": "powersgd",
                          "powersgd.start_iter": 3},  # compressing, with error feedback, at the cut
}


def over(**kv):
    return [f"{k}={v}" for k, v in {**BASE, **kv}.items()]


def train(pool, out, resume=False, **kv):
    return pool.run("rank_targets:train_run", over(**kv), str(out), resume=resume, timeout=240)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.skipif(
    CASES[c].get("ddp.hook") == "powersgd" and torch.cuda.is_available(), reason=CPU_POWERSGD_ON_GPU_MACHINE))
    for c in CASES])
def test_interrupted_and_resumed_equals_uninterrupted(dist_pool, tmp_path, case):
    pool, kv = dist_pool(2), CASES[case]
    whole = train(pool, tmp_path / "whole", **{"train.steps": 24, **kv})
    train(pool, tmp_path / "cut", **{"train.steps": 13, **kv})  # "interrupted" after 13 steps
    assert [s for s, _ in find(tmp_path / "cut" / "checkpoints")] == [10, 13]  # the last K = 2 kept
    resumed = train(pool, tmp_path / "cut", resume=True, **{"train.steps": 24, **kv})
    for (s_whole, p_whole), (s_res, p_res) in zip(whole, resumed):
        assert torch.equal(p_whole, p_res), "resumed run ended elsewhere"
        assert s_res["resumed_from_step"] == 13 and s_whole["resumed_from_step"] is None
        assert s_res["train_loss"] == s_whole["train_loss"]  # the last losses travel in the checkpoint


def test_a_run_stopped_at_a_plateau_resumes_to_the_same_stop(dist_pool, tmp_path):
    """With plateau_delta = 1 the third evaluation (steps 2, 4, 6) always counts as settled: the run
    stops after step 6 of 24; cut at 5, the resume brings back the evaluations before the cut."""
    pool = dist_pool(2)
    kv = {"train.eval_every": 2, "train.stop_plateau": 2, "train.plateau_delta": 1.0}
    whole = train(pool, tmp_path / "whole", **{"train.steps": 24, **kv})
    train(pool, tmp_path / "cut", **{"train.steps": 5, **kv})
    resumed = train(pool, tmp_path / "cut", resume=True, **{"train.steps": 24, **kv})
    for (s_whole, p_whole), (s_res, p_res) in zip(whole, resumed):
        assert torch.equal(p_whole, p_res), "resumed run stopped elsewhere"
        assert (s_whole["steps"], s_whole["steps_planned"], s_whole["stopped_early"]) == (6, 24, True)
        assert (s_res["steps"], s_res["stopped_early"], s_res["resumed_from_step"]) == (6, True, 5)
        assert [c[0] for c in s_whole["eval_curve"]] == [2, 4, 6]
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "cut").rglob("*")}
    proc = run([sys.executable, "-m", "distid.train", "--config", "configs/mnist_fc_subspace.toml", "--resume",
                "--out", str(tmp_path / "cut"), *[a for kv_ in over(**{"train.steps": 24, **kv}) for a in ("--set", kv_)]])
    assert proc.returncode == 0 and "stopped at a plateau after 6 steps" in proc.stdout, proc.stderr
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "cut").rglob("*")} == before


def test_a_resume_under_another_comm_hook_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    first = cli_train(out, "train.steps=4", "ddp.hook=fp16")
    assert first.returncode == 0, first.stderr
    again = cli_train(out, "train.steps=8", "ddp.hook=powersgd", resume=True, nproc=1)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "another config (ddp.hook: 'fp16' → 'powersgd')" in again.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason=CPU_POWERSGD_ON_GPU_MACHINE)
def test_powersgd_state_of_two_ranks_is_refused_on_one_and_one_process_s_resumes_on_two(tmp_path):
    """What each rank keeps of its own (PowerSGD's error feedback) decides, as the checkpoint holds it:
    written by 2 ranks, it cannot continue on 1; written by 1 process (no hook runs there), it can."""
    sets = ("ddp.hook=powersgd", "powersgd.start_iter=2")
    assert cli_train(tmp_path / "two", "train.steps=4", *sets).returncode == 0
    again = cli_train(tmp_path / "two", "train.steps=8", *sets, resume=True, nproc=1)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "written by 2 ranks under dist.strategy = 'ddp', whose strategy state is each rank's own" in again.stderr
    assert cli_train(tmp_path / "one", "train.steps=4", *sets, nproc=1).returncode == 0
    more = cli_train(tmp_path / "one", "train.steps=8", *sets, resume=True)
    assert more.returncode == 0 and "it was written by 1 ranks, this run has 2" in more.stdout, more.stderr


def test_resuming_a_finished_run_says_so_and_changes_no_file(tmp_path):
    out = tmp_path / "run"
    assert cli_train(out, "train.steps=4").returncode == 0
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")}
    again = cli_train(out, "train.steps=4", resume=True, nproc=1)
    assert again.returncode == 0, again.stderr
    assert "holds a finished run (4 steps, summary.json written): nothing to do" in again.stdout
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")} == before


def test_resuming_a_finished_run_without_checkpoints_says_so_and_changes_no_file(tmp_path):
    out = tmp_path / "run"
    assert cli_train(out, "train.steps=3", "checkpoint.keep=0", nproc=1).returncode == 0
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")}
    again = cli_train(out, "train.steps=3", "checkpoint.keep=0", resume=True, nproc=1)
    assert again.returncode == 0 and "no checkpoint to continue from: nothing to do" in again.stdout, again.stderr
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")} == before


def cli_train(out, *overrides, resume=False, nproc=2):
    """`torchrun -m distid.train` (nproc ranks; 1: `python -m distid.train`) on the quickstart config
    at d = 64, out = `out`."""
    args = ["--config", "configs/mnist_fc_subspace.toml", "--out", str(out), "--set", f"data.root={DATA_ROOT}",
            "--set", "subspace.d=64", "--set", "train.global_batch=600"]
    args += [w for o in overrides for w in ("--set", o)] + (["--resume"] if resume else [])
    if nproc == 1:
        return run([sys.executable, "-m", "distid.train", *args], timeout=120)
    return torchrun(nproc, "-m", "distid.train", *args, timeout=120)


def test_subspace_checkpoint_is_kilobytes_and_reported(dist_pool, tmp_path):
    (s, _), _ = train(dist_pool(2), tmp_path, **{"train.steps": 6, "subspace.d": 750})
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["checkpoint_bytes"] == s["checkpoint_bytes"] < 30_000  # d, Adam's two moments, RNG, config
    assert saved["full_state_dict_bytes"] == 4 * 199_210
    payload = torch.load(saved["checkpoint"], weights_only=True)
    assert set(payload["trainable"]) == {"d"} and payload["meta"]["step"] == 6


def test_lora_checkpoint_holds_only_the_adapters(dist_pool, tmp_path):
    train(dist_pool(2), tmp_path, **{"train.steps": 3, **CASES["lora-ddp"]})
    keys = set(torch.load(tmp_path / "checkpoints" / "step_000003.pt", weights_only=True)["trainable"])
    assert keys and all(k.endswith(("lora_A", "lora_B")) for k in keys)


@pytest.mark.parametrize("case", ["subspace-ddp", "full-fsdp"])
def test_another_world_size_resumes(dist_pool, tmp_path, case):
    kv = {"train.global_batch": 600, **CASES[case]}
    (_, whole), = dist_pool(1).run("rank_targets:train_run", over(**{"train.steps": 12, **kv}),
                                   str(tmp_path / "whole"), timeout=180)
    train(dist_pool(2), tmp_path / "cut", **{"train.steps": 6, **kv})
    (s, resumed), = dist_pool(1).run("rank_targets:train_run", over(**{"train.steps": 12, **kv}),
                                     str(tmp_path / "cut"), resume=True, timeout=180)
    assert s["resumed_from_step"] == 6
    # Equal up to reduction order, which Adam amplifies over the steps (on an Intel Xeon a straight
    # 2-rank run ends 2.5e-4 from the 1-rank one): the resumed run may be no further from the 1-rank
    # run than twice the straight 2-rank run is.
    (_, two), _ = train(dist_pool(2), tmp_path / "whole2", **{"train.steps": 12, **kv})
    assert (resumed - whole).abs().max() <= 2 * (two - whole).abs().max() + 1e-6


def plain_mlp() -> nn.Module:
    """The 784-200-200-10 MLP written without distid."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                         nn.Linear(200, 10))


@pytest.mark.parametrize("case", ["subspace-ddp", "lora-ddp", "full-fsdp"])
def test_export_loads_into_the_plain_module(dist_pool, tmp_path, case):
    from procs import run
    import sys

    results = train(dist_pool(2), tmp_path, **{"train.steps": 4, **CASES[case]})
    out = run([sys.executable, "-m", "distid.run.export", str(tmp_path), "--out", str(tmp_path / "model.pt")], timeout=120)
    assert out.returncode == 0, out.stderr
    plain = plain_mlp()
    plain.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    from distid.run.export import export
    from distid.run.build import build

    state, cfg = export(tmp_path)
    model = build(cfg, 1)
    trained = {k: p for k, p in model.named_parameters() if p.requires_grad}
    flat = results[0][1]  # the run's trained parameters, flattened in sorted-name order
    with torch.no_grad():
        offset = 0
        for k in sorted(trained):
            trained[k].copy_(flat[offset:offset + trained[k].numel()].view_as(trained[k]))
            offset += trained[k].numel()
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-5)


def test_resume_hash_ignores_only_run_length_logging_and_how_sums_travel():
    a = load_config(None, [])
    same = load_config(None, ["train.steps=7", "train.log_every=3", "dist.strategy=fsdp", "data.root=/x",
                              "checkpoint.every=9", "dist.backend=gloo", "dist.check_replicas_every=5"])
    assert resume_hash(a) == resume_hash(same)
    for change in ("train.lr=0.5", "subspace.d=10", "train.seed=1", "train.global_batch=64", "model.name=lenet",
                   "train.optimizer=sgd", "subspace.projection=dense", "ddp.hook=powersgd", "dist.strategy=local_sgd"):
        assert resume_hash(load_config(None, [change])) != resume_hash(a), change
    assert "train.lr" in flat_config(a) and "train.steps" not in flat_config(a)
    powersgd = load_config(None, ["ddp.hook=powersgd"])  # its settings count only when it is on
    assert resume_hash(load_config(None, ["powersgd.rank=2"])) == resume_hash(a)
    for change in ("powersgd.rank=2", "powersgd.start_iter=5", "powersgd.error_feedback=false"):
        assert resume_hash(load_config(None, ["ddp.hook=powersgd", change])) != resume_hash(powersgd), change
