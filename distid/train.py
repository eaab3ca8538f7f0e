"""Train a model fully, with LoRA, or in a random subspace, on one process or under DDP or FSDP,
and account for what it costs.

    python -m distid.train --config configs/mnist_fc_subspace.toml [--set train.d=1000] [--out DIR]
    torchrun --nproc_per_node=4 -m distid.train --config configs/mnist_fc_subspace.toml

One step: this rank's slice of the global batch → forward (subspace: θ = θ₀ + P·d) → backward
→ synchronise the trainable gradients (DDP: all-reduce of d floats, LoRA's factors, or all D;
FSDP: reduce-scatter, after all-gathering the sharded weights) → optimizer.
`run(cfg)` is the whole job, config in, summary out; compare/sweep/bench call it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from distid import fault, runtime
from distid.checkpoint import Checkpointer, CheckpointError, default_out_dir, restart_count, size_bytes
from distid.config import Config, ConfigError, add_config_args, config_hash, load_config, to_dict
from distid.data import FetchError, ShardedLoader, fetch, load_split
from distid.failure import Diverged, PeerFailure, Watch, check_finite, is_collective_error, restart_hazard
from distid.evaluate import accuracy
from distid.ledger import CommLedger
from distid.memory import state_bytes
from distid.models import MissingDependency, build_model, count_params
from distid.parallel.consistency import RanksDisagree, assert_same_across_ranks
from distid import lora, pretrained
from distid.parallel import compression, expected
from distid.parallel.ddp import BucketCounter, wrap_ddp
from distid.parallel.fsdp import full_state, wrap_fsdp
from distid.subspace import SubspaceModel
from distid.subspace.sharded import DENSE_UNDER_FSDP, ShardedSubspaceModel
from distid.train_report import Progress, final_table

WARMUP_STEPS = 2  # booked as "warmup": step 0 (also FLOP-counted) and step 1 (DDP rebuilds its buckets),
# and any further steps a compression hook sends uncompressed (PowerSGD's dist.powersgd_start_iter)
LEDGER_STEPS = 10  # then booked as "step" by the dispatch-level ledger (it slows a step: not timed)


class DataError(ValueError):
    """The data of the config is missing or corrupt; the message says how to fetch it."""


def load_splits(name: str, root: str):
    """Verify the files once per node (local rank 0, under a file lock: two "nodes" may share a
    host and a folder; files are used in place or unpacked from .gz, never downloaded here) while
    the other ranks wait; every rank learns of a problem and raises it; then each memory-maps them."""
    problem = None
    if os.environ.get("LOCAL_RANK", "0") == "0":
        try:
            Path(root).mkdir(parents=True, exist_ok=True)
            with open(Path(root) / ".fetch.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                fetch(name, root, sources=("local",))
        except (FetchError, ValueError, OSError) as e:
            problem = _data_problem(name, root, e)
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, problem)
        problem = next((p for p in everyone if p), None)
    try:
        if problem is None:
            return load_split(name, root, "train"), load_split(name, root, "test")
    except (FileNotFoundError, ValueError) as e:
        problem = _data_problem(name, root, e)
    raise DataError(problem)


def _data_problem(name: str, root: str, e: BaseException) -> str:
    """One line: what is wrong with the data, and the command that fetches it."""
    bad = [msg for source, msg in getattr(e, "failures", []) if source == "existing"]
    if bad:
        what = f"{bad[0]} (the file was renamed *.bad)"
    elif isinstance(e, FetchError):
        what = f"{name} data not found in {root} (looked for the four IDX files, plain or .gz)"
    else:
        what = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{what}; get it with `python -m distid.data fetch {name} --root {root}`"


def build(cfg: Config, local_world: int) -> torch.nn.Module:
    """The model of the config: plain (full training), with LoRA adapters, or in a random subspace."""
    model = build_model(cfg.model.name, seed=cfg.train.seed)
    if cfg.model.init_from:
        try:
            pretrained.load_into(model, cfg.model.init_from)
        except pretrained.PretrainedError as e:
            raise ConfigError(str(e)) from e
    if cfg.train.method == "full":
        return model
    if cfg.train.method == "lora":
        return with_lora(model, cfg)
    D = count_params(model)
    if not 1 <= cfg.train.d <= D:
        raise ConfigError(f"train.d = {cfg.train.d} must be between 1 and D = {D:,} (the model's parameter count)")
    kwargs = {}
    if cfg.train.projection == "dense" and cfg.dist.strategy == "fsdp" and dist.is_initialized() \
            and dist.get_world_size() > 1:  # refuse before allocating 4·D·d bytes
        raise ConfigError(DENSE_UNDER_FSDP)
    if cfg.train.projection == "dense":
        kwargs = dict(max_bytes=dense_limit(cfg), copies=local_world)
    try:
        return SubspaceModel(model, cfg.train.d, cfg.train.projection, seed=cfg.train.seed, said=cfg.train.said,
                             **kwargs)
    except ValueError as e:  # SAID with d too small
        raise ConfigError(f"train.d: {e}") from e


def with_lora(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """LoRA on train.lora_targets (all Linear/Conv2d/Conv1D by default) at train.lora_rank, or at the rank
    whose trainable count is closest to train.d; α = train.lora_alpha, or the rank."""
    targets = [t.strip() for t in cfg.train.lora_targets.split(",") if t.strip()] or None
    save = [t.strip() for t in cfg.train.lora_modules_to_save.split(",") if t.strip()]
    try:
        r = cfg.train.lora_rank or lora.match_budget(model, cfg.train.d, targets)[0]
        model = lora.inject(model, r, cfg.train.lora_alpha or float(r), targets, seed=cfg.train.seed)
        lora.train_fully(model, save)
        return model
    except ValueError as e:
        raise ConfigError(str(e)) from e


def dense_limit(cfg: Config) -> int:
    """Bytes a dense P may take on this machine: train.max_dense_gb, else half the memory available
    now — the smallest any rank sees, so that every rank takes the same decision."""
    limit = int(cfg.train.max_dense_gb * 1e9) or psutil.virtual_memory().available // 2
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([limit], dtype=torch.int64, device=runtime.device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        limit = int(t.item())
    return limit


def parallelize(model, cfg: Config, n: int, device: torch.device):
    """Wrap for the strategy; returns (module to call, DDP bucket counter or None, the per-step
    payload the formulas expect). One rank: the model itself, nothing to synchronise."""
    if cfg.dist.strategy == "none" and n > 1:
        raise ConfigError(f"dist.strategy = 'none' with {n} ranks would train {n} unsynchronised models: "
                          f"use 'ddp' or 'fsdp', or run one process")
    if n == 1:
        return model, None, {"total": 0}
    if cfg.dist.strategy == "fsdp" and isinstance(model, SubspaceModel):
        try:
            sharded = ShardedSubspaceModel(model)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        net, counter = _ddp(sharded, device, sharded.regenerated_buffers())
        return net, counter, expected.sharded_subspace_bytes(sharded.slot, model.projection.d)
    if cfg.dist.strategy == "fsdp":
        bytes_ = expected.fsdp_bytes(list(model.parameters()), n)
        return wrap_fsdp(model, device.type), None, bytes_
    ignore = model.regenerated_buffers() if isinstance(model, SubspaceModel) else []
    d = cfg.dist
    try:
        hook = compression.comm_hook(d.comm_hook, d.powersgd_rank, d.powersgd_start_iter, d.powersgd_error_feedback,
                                     cfg.train.seed, device.type)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    net, counter = _ddp(model, device, ignore, hook)
    if d.comm_hook == "powersgd":
        return net, counter, expected.powersgd_bytes(model, d.powersgd_rank)
    return net, counter, expected.ddp_bytes(model, itemsize=2 if d.comm_hook in ("fp16", "bf16") else 4)


def _ddp(model, device: torch.device, ignore: list[str], hook: tuple | None = None):
    """DDP with `hook` = (state, PyTorch comm hook; default: plain all-reduce) behind the bucket counter."""
    ddp = wrap_ddp(model, device_ids=[device.index] if device.type == "cuda" else None, ignore=ignore)
    counter = BucketCounter()
    state, inner = hook or compression.comm_hook("none")
    ddp.register_comm_hook(state, counter.hook(inner))
    return ddp, counter


def make_optimizer(cfg: Config, params):
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.train.lr)
    return torch.optim.SGD(params, lr=cfg.train.lr, momentum=0.9)


def batches(loader: ShardedLoader, device: torch.device):
    """Endless stream of this rank's batches, epoch after epoch."""
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loader.set_epoch(loader.epoch + 1)


