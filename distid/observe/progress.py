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

    def log(self, step: int, loss: float, acc: float, wire_per_step: float) -> None:
        """One progress line; gathers every rank's RSS (one tiny all-gather, booked as 'metrics')."""
        all_rss = runtime.gather_floats(self.rss_mb()) if self.world > 1 else [self.rss_mb()]
        now = time.perf_counter()
        rate = (step + 1 - self.step_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step + 1
        if self.rank != 0:
            return
        print(f"step {step + 1:>6}/{self.steps} | loss {loss:.4f} | acc {acc:.3f} | {rate:6.1f} steps/s"
              f" | {wire_per_step:,.0f} B sent/step", flush=True)
        for name, value in (("train/loss", loss), ("train/batch_accuracy", acc), ("time/steps_per_s", rate),
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


def final_table(s: Summary, ledger_table: str) -> str:
    """method | trainable | sent B/step | ÷ full DDP | test acc | step ms, and the per-op ledger.
    Bytes are wire bytes (what a rank sends under ring algorithms); the ledger adds the payload."""
    n = s.world_size
    full = 2 * (n - 1) / n * 4 * s.total_params  # full training under DDP: ring all-reduce of D floats
    sent = (s.comm_wire_bytes_per_step or s.comm_wire_formula)["total"]
    ratio = f"{full / sent:,.1f}×" if sent and full else "-"
    step_ms = f"{1e3 * s.step_time_s:.2f}" if s.step_time_s else "-"
    label = s.method + (f" ({s.projection}, d={s.trainable_params:,})" if s.projection else "")
    measured = [f"measured on {s.comm_measured_interface}: {s.comm_measured_bytes_per_step:,.0f} B sent/step/rank "
                f"(the interface's counters; headers and the backend's own algorithms included)"] \
        if s.comm_measured_bytes_per_step is not None else []
    return "\n".join([
        f"\n{'method':<30} {'trainable':>10} {'sent B/step':>12} {'full DDP ÷ this':>16} {'test acc':>9} {'step ms':>8}",
        f"{label:<30} {s.trainable_params:>10,} {sent:>12,.0f} {ratio:>16} {s.test_accuracy:>9.4f} {step_ms:>8}",
        f"D = {s.total_params:,}; full training under DDP on {n} rank{'s' if n > 1 else ''} would send "
        f"2(N−1)/N·4·D = {full:,.0f} B/step per rank (ring all-reduce).",
        f"collectives per step on rank 0 (sent: bytes a ring algorithm sends; handed in: the tensors given to "
        f"the op; {s.comm_steps_booked} steps booked; set-up sent {s.comm_wire_bytes_setup['total']:,.0f} B):",
        ledger_table,
        *measured,
        f"world size {s.world_size} on {s.nnodes} node{'s' if s.nnodes > 1 else ''} ({s.backend}), peak RSS {s.peak_rss_mb:.0f} MB, "
        f"{s.flops_per_step / 1e6:.1f} MFLOP/step/rank, summary: {s.out_dir}/summary.json",
        *([f"checkpoint {s.checkpoint}: {s.checkpoint_bytes:,} B (a full state_dict: "
           f"{s.full_state_dict_bytes:,} B)"] if s.checkpoint_bytes else []),
    ])
