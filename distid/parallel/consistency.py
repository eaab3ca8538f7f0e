"""Start-up check that every rank built the same thing (θ₀, P, a model) without sending it."""

from __future__ import annotations

import torch.distributed as dist


class RanksDisagree(RuntimeError):
    """Ranks built different things from what should be the same seed and config."""


def assert_same_across_ranks(what: dict[str, str], group: dist.ProcessGroup | None = None) -> None:
    """All-gather each rank's fingerprints (small strings) and fail on every rank if any differ."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, what, group=group)
    for key in what:
        values = [f[key] for f in everyone]
        bad = [r for r, v in enumerate(values) if v != values[0]]
        if bad:
            raise RanksDisagree(
                f"ranks disagree on {key}: rank 0 has {values[0]}, rank(s) {bad} have "
                f"{sorted({values[r] for r in bad})}. Every rank must regenerate it from the same seed, "
                f"config and torch version.")
