"""Functions the tests run on every rank of a DistPool (looked up as 'rank_targets:name')."""

import os
import time

from pathlib import Path

import torch
import torch.distributed as dist

from distid.primitives import (naive_all_reduce, ring_all_gather, ring_all_reduce, ring_reduce_scatter,
                               tree_broadcast)
from distid.primitives.check import run_case

DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "int32": torch.int32}


def check_cases(cases):
    """cases: [(op, numel, dtype name, seed, src)] → [(record dict, hand output as a tensor)]."""
    out = []
    for op, numel, dtype, seed, src in cases:
        res, hand = run_case(op, numel, DTYPES[dtype], seed=seed, reps=0, src=src)
        out.append((res.as_dict(), hand.clone()))
    return out


def in_place_and_layout():
    """ring_all_reduce and tree_broadcast work in place, also on non-contiguous tensors."""
    rank, n = dist.get_rank(), dist.get_world_size()
    t = torch.arange(12.0).reshape(3, 4).t() * (rank + 1)  # transposed: not contiguous
    same = ring_all_reduce(t) is t
    b = torch.full((5, 2), float(rank))[:, 0]  # strided view
    tree_broadcast(b, src=n - 1)
    m = torch.tensor([float(rank), -float(rank)])
    ring_all_reduce(m, op=dist.ReduceOp.MAX)
    naive = torch.arange(12.0).reshape(3, 4).t() * (rank + 1)
    same &= naive_all_reduce(naive) is naive
    rs_out = torch.zeros(4)[::2]  # a strided view as output
    ring_reduce_scatter(rs_out, torch.ones(6) * (rank + 1))
    ag_out = torch.zeros(12)[::2]  # rank r contributes [r, r]
    ring_all_gather(ag_out, torch.full((2,), float(rank)))
    return same, t.clone(), b.clone(), m.clone(), naive.clone(), rs_out.clone(), ag_out.clone()


def bad_arguments():
    """Both errors must be raised before any byte moves, even on one rank."""
    out = []
    for call in (lambda: ring_all_reduce(torch.ones(3), op=dist.ReduceOp.AVG),
                 lambda: tree_broadcast(torch.ones(3), src=dist.get_world_size())):
        try:
            call()
            out.append("no error")
        except ValueError as e:
            out.append(str(e))
    return tuple(out)


def fail_on(rank_to_fail: int):
    """One rank raises; the others wait in a ring all-reduce that can never finish."""
    if dist.get_rank() == rank_to_fail:
        raise RuntimeError(f"injected failure on rank {rank_to_fail}")
    ring_all_reduce(torch.ones(1000))


def hang_on(rank_to_hang: int):
    """One rank never joins the collective."""
    if dist.get_rank() == rank_to_hang:
        time.sleep(3600)
    ring_all_reduce(torch.ones(1000))


def dp_runs(data_root, steps, global_batch, lr):
    """Lesson 2 on this rank: final parameters of the hand-written-ring and the DDP runs."""
    from distid.parallel import lesson
    from datasets_for_tests import train_split

    train = train_split(data_root)
    hand, _ = lesson.run(train, "hand", steps, global_batch, lr)
    ddp, _ = lesson.run(train, "ddp", steps, global_batch, lr)
    return hand.params, ddp.params, hand.bytes_per_step


def train_run(overrides, out_dir, bad_seed_rank=None, resume=False, rank_overrides=None):
    """distid.train.train on this rank; returns (summary as summary.json holds it, trained parameters flattened).
    rank_overrides: {rank: [more overrides]} for ranks that should build something else."""
    from distid.config import load_config
    from distid.train import train_model
    from datasets_for_tests import REPO

    if dist.get_rank() == bad_seed_rank:
        overrides = [*overrides, "train.seed=99"]
    overrides = [*overrides, *(rank_overrides or {}).get(dist.get_rank(), [])]
    cfg = load_config(str(REPO / "configs" / "mnist_fc_subspace.toml"), overrides)
    summary, model = train_model(cfg, out_dir, resume=resume)
    from distid.parallel.fsdp import full_state

    state = full_state(model)  # trainable parameters, FSDP shards gathered
    return summary.to_dict(), torch.cat([state[k].reshape(-1) for k in sorted(state)])


