"""When a run goes wrong: a loss that is no longer finite, and a peer rank that died or hangs.

Naming the failed rank: a rank whose own code raises records a one-line reason in the process
group's key-value store (hosted by the torchrun agent, or by rank 0) and exits; a rank whose
collective fails (connection closed: a peer died; timed out after dist.timeout_s: a peer hangs)
records "alive" there, waits up to ANSWER_S for the others to do the same, and names those that
did not, with their recorded reasons. The bound on a surviving rank: dist.timeout_s + ANSWER_S.
"""

from __future__ import annotations

import os
import time

import torch.distributed as dist

ANSWER_S = 5.0  # how long a surviving rank waits for its peers to say they are alive
COLLECTIVE_ERRORS = ("Connection closed", "Connection reset", "Timed out", "timed out", "Broken pipe",
                     "NCCL", "gloo", "DistBackendError")


class Diverged(FloatingPointError):
    """The loss (or a trainable parameter) stopped being finite."""


class PeerFailure(RuntimeError):
    """A collective failed because another rank died or stopped answering."""


def restart_hazard() -> str | None:
    """A warning when torchrun may restart workers over a rendezvous store shared across attempts:
    a restarted rank can then read the dead group's addresses and fail to connect (pytorch/pytorch#135712;
    measured here: 2 restarts in 4 failed so)."""
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 \
            and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return ("warning: torchrun --max-restarts with its rendezvous store shared by the workers: a restarted "
                "group may fail to connect; export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun "
                "(launch/*.sh do)")
    return None


def is_collective_error(e: BaseException) -> bool:
    return isinstance(e, getattr(dist, "DistError", ())) or any(s in str(e) for s in COLLECTIVE_ERRORS)


class Watch:
    """The keys one run uses in the store: f'distid/{token}/alive/{rank}', f'.../error/{rank}'."""

    def __init__(self, token: str):
        self.prefix = f"distid/{token}"
        self.rank, self.n = dist.get_rank(), dist.get_world_size()

    def _store(self):
        return dist.distributed_c10d._get_default_store()

    def record_error(self, step: int, e: BaseException) -> None:
        """Tell the other ranks why this one stops (best effort: the store may be gone too)."""
        first = (str(e).strip().splitlines() or [""])[0]
        try:
            self._store().set(f"{self.prefix}/error/{self.rank}", f"step {step}: {type(e).__name__}: {first}"[:300])
        except Exception:
            pass

    def explain(self, step: int, e: BaseException, answer_s: float = ANSWER_S) -> PeerFailure:
        """After a failed collective: which ranks did not answer, and what they recorded."""
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        first = next((line for line in lines if any(m in line for m in COLLECTIVE_ERRORS[:5])), lines[0])[:200]
        try:
            store = self._store()
            store.set(f"{self.prefix}/alive/{self.rank}", str(step))
            deadline = time.monotonic() + answer_s
            while True:
                silent = [r for r in range(self.n) if not store.check([f"{self.prefix}/alive/{r}"])]
                if not silent or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            reasons = [f"rank {r}: {store.get(k).decode()}" for r in range(self.n)
                       if store.check([k := f"{self.prefix}/error/{r}"])]
        except Exception as store_error:  # without torchrun the store lives in rank 0
            return PeerFailure(f"rank {self.rank}: a collective failed at step {step} ({first}) and the store is "
                               f"unreachable ({type(store_error).__name__}): rank 0 died")
        who = f"rank(s) {silent} did not answer within {answer_s:.0f} s (died or hang)" if silent else \
            "every rank answered"
        why = f"; {'; '.join(reasons)}" if reasons else ""
        return PeerFailure(f"rank {self.rank}: a collective failed at step {step} ({first}); {who}{why}")
