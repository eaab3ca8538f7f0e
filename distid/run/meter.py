"""What one training step costs, measured around it: `with meter.step(step): ...`.

The first `warm` steps of this process (2, or more while the strategy is not yet steady: a comm
hook's uncompressed steps) are booked by the ledger as "warmup" (step 0 is also FLOP-counted; at
step 1 DDP rebuilds its buckets), the next LEDGER_STEPS as "step" — the steady state the summary's
bytes per step come from. The ledger slows a step, so only the steps after those are timed. With dist.measure_interface set,
the interface's byte counters are read around the booked steady steps too (observe/interface.py).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager, nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from distid.observe.interface import InterfaceWindow
from distid.observe.ledger import CommLedger, sent_per_step, to_wire

WARMUP_STEPS = 2
LEDGER_STEPS = 10


class StepMeter:
    """Ledger phase, FLOP counter and timer of each step; `times` holds the timed steps' seconds."""

    def __init__(self, ledger: CommLedger, wire_formula: dict, start: int, warm: int, device: torch.device,
                 interface: str = ""):
        self.ledger, self.wire_formula, self.start, self.device = ledger, wire_formula, start, device
        self.warm = max(WARMUP_STEPS, warm)
        self.times: list[float] = []
        self.flop_counter = FlopCounterMode(display=False)
        self.window = InterfaceWindow(interface) if interface else None
        self.measured: float | None = None
        self.idle_s = 0.0  # seconds the interface's idle segments took (not training)

    @contextmanager
    def step(self, step: int):
        i = step - self.start  # steps of this process (a resumed run books its own first steps)
        booked = i < self.warm + LEDGER_STEPS
        phase = "warmup" if i < self.warm else "step"
        counted = self.window is not None and booked and phase == "step"
        with self.window.segment() if counted else nullcontext(), \
                self.ledger.phase(phase, steps=1) if booked else nullcontext(), \
                self.flop_counter if i == 0 else nullcontext():
            t0 = time.perf_counter()
            yield
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            if not booked:
                self.times.append(time.perf_counter() - t0)
        if counted and i == self.warm + LEDGER_STEPS - 1:
            self.measured = self.window.result(LEDGER_STEPS)
            self.idle_s = self.window.idle_s

    def step_time(self, period: int = 1) -> float | None:
        """Seconds per step: the median of the timed steps; where the strategy synchronises every
        `period` > 1 steps, inside the step that ends each period, their mean, so that those count."""
        if not self.times:
            return None
        return statistics.median(self.times) if period == 1 else statistics.fmean(self.times)

    @property
    def flops(self) -> int:
        """FLOPs of this process's first step, as torch.utils.flop_counter counts them."""
        return self.flop_counter.get_total_flops()

    def wire_per_step(self, done: int) -> float:
        """Bytes this rank sends per step after `done` steps (wire): the ledger's once it has booked
        steady steps, the formula's before that."""
        per = self.ledger.per_training_step(done - self.start)
        return sent_per_step(to_wire(per, self.ledger.world_size) if per else None, self.wire_formula)

    def measured_per_step(self) -> float | None:
        """Bytes the interface carried per rank per booked step (None unless measured)."""
        return self.measured