def peft_steps(strategy):
    """A LoRA model from HF PEFT through distid's DDP/FSDP wrappers: a few steps, the losses."""
    import peft

    from distid.models import build_model
    from distid.parallel.ddp import wrap_ddp
    from distid.parallel.fsdp import wrap_fsdp
    from distid.train import train_step

    model = peft.get_peft_model(build_model("mlp", seed=0), peft.LoraConfig(r=2, target_modules=["1", "3", "5"]))
    net = wrap_ddp(model) if strategy == "ddp" else wrap_fsdp(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(dist.get_rank())
    x, y = torch.randn(16, 784, generator=g), torch.randint(0, 10, (16,), generator=g)
    return [train_step(net, opt, x, y)[0].item() for _ in range(5)]


def callback_collectives(numel):
    """An all-reduce issued inside a future callback (as PowerSGD issues its P and Q), under the
    ledger: returns the ledger's {op: (calls, payload)} and the two results."""
    from distid.observe.ledger import CommLedger

    ledger, a, b = CommLedger(dist.get_world_size()), torch.ones(numel), torch.ones(3)
    with ledger.phase("step", steps=1):
        fut = dist.all_reduce(a, async_op=True).get_future()
        fut = fut.then(lambda f: dist.all_reduce(b, async_op=True).get_future().wait()[0])
        fut.wait()
    return {op: (s.calls, s.payload) for op, s in ledger.stats["step"].items()}, a[0].item(), b[0].item()


def hf_gpt2_steps(method, strategy, steps=4, global_batch=8):
    """The byte-level GPT-2 of distid.models.hf (tied embedding/head) wrapped by the strategy, as any
    model is: `method` full, subspace (Fastfood, d=64) or LoRA (r=2 on c_attn),
    `steps` SGD steps on this rank's rows of a global byte batch; steps ≥ 2 booked by the ledger.
    Returns (losses, trainable parameters gathered and flattened, ledger bytes/step, formula, tie intact)."""
    from distid.config import load_config
    from distid.observe.ledger import CommLedger
    from distid.models import hf_gpt2, seeded
    from distid.models.hf import byte_batch
    from distid.parallel.fsdp import full_state
    from distid.subspace import SubspaceModel
    from distid.train import train_step
    from distid.run.build import make_optimizer, with_lora
    from distid.strategies import choose

    lr = {"full": 0.05, "subspace": 0.5, "lora": 0.05}[method]
    cfg = load_config(None, [f"dist.strategy={strategy}", "train.optimizer=sgd", f"train.lr={lr}",
                             "lora.rank=2", "lora.targets=c_attn"])
    model = seeded(hf_gpt2, 0)
    hf = model.hf
    if method == "subspace":
        model = SubspaceModel(model, 64, "fastfood", seed=0)
    elif method == "lora":
        model = with_lora(model, cfg)
    rank, n = dist.get_rank(), dist.get_world_size()
    strategy = choose(cfg, n, torch.device("cpu"))
    net, formula = strategy.wrap(model), strategy.payload
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    ledger, losses, b = CommLedger(n), [], global_batch // n
    for step in range(steps):
        x, y = byte_batch(global_batch, seed=step)
        x, y = x[rank * b:(rank + 1) * b], y.view(global_batch, -1)[rank * b:(rank + 1) * b].reshape(-1)
        with ledger.phase("step", steps=1) if step >= 2 else ledger.phase("warmup"):
            losses.append(train_step(net, opt, x, y)[0].item())
    state = full_state(model)
    tied = hf.lm_head.weight is hf.transformer.wte.weight
    return losses, torch.cat([state[k].reshape(-1) for k in sorted(state)]), ledger.per_step("step"), formula, tied


def model_train_run(overrides, out_dir):
    """distid.train.train on this rank with only `overrides` (defaults otherwise): (summary dict, trainable flat)."""
    from distid.config import load_config
    from distid.parallel.fsdp import full_state
    from distid.train import train_model

    summary, model = train_model(load_config(None, overrides), out_dir)
    state = full_state(model)
    return summary.to_dict(), torch.cat([state[k].reshape(-1) for k in sorted(state)])


def interface_bytes(nbytes):
    """Each collective of nbytes on this group, with the loopback interface's bytes per rank."""
    from distid.experiments.bench import interface

    return interface.measure(nbytes, repeats=3)


def compare_cell(method, strategy, out_dir):
    """One compare cell (mnist_compare.toml, 13 steps) as compare.run_cell records it."""
    from types import SimpleNamespace

    from distid.config import METHOD_LR
    from distid.experiments.methods import compare
    from datasets_for_tests import DATA_ROOT, REPO

    args = SimpleNamespace(config=str(REPO / "configs" / "mnist_compare.toml"),
                           overrides=[f"data.root={DATA_ROOT}", "train.steps=13", "train.log_every=100"],
                           **{f"lr_{m}": lr for m, lr in METHOD_LR.items()})
    return compare.run_cell(args, method, "fastfood" if method == "subspace" else None, strategy, Path(out_dir))


def trace_one_step(overrides, out_dir, at=14):
    """The quickstart config (a subspace under DDP) trained on this rank while a profiler watches one
    steady iteration of the loop: from entering train_step at step `at` (0-based) to entering it at
    the next. Returns the distid files (relative to the package) whose Python code ran in between."""
    import sys

    import distid
    from distid.config import load_config
    from distid.train import train
    from datasets_for_tests import REPO

    root = os.path.dirname(os.path.abspath(distid.__file__)) + os.sep
    seen, entered = set(), [0]

    def profile(frame, event, arg):
        if event != "call":
            return
        path = frame.f_code.co_filename
        if frame.f_code.co_name == "train_step" and path.endswith(os.path.join("distid", "train.py")):
            entered[0] += 1
        if entered[0] == at + 1 and path.startswith(root):
            seen.add(path[len(root):].replace(os.sep, "/"))

    cfg = load_config(str(REPO / "configs" / "mnist_fc_subspace.toml"), overrides)
    sys.setprofile(profile)
    try:
        train(cfg, out_dir)
    finally:
        sys.setprofile(None)
    return sorted(seen)
