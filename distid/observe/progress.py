"""What the user sees during and after `distid.train`: a progress line on rank 0, TensorBoard
scalars (rank 0 writes, RSS of every rank), and the closing table."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from distid import runtime
from distid.observe.summary import Summary
from distid.primitives.formulas import wire_factor


class Progress:
    """Rank 0 prints a progress line every `every` steps: training loss and accuracy averaged over
    rank 0's batches since the previous line, steps/s, and the bytes each rank sends per step; every
    rank samples its RSS (for peak_rss_mb) and rank 0 logs all ranks' RSS to TensorBoard."""

    def __init__(self, out: Path, rank: int, world: int, steps: int, every: int):
        self.rank, self.world, self.steps, self.every = rank, world, steps, max(1, every)
        self.proc, self.peak = psutil.Process(), 0.0
        self.t_last, self.step_last = time.perf_counter(), 0
        self.writer = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"))
            sent = "; B sent/step: bytes each rank sends per step (ring algorithms)" if world > 1 else ""
            print(f"every {self.every} steps: training loss and accuracy averaged over rank 0's batches since "
                  f"the previous line{sent}", flush=True)

    def rss_mb(self) -> float:
        mb = self.proc.memory_info().rss / 2**20
        self.peak = max(self.peak, mb)
        return mb

    def peak_rss_mb(self) -> float:
        self.rss_mb()
        return self.peak

    def log(self, step: int, loss: float, acc: float, wire_per_step: float) -> None:
        """One progress line: rank 0's mean training loss and accuracy since the last line; gathers
        every rank's RSS (one tiny all-gather)."""
        all_rss = runtime.gather_floats(self.rss_mb()) if self.world > 1 else [self.rss_mb()]
        now = time.perf_counter()
        rate = (step + 1 - self.step_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step + 1
        if self.rank != 0:
            return
        print(f"step {step + 1:>6}/{self.steps} | train loss {loss:.4f} | train acc {acc:.3f} | {rate:6.1f} steps/s"
              + (f" | {wire_per_step:,.0f} B sent/step" if self.world > 1 else ""), flush=True)
        for name, value in (("train/loss", loss), ("train/accuracy", acc), ("time/steps_per_s", rate),
                            ("time/step_ms", 1e3 / rate),
                            ("comm/wire_bytes_per_step", wire_per_step)):
            self.scalar(name, value, step)
        for r, mb in enumerate(all_rss):
            self.scalar(f"memory/rss_mb_rank{r}", mb, step)

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step + 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def method_label(s: Summary) -> str:
    """`subspace (fastfood, d = 750)`, `lora (rank 8 on fc1, fc2)`, `full`."""
    if s.projection:
        return f"{s.method} ({s.projection}, d = {s.trainable_params:,})"
    if s.method == "lora":
        names = [t.strip() for t in (s.config.get("lora", {}).get("targets") or "").split(",") if t.strip()]
        targets = ", ".join(f"layer {t}" if t.isdigit() else t for t in names) or "every Linear/Conv layer"
        return f"lora (rank {s.lora_rank} on {targets})"
    return s.method


def _row(label: str, value: str) -> str:
    return f"  {label:<18}{value}"


def final_table(s: Summary, ledger_table: str) -> str:
    """The closing table, in words: what ran, what it reached, what one rank sent per step (wire
    bytes: a ring all-reduce of S bytes sends 2(N−1)/N·S), time, memory, and where the files are."""
    n = s.world_size
    full = wire_factor("all_reduce", n) * 4 * s.total_params  # full training under DDP: all-reduce of D floats
    sent = s.wire_per_step
    where = f"{s.strategy_label} on {n} ranks, {s.nnodes} node{'s' if s.nnodes > 1 else ''} ({s.backend})" \
        if n > 1 else f"one process ({s.device})"
    lines = [f"\n{method_label(s)}, {where}, {s.steps:,} steps of global batch {s.global_batch}",
             _row("trained numbers", f"{s.trainable_params:,} " + (f"(the adapters; the model's D = {s.total_params:,} "
                  f"stay frozen)" if s.method == "lora" else f"of D = {s.total_params:,}")),
             _row("test accuracy", f"{s.test_accuracy:.4f}")]
    if n > 1:
        more = ("this run sends nothing per step" if not sent else f"{full / sent:,.1f}× this" if full >= sent
                else f"this run sends {sent / full:,.2f}× that")
        lines += [_row("sent per step", f"{sent:,.0f} B by each rank; full training under DDP would send "
                       f"{full:,.0f} B ({more})"),
                  _row("sent at set-up", f"{s.comm_wire_bytes_setup['total']:,.0f} B by each rank, once")]
        rounds = s.steps // s.sync_period + (s.steps % s.sync_period > 0)
        if s.comm_syncs and s.comm_wire_bytes_per_sync and s.comm_syncs > rounds:  # a part of the model each time
            lines.append(_row("synchronised", f"a part of the model at a time, {s.comm_syncs} times in {s.steps} "
                              f"steps (each part once every {s.sync_period} steps): "
                              f"{s.comm_wire_bytes_per_sync['total']:,.0f} B by each rank each time on average"))
        elif s.comm_syncs and s.comm_wire_bytes_per_sync:
            lines.append(_row("synchronised", f"every {s.sync_period} steps and after the last, {s.comm_syncs} "
                              f"times: {s.comm_wire_bytes_per_sync['total']:,.0f} B by each rank each time; "
                              f"the steps between send nothing"))
    else:
        lines.append(_row("sent per step", "nothing: one process"))
    every = (s.config.get("subspace") or {}).get("redraw_every", 0) if s.method == "subspace" else 0
    if every:
        lines.append(_row("re-drawn", f"every {every} steps, {s.steps // every} times: θ₀ ← θ₀ + P·d, a new P from the "
                          f"seed, d ← 0; nothing sent (the checkpoint keeps each fold's d)"))
    if s.comm_measured_bytes_per_step is not None:
        lines.append(_row("measured", f"{s.comm_measured_bytes_per_step:,.0f} B/step/rank on {s.comm_measured_interface} "
                          f"(its counters: headers and the backend's own algorithms included)"))
    how_timed = "(median)" if s.sync_period == 1 else "(mean, the synchronisations included)"
    lines += [_row("step time", f"{1e3 * s.step_time_s:.2f} ms {how_timed}" if s.step_time_s else
                   "not timed (too few steps after the booked ones)"),
              _row("peak memory", f"{s.peak_rss_mb:.0f} MB resident, the largest rank"),
              _row("compute", f"{s.flops_per_step / 1e6:.1f} MFLOP per step per rank")]
    if s.strategy_state_bytes:  # what the strategy keeps between steps, beyond model, gradients and optimizer
        lines.append(_row("kept per rank", ", ".join(f"{what} {b:,} B" for what, b in s.strategy_state_bytes.items())
                          + f" (the strategy's own; optimizer state {s.state_bytes['optimizer']:,} B)"))
    if n > 1 and ledger_table.count("\n") > 0:
        per, booked = ("synchronisation", f"{s.comm_syncs} synchronisations") if s.comm_syncs \
            else ("step", f"{s.comm_steps_booked} steps")
        lines += [f"collectives per {per} on rank 0 ({booked} booked; sent: what a ring algorithm "
                  f"sends; handed in: the tensor given to the collective):", ledger_table]
    lines.append(f"files in {s.out_dir}/: summary.json (every figure), trainable.pt, tb/ (tensorboard --logdir "
                 f"{s.out_dir}), checkpoints/")
    if s.checkpoint_bytes:
        lines.append(f"checkpoint {s.checkpoint}: {s.checkpoint_bytes:,} B (the model's full state_dict: "
                     f"{s.full_state_dict_bytes:,} B)")
    return "\n".join(lines)
