"""What each strategy should hand to its collectives per optimizer step (payload bytes per rank),
from the parameters alone — the formula printed beside the ledger's measurement.

DDP:  all_reduce 4·T (T = trainable parameters, float32).
FSDP2 (reshard after forward): every unit is all-gathered twice (forward, backward); a rank hands
in its padded shard, Σ_p ⌈p₀/N⌉·(|p|/p₀)·4 bytes; the gradients of the trainable parameters
are reduce-scattered with the padded full size, Σ_p ⌈p₀/N⌉·N·(|p|/p₀)·4 (p₀ = a parameter's dim 0).
DDP + PowerSGD (rank r, after its plain steps): a parameter viewed as [n, m] with
(n + m)·r' · 2 < n·m (r' = min(n, m, r)) sends P [n, r'] and Q [m, r'], any other one itself:
4·(Σ r'·(n + m) + Σ |uncompressed|). fp16/bf16 hooks: ddp_bytes(model, itemsize=2).
Local steps (train.sync_every = H > 1): one all_reduce of the pseudo-gradient every H steps,
4·T bytes (2·T in half precision), 4·T/H per step; inner steps hand in nothing.
Sharded subspace: one all_gather of this rank's θ₀ slice, padded to ⌈D/N⌉ (4·⌈D/N⌉), and the
all_reduce of 4·d.
"""

from __future__ import annotations

from torch import nn


def _padded_rows(p, n: int) -> int:
    rows = p.shape[0] if p.dim() else 1
    return -(-rows // n) * (p.numel() // max(rows, 1))


def ddp_bytes(model: nn.Module, itemsize: int = 4) -> dict[str, int]:
    t = sum(p.numel() for p in model.parameters() if p.requires_grad) * itemsize
    return {"all_reduce": t, "total": t}


def local_sgd_bytes(model: nn.Module, every: int, itemsize: int = 4) -> dict[str, float]:
    """Per step: the pseudo-gradient's all-reduce (T·itemsize bytes) once every `every` steps."""
    per_sync = ddp_bytes(model, itemsize)["total"]
    return {"all_reduce": per_sync / every, "total": per_sync / every}


def powersgd_bytes(model: nn.Module, rank: int, min_compression_rate: float = 2, itemsize: int = 4) -> dict:
    """PowerSGD's per-step payload once it compresses, by PyTorch's rule (`_should_compress`)."""
    low_rank, plain = 0, 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        n = p.shape[0] if p.dim() else 1
        m = p.numel() // n
        r = min(n, m, rank)
        if (n + m) * r * min_compression_rate < n * m:
            low_rank += r * (n + m)
        else:
            plain += p.numel()
    t = (low_rank + plain) * itemsize
    return {"all_reduce": t, "total": t}


def fsdp_bytes(params: list, n: int, itemsize: int = 4) -> dict[str, int]:
    """params: the model's parameters before sharding (shapes and requires_grad)."""
    gather = 2 * sum(_padded_rows(p, n) for p in params) * itemsize
    scatter = sum(_padded_rows(p, n) * n for p in params if p.requires_grad) * itemsize
    return {"all_gather": gather, "reduce_scatter": scatter, "total": gather + scatter}


def sharded_subspace_bytes(slice_len: int, d: int, itemsize: int = 4) -> dict[str, int]:
    out = {"all_gather": slice_len * itemsize, "all_reduce": d * itemsize}
    out["total"] = sum(out.values())
    return out
