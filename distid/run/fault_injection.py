"""Injected faults, for tests and fire drills: DISTID_FAULT="rank=2,step=37[,mode=exit][,attempt=0]".

When `step` steps are done (before step `step`+1 runs) on rank `rank` (every rank if left out):
  exit   — print one line and os._exit(13), no clean-up: a crashed process;
  hang   — print one line and sleep forever: a process that stops answering;
  nan    — this step's input becomes NaN, so the loss does;
  rename — rank 0 dies after writing the checkpoint of step `step` and before renaming it into place;
  unsynced — this rank takes part in the next step's gradient all-reduce but keeps its own gradient
             (a replica that skipped one synchronisation; DDP only), which the replica check names.
Only in torchrun attempt `attempt` (TORCHELASTIC_RESTART_COUNT, default 0), so a restarted group
that replays the step does not fail again.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

MODES = ("exit", "hang", "nan", "rename", "unsynced")
EXIT_CODE = 13


@dataclass(frozen=True)
class Fault:
    step: int
    rank: int | None = None
    mode: str = "exit"
    attempt: int = 0


def parse(text: str) -> Fault | None:
    """'rank=2,step=37,mode=exit' → Fault; '' → None; anything else → ValueError naming the problem."""
    if not text.strip():
        return None
    fields = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in ("rank", "step", "mode", "attempt"):
            raise ValueError(f"DISTID_FAULT: cannot read {part!r}; expected rank=R,step=S[,mode=M][,attempt=A]")
        fields[key] = value if key == "mode" else int(value)
    if "step" not in fields or fields.get("mode", "exit") not in MODES:
        raise ValueError(f"DISTID_FAULT={text!r} needs step=S and a mode among {', '.join(MODES)}")
    return Fault(**fields)


def active(mode: str, step: int, rank: int, fault: Fault | None = None) -> bool:
    """True if `fault` (default: DISTID_FAULT, read now) asks for `mode` on this rank after `step`
    steps, in this attempt."""
    fault = fault if fault is not None else parse(os.environ.get("DISTID_FAULT", ""))
    return (fault is not None and fault.mode == mode and fault.step == step
            and fault.rank in (None, rank)
            and fault.attempt == int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))


class Injector:
    """DISTID_FAULT, read once at the start of a run; called once per step: `x = inject(step, x)`."""

    def __init__(self, rank: int, counter=None):
        self.rank, self.fault, self.counter = rank, parse(os.environ.get("DISTID_FAULT", "")), counter

    def __call__(self, step: int, x):
        """Die or hang here if the fault says so; x filled with NaN for mode=nan; else x itself."""
        if self.fault is None:
            return x
        for mode in ("exit", "hang"):
            if active(mode, step, self.rank, self.fault):
                print(f"rank {self.rank}: DISTID_FAULT: {mode} after {step} steps", file=sys.stderr, flush=True)
                if mode == "exit":
                    os._exit(EXIT_CODE)
                while True:
                    time.sleep(60)
        if active("unsynced", step, self.rank, self.fault):
            if self.counter is None:
                print(f"rank {self.rank}: DISTID_FAULT: mode=unsynced needs DDP (several ranks, dist.strategy = "
                      f"'ddp'); ignored", file=sys.stderr, flush=True)
            else:
                print(f"rank {self.rank}: DISTID_FAULT: keeping its own gradient in step {step + 1}",
                      file=sys.stderr, flush=True)
                self.counter.keep_local = True
        return x * float("nan") if active("nan", step, self.rank, self.fault) else x


def before_rename(step: int, rank: int) -> None:
    """Die between writing a checkpoint and renaming it into place, if DISTID_FAULT says so."""
    if active("rename", step, rank):
        print(f"rank {rank}: DISTID_FAULT: dying before renaming checkpoint {step}", file=sys.stderr, flush=True)
        os._exit(EXIT_CODE)