def train_step(net, opt, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    opt.zero_grad(set_to_none=True)
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    opt.step()
    return loss.detach(), (logits.argmax(1) == y).float().mean()


def run(cfg: Config, out_dir: str | None = None, resume: bool = False) -> dict:
    """Train as `cfg` says; rank 0 writes summary.json (+ TensorBoard) to out_dir. Returns the summary.
    resume (or a torchrun restart): continue from the latest checkpoint in out_dir/checkpoints."""
    return run_with_model(cfg, out_dir, resume)[0]


def run_with_model(cfg: Config, out_dir: str | None = None, resume: bool = False) -> tuple[dict, torch.nn.Module]:
    """run(), also returning the trained model (SubspaceModel or plain). Joins the process group
    if none exists and then leaves it; inside an existing group (tests, sweeps) it leaves it be."""
    owns_group = not dist.is_initialized()
    rank, n = runtime.init(cfg.dist.timeout_s, None if cfg.dist.backend == "auto" else cfg.dist.backend)
    try:
        if cfg.train.global_batch % n:
            raise ConfigError(f"train.global_batch = {cfg.train.global_batch} is not a multiple of the world size "
                              f"{n}; every rank must get the same number of samples")
        result = _run(cfg, out_dir, rank, n, resume or restart_count() > 0)
    except BaseException:
        if owns_group:
            runtime.shutdown(clean=False)
        raise
    if owns_group:
        runtime.shutdown()
    return result


@dataclass
class _Run:
    """What the three phases of one run share."""

    cfg: Config
    rank: int
    n: int
    device: torch.device
    ledger: CommLedger
    out: Path
    loader: ShardedLoader
    test_split: object
    model: torch.nn.Module
    net: torch.nn.Module
    counter: BucketCounter | None
    formula: dict
    fingerprint: dict | None
    theta0: str
    shape: dict
    t_start: float
    t_loop: float = 0.0  # when the first step started
    eval_s: float = 0.0  # seconds spent in evaluations since
    curve: list = field(default_factory=list)  # [(steps done, training seconds, test accuracy)]
    step: int = 0  # the step running now, for error messages
    start: int = 0  # steps done before this run (resumed from a checkpoint)


_RUNS = [0]  # runs started by this process: with the out dir, names this run's keys in the store


def _run(cfg: Config, out_dir: str | None, rank: int, n: int, resume: bool) -> tuple[dict, torch.nn.Module]:
    r = _setup(cfg, out_dir, rank, n, resume)
    opt = make_optimizer(cfg, [p for p in r.model.parameters() if p.requires_grad])
    steps = cfg.train.steps or max(1, round(cfg.train.epochs * len(r.loader)))
    ckpt = Checkpointer(r.out / "checkpoints", cfg, r.model, r.fingerprint)
    with r.ledger.phase("checkpoint"):
        resumed = ckpt.resume(opt, r.loader) if resume else None
    r.start, losses = (resumed[0], [torch.tensor(v) for v in resumed[1].get("losses", [])]) if resumed else (0, [])
    if restart_hazard() and restart_count() == 0:
        runtime.print0(restart_hazard())
    if resume:
        runtime.print0(resumed[2] if resumed else f"no checkpoint in {ckpt.folder}: starting from step 0")
    progress = Progress(r.out, rank, n, steps, cfg.train.log_every)
    _RUNS[0] += 1
    watch = Watch(hashlib.sha256(f"{r.out}|{restart_count()}|{_RUNS[0]}".encode()).hexdigest()[:12])
    try:
        times, flops = _loop(r, opt, steps, progress, losses, ckpt)
    except Exception as e:
        if n > 1 and is_collective_error(e):
            raise watch.explain(r.step, e) from e
        watch.record_error(r.step, e)
        raise
    summary = _summarize(r, opt, steps, progress, losses, times, flops)
    summary.update(resumed_from_step=r.start if resumed else None, checkpoint=str(ckpt.last) if ckpt.last else None,
                   checkpoint_bytes=size_bytes(ckpt.last) if ckpt.last and rank == 0 else None,
                   full_state_dict_bytes=4 * r.shape["total"])
    trained = full_state(r.model)  # on every rank: under FSDP it gathers the shards
    if rank == 0:
        torch.save(trained, r.out / "trainable.pt")
        tmp = r.out / ".summary.json.tmp"  # summary.json last, and whole: its presence means "finished"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, r.out / "summary.json")
        print(final_table(summary, r.ledger.table("step")), flush=True)
    progress.close()
    return summary, r.model


def _setup(cfg: Config, out_dir: str | None, rank: int, n: int, resume: bool = False) -> _Run:
    """Data, model, start-up checks and the strategy's wrapper, all booked as "setup"."""
    device, ledger, t_start = runtime.device(), CommLedger(n), time.perf_counter()
    with ledger.phase("setup"):
        out = Path(_agree_on_out_dir(out_dir or default_out_dir(cfg.name, resume)))
        train_split, test_split = (s.only(cfg.data.classes) for s in load_splits(cfg.data.dataset, cfg.data.root))
        loader = ShardedLoader(train_split, cfg.train.global_batch, rank, n, seed=cfg.train.seed)
        model = build(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", n))).to(device)
        fingerprint = model.fingerprint() if isinstance(model, SubspaceModel) else None
        theta0 = pretrained.theta0_source(cfg.model.init_from, cfg.train.seed)
        assert_same_across_ranks({**(fingerprint or {}), "theta0_source": theta0})
        trainable = count_params(model, trainable_only=True)
        total = model.D if isinstance(model, SubspaceModel) else count_params(model)
        adapters = sum(p.numel() for n, p in model.named_parameters() if n.rpartition(".")[2] in ("lora_A", "lora_B"))
        shape = dict(total=total - adapters, trainable=trainable)  # D of the base model
        net, counter, formula = parallelize(model, cfg, n, device)
    return _Run(cfg, rank, n, device, ledger, out, loader, test_split, model, net, counter, formula,
                fingerprint, theta0, shape, t_start)


def _loop(r: _Run, opt, steps: int, progress: Progress, losses: list, ckpt: Checkpointer) -> tuple[list, int]:
    """Steps r.start…steps−1 (appending each loss to `losses`): the first FLOP-counted, the warm-up steps
    (2, or a hook's plain ones) and 10 more booked by the ledger, the rest timed; a checkpoint when due;
    stop at the first non-finite loss."""
    stream, times = batches(r.loader, r.device), []
    r.t_loop = time.perf_counter()
    fc = FlopCounterMode(display=False)
    trainable = [p for p in r.model.parameters() if p.requires_grad]
    warm = max(WARMUP_STEPS, compression.plain_steps(r.cfg.dist.comm_hook, r.cfg.dist.powersgd_start_iter))
    for step in range(r.start, steps):
        r.step = step + 1
        fault.at_step(step, r.rank)
        x, y = next(stream)
        i = step - r.start
        booked = i < warm + LEDGER_STEPS
        phase = "warmup" if i < warm else "step"
        with r.ledger.phase(phase, steps=1) if booked else nullcontext(), fc if i == 0 else nullcontext():
            t0 = time.perf_counter()
            loss, acc = train_step(r.net, opt, fault.poison(x, step, r.rank), y)
            if r.device.type == "cuda":
                torch.cuda.synchronize()
            if not booked:
                times.append(time.perf_counter() - t0)
        check_finite(step + 1, loss, trainable, ckpt.last)
        losses.append(loss)
        if progress.due(step):
            with r.ledger.phase("metrics"):
                sent = r.ledger.per_step()["total"] if r.ledger.steps["step"] else (
                    r.counter.payload / (step + 1) if r.counter else 0.0)  # before the booked steps: DDP's hook
                progress.log(step, loss.item(), acc.item(), sent)
        if r.cfg.train.eval_every and (step + 1) % r.cfg.train.eval_every == 0 and step + 1 < steps:
            with r.ledger.phase("eval"):
                evaluate_now(r, step, progress)
        if ckpt.due(step + 1, steps):
            with r.ledger.phase("checkpoint"):
                local = dict(rng=torch.get_rng_state(), losses=[v.item() for v in losses[-50:]])
                ckpt.save(step + 1, opt, r.loader, local)
    return times, fc.get_total_flops()


def evaluate_now(r: _Run, step: int, progress: Progress) -> float:
    """Test accuracy after `step`, logged and appended to r.curve as (steps done, training seconds,
    accuracy); training seconds exclude the time spent evaluating."""
    t0 = time.perf_counter()
    acc = accuracy(r.net, r.test_split, device=r.device)
    progress.scalar("test/accuracy", acc, step)
    r.curve.append((step + 1, t0 - r.t_loop - r.eval_s, acc))
    r.eval_s += time.perf_counter() - t0
    return acc


def _summarize(r: _Run, opt, steps: int, progress: Progress, losses: list, times: list, flops: int) -> dict:
    """Final evaluation and every figure of summary.json (per-rank figures gathered to all ranks)."""
    cfg, n, model, ledger, counter, device = r.cfg, r.n, r.model, r.ledger, r.counter, r.device
    subspace = isinstance(model, SubspaceModel)
    with ledger.phase("eval"):
        test_acc = evaluate_now(r, steps - 1, progress)
        recent = torch.stack(losses[-50:]).mean().item() if losses else float("nan")
        train_loss = runtime.reduce_scalar(recent, dist.ReduceOp.SUM) / n
        peak_gpu = runtime.reduce_scalar(torch.cuda.max_memory_allocated() / 2**20, dist.ReduceOp.MAX) \
            if device.type == "cuda" else None
        held = state_bytes(getattr(r.net, "module", r.net), opt)
        median = statistics.median(times) if times else float("nan")
        per_rank = dict(step_time_s_per_rank=runtime.gather_floats(median),
                        peak_rss_mb_per_rank=runtime.gather_floats(progress.peak_rss_mb()),
                        state_bytes_per_rank=runtime.gather_floats(float(held["total"])))
        nnodes = runtime.node_count()
    return dict(
        method=cfg.train.method, strategy=cfg.dist.strategy, ddp_active=counter is not None,
        world_size=n, nnodes=nnodes,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", n)), backend=dist.get_backend(), device=str(device),
        projection=cfg.train.projection if subspace else None,
        total_params=r.shape["total"], trainable_params=r.shape["trainable"],
        lora_rank=lora.rank_of(model) if cfg.train.method == "lora" else None,
        steps=steps, global_batch=cfg.train.global_batch, epochs=steps / len(r.loader),
        comm_bytes_per_step=ledger.per_step("step") if ledger.steps["step"] else None,
        comm_bytes_formula=r.formula,
        comm_calls_per_step=ledger.calls_per_step("step"),
        comm_textbook_bytes_per_step=ledger.textbook_per_step("step"),
        comm_bytes_setup=ledger.totals("setup"), comm_bytes_warmup=ledger.totals("warmup"),
        comm_steps_booked=ledger.steps["step"], comm_steps_warmup=ledger.steps["warmup"],
        ddp_hook_bytes_per_step=counter.payload / max(steps - r.start, 1) if counter else 0.0,
        test_accuracy=test_acc, train_loss=train_loss, eval_curve=r.curve,
        step_time_s=statistics.median(times) if times else None,
        peak_rss_mb=max(per_rank["peak_rss_mb_per_rank"]), peak_gpu_mb=peak_gpu, state_bytes=held, **per_rank,
        flops_per_step=flops, projection_flops_per_step=model.projection.flops() if subspace else 0,
        wall_time_s=time.perf_counter() - r.t_start,
        projection_bytes=model.projection.nbytes() if subspace else 0,
        fingerprint=r.fingerprint, theta0=r.theta0, machine=runtime.machine(),
        config=to_dict(cfg), config_hash=config_hash(cfg), out_dir=str(r.out),
    )


def _agree_on_out_dir(proposal: str) -> str:
    """Rank 0's choice of output folder, for every rank (their clocks may differ by a second)."""
    box = [proposal]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    Path(box[0]).mkdir(parents=True, exist_ok=True)
    return box[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distid.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (default: the newest runs/<name>-*); "
                        "automatic when torchrun restarts the group")
    args = p.parse_args(argv)
    try:
        run(load_config(args.config, args.overrides), args.out, resume=args.resume)
    except (ConfigError, runtime.BackendError, MemoryError, DataError, CheckpointError, RanksDisagree,
            MissingDependency) as e:
        if os.environ.get("RANK", "0") == "0":  # every rank finds the same error; one says it
            print(f"error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return 1
    except PeerFailure as e:  # each survivor says what it saw
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
