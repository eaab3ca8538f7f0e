"""What one training step costs, measured around it: `with meter.step(step): ...`.

The first `warm` steps of this process (2, or a comm hook's uncompressed ones: PowerSGD's
dist.powersgd_start_iter) are booked by the ledger as "warmup" (step 0 is also FLOP-counted; at
step 1 DDP rebuilds its buckets), the next LEDGER_STEPS as "step" — the steady state the summary's
bytes per step come from. The ledger slows a step, so only the steps after those are timed.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from distid.observe.ledger import CommLedger

WARMUP_STEPS = 2
LEDGER_STEPS = 10


class StepMeter:
    """Ledger phase, FLOP counter and timer of each step; `times` holds the timed steps' seconds."""

    def __init__(self, ledger: CommLedger, counter, start: int, warm: int, device: torch.device):
        self.ledger, self.counter, self.start, self.device = ledger, counter, start, device
        self.warm = max(WARMUP_STEPS, warm)
        self.times: list[float] = []
        self.flop_counter = FlopCounterMode(display=False)

    @contextmanager
    def step(self, step: int):
        i = step - self.start  # steps of this process (a resumed run books its own first steps)
        booked = i < self.warm + LEDGER_STEPS
        phase = "warmup" if i < self.warm else "step"
        with self.ledger.phase(phase, steps=1) if booked else nullcontext(), \
                self.flop_counter if i == 0 else nullcontext():
            t0 = time.perf_counter()
            yield
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            if not booked:
                self.times.append(time.perf_counter() - t0)

    @property
    def flops(self) -> int:
        """FLOPs of this process's first step, as torch.utils.flop_counter counts them."""
        return self.flop_counter.get_total_flops()

    def bytes_per_step(self, done: int) -> float:
        """Payload handed to collectives per step so far: the ledger's once it has booked steady
        steps, before that DDP's bucket counter (0 without DDP)."""
        if self.ledger.steps["step"]:
            return self.ledger.per_step()["total"]
        return self.counter.payload / done if self.counter else 0.0
