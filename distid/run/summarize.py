"""Every figure of summary.json, from a finished Job (per-rank figures gathered to all ranks)."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from distid import lora, runtime
from distid.config import config_hash, to_dict
from distid.observe.ledger import to_wire
from distid.observe.memory import state_bytes
from distid.observe.summary import Summary
from distid.subspace import SubspaceModel


def summarize(job) -> Summary:
    """The Summary of `job` after its final evaluation (a collective: every rank calls it)."""
    cfg, n, model, ledger, device, strategy = job.cfg, job.n, job.model, job.ledger, job.device, job.strategy
    counter = strategy.counter
    subspace = isinstance(model, SubspaceModel)
    recent = torch.stack(job.losses[-50:]).mean().item() if job.losses else float("nan")
    train_loss = runtime.reduce_scalar(recent, dist.ReduceOp.SUM) / n
    peak_gpu = runtime.reduce_scalar(torch.cuda.max_memory_allocated() / 2**20, dist.ReduceOp.MAX) \
        if device.type == "cuda" else None
    held = state_bytes(getattr(job.net, "module", job.net), job.opt)
    kept = strategy.state_bytes()  # θ_start, momenta, error feedback, receive buffers: measured from its tensors
    held["strategy"] = sum(kept.values())
    held["total"] += held["strategy"]
    step_time = job.meter.step_time(strategy.period)
    step_times = runtime.gather_floats(step_time if step_time is not None else float("nan"))
    rss = runtime.gather_floats(job.progress.peak_rss_mb())
    state = runtime.gather_floats(float(held["total"]))
    nnodes = runtime.node_count()
    booked, syncs = ledger.steps["step"], ledger.steps["sync"]
    per_step = ledger.per_training_step(job.steps_done - job.start)
    return Summary(
        method=cfg.train.method, strategy=cfg.dist.strategy, strategy_label=strategy.label,
        ddp_active=counter is not None,
        world_size=n, nnodes=nnodes, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", n)),
        backend=dist.get_backend(), device=str(device),
        projection=cfg.subspace.projection if subspace else None,
        total_params=job.shape["total"], trainable_params=job.shape["trainable"],
        lora_rank=lora.rank_of(model) if cfg.train.method == "lora" else None,
        steps=job.steps_done, global_batch=cfg.train.global_batch, epochs=job.steps_done / len(job.loader),
        steps_planned=job.total_steps, stopped_early=job.settled_at is not None,
        comm_wire_bytes_per_step=to_wire(per_step, n) if per_step else None,
        comm_wire_formula=to_wire(strategy.payload, n),
        comm_wire_bytes_setup=ledger.wire_totals("setup"), comm_wire_bytes_warmup=ledger.wire_totals("warmup"),
        comm_payload_bytes_per_step=per_step,
        comm_payload_formula=strategy.payload,
        comm_payload_bytes_setup=ledger.totals("setup"), comm_payload_bytes_warmup=ledger.totals("warmup"),
        comm_measured_bytes_per_step=job.meter.measured_per_step(),
        comm_measured_interface=cfg.dist.measure_interface or None,
        comm_calls_per_step=ledger.calls_per_step("step"),
        comm_steps_booked=booked, comm_steps_warmup=ledger.steps["warmup"],
        ddp_hook_payload_bytes_per_step=counter.payload / max(job.steps_done - job.start, 1) if counter else 0.0,
        test_accuracy=job.curve[-1][2], train_loss=train_loss, eval_curve=job.curve,
        step_time_s=step_time, peak_rss_mb=max(rss), peak_gpu_mb=peak_gpu, state_bytes=held,
        step_time_s_per_rank=step_times, peak_rss_mb_per_rank=rss, state_bytes_per_rank=state,
        flops_per_step=job.meter.flops, projection_flops_per_step=model.projection.flops() if subspace else 0,
        wall_time_s=time.perf_counter() - job.t_start,
        projection_bytes=model.projection.nbytes() if subspace else 0,
        fingerprint=job.fingerprint, theta0=job.theta0, machine=runtime.machine(),
        config=to_dict(cfg), config_hash=config_hash(cfg), out_dir=str(job.out),
        code_version=runtime.code_version(),
        sync_period=strategy.period, comm_syncs=syncs,
        comm_payload_bytes_per_sync=ledger.per_step("sync") if syncs else None,
        comm_wire_bytes_per_sync=ledger.wire_per_step("sync") if syncs else None,
        comm_calls_per_sync=ledger.calls_per_step("sync") if syncs else None,
        comm_payload_bytes_inner_step=ledger.per_step("step") if syncs and booked else None,
        strategy_state_bytes=kept, comm_wire_sync_by_eval=job.synced if syncs else None,
    )
