"""What the user sees during and after `distid.train`: a progress line on rank 0, TensorBoard
scalars (rank 0 writes, RSS of every rank), and the closing table."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from distid import runtime
from distid.observe.summary import Summary


class Progress:
    """Rank 0 prints `step | loss | acc | steps/s | bytes/step` every `every` steps; every rank
    samples its RSS (for peak_rss_mb) and rank 0 logs all ranks' RSS to TensorBoard."""

    def __init__(self, out: Path, rank: int, world: int, steps: int, every: int):
        self.rank, self.world, self.steps, self.every = rank, world, steps, max(1, every)
        self.proc, self.peak = psutil.Process(), 0.0
        self.t_last, self.step_last = time.perf_counter(), 0
        self.writer = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"))

    def due(self, step: int) -> bool:
        return (step + 1) % self.every == 0 or step + 1 == self.steps

    def rss_mb(self) -> float:
        mb = self.proc.memory_info().rss / 2**20
        self.peak = max(self.peak, mb)
        return mb

    def peak_rss_mb(self) -> float:
        self.rss_mb()
        return self.peak

    def log(self, step: int, loss: float, acc: float, bytes_per_step: float) -> None:
        """One progress line; gathers every rank's RSS (one tiny all-gather, booked as 'metrics')."""
        all_rss = runtime.gather_floats(self.rss_mb()) if self.world > 1 else [self.rss_mb()]
        now = time.perf_counter()
        rate = (step + 1 - self.step_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step + 1
        if self.rank != 0:
            return
        print(f"step {step + 1:>6}/{self.steps} | loss {loss:.4f} | acc {acc:.3f} | {rate:6.1f} steps/s"
              f" | {bytes_per_step:,.0f} B/step", flush=True)
        for name, value in (("train/loss", loss), ("train/batch_accuracy", acc), ("time/steps_per_s", rate),
                            ("time/step_ms", 1e3 / rate),
                            ("comm/bytes_per_step", bytes_per_step)):
            self.scalar(name, value, step)
        for r, mb in enumerate(all_rss):
            self.scalar(f"memory/rss_mb_rank{r}", mb, step)

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step + 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def final_table(s: Summary, ledger_table: str) -> str:
    """method | trainable | bytes/step | 4·D ÷ bytes | test acc | step time, and the per-op ledger."""
    full = 4 * s.total_params
    sent = (s.comm_bytes_per_step or {"total": s.ddp_hook_bytes_per_step})["total"]
    ratio = f"{full / sent:,.1f}×" if sent else "-"
    step_ms = f"{1e3 * s.step_time_s:.2f}" if s.step_time_s else "-"
    label = s.method + (f" ({s.projection}, d={s.trainable_params:,})" if s.projection else "")
    return "\n".join([
        f"\n{'method':<30} {'trainable':>10} {'bytes/step':>11} {'4·D ÷ bytes':>12} {'test acc':>9} {'step ms':>8}",
        f"{label:<30} {s.trainable_params:>10,} {sent:>11,.0f} {ratio:>12} {s.test_accuracy:>9.4f} {step_ms:>8}",
        f"D = {s.total_params:,}; full training would hand 4·D = {full:,} B/step to the all-reduce.",
        f"collectives per step (rank 0, {s.comm_steps_booked} steps booked at the dispatcher; "
        f"setup: {s.comm_bytes_setup['total']:,} B):",
        ledger_table,
        f"world size {s.world_size} on {s.nnodes} node{'s' if s.nnodes > 1 else ''} ({s.backend}), peak RSS {s.peak_rss_mb:.0f} MB, "
        f"{s.flops_per_step / 1e6:.1f} MFLOP/step/rank, summary: {s.out_dir}/summary.json",
        *([f"checkpoint {s.checkpoint}: {s.checkpoint_bytes:,} B (a full state_dict: "
           f"{s.full_state_dict_bytes:,} B)"] if s.checkpoint_bytes else []),
    ])
