"""Checks that ranks hold what they should: at start-up, that every rank built the same thing (θ₀,
P, a model) without sending it; during and after training, that every replica's trainable state is
the same (a hash per rank, all-gathered)."""

from __future__ import annotations

import hashlib

import torch
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


class ReplicasDiverged(RuntimeError):
    """Ranks that should hold the same trainable numbers (every replica after a synchronised step) do not."""


def trainable_digest(model) -> str:
    """16 hex digits of the sha256 of the replicated trainable parameters' bytes, in name order.
    A parameter FSDP shards (a DTensor) is left out: each of its numbers lives on one rank, so there
    is no replica to compare (gathering it would give every rank the same bytes by construction)."""
    return tensors_digest((name, p) for name, p in model.named_parameters()
                          if p.requires_grad and not hasattr(p, "full_tensor"))


def tensors_digest(named) -> str:
    """16 hex digits of the sha256 of (name, tensor) pairs: each name, then the tensor's bytes."""
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_replicas(model, steps_done: int, group: dist.ProcessGroup | None = None, digest=trainable_digest) -> None:
    """Every rank's `digest(model)` (default: trainable_digest), all-gathered; ReplicasDiverged on every rank when they differ,
    naming the ranks outside the majority (with two ranks, or no majority, every rank's digest)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, digest(model), group=group)
    common = max(dict.fromkeys(everyone), key=everyone.count)
    if everyone.count(common) == len(everyone):
        return
    head = f"after {steps_done} steps the replicas' trainable states differ"
    tail = "a synchronisation was skipped, or a rank changed its copy on its own: these are not one model"
    if 2 * everyone.count(common) > len(everyone):
        bad = [r for r, v in enumerate(everyone) if v != common]
        raise ReplicasDiverged(f"{head}: rank(s) {', '.join(map(str, bad))} differ from the other "
                               f"{everyone.count(common)} (sha256 {everyone[bad[0]]} vs {common}); {tail}")
    raise ReplicasDiverged(f"{head}: {', '.join(f'rank {r} {v}' for r, v in enumerate(everyone))}; {tail}")
