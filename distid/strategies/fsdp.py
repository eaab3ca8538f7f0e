"""`dist.strategy = "fsdp"`: FSDP2 (`fully_shard`) per layer (parallel/fsdp.py). Every rank keeps
1/N of each layer at rest; a layer is all-gathered before its forward and again before its
backward, and the trainable gradients are reduce-scattered. Payload per step (reshard after
forward; p₀ = a parameter's dim 0, shards padded to ⌈p₀/N⌉ rows):
    all_gather      2 · Σ_p ⌈p₀/N⌉·(|p|/p₀)·4           (every parameter, frozen ones too)
    reduce_scatter  Σ_trainable ⌈p₀/N⌉·N·(|p|/p₀)·4
A model may bring its own FSDP form (`model.sharded()`): a subspace model shards θ₀ itself — one
all-gather of each rank's padded slice, 4·⌈D/N⌉ — and DDP all-reduces d's gradient, 4·d.
"""

from __future__ import annotations

from torch import nn

from distid.config import ConfigError
from distid.parallel.fsdp import wrap_fsdp
from distid.strategies.base import Strategy
from distid.strategies.ddp import ddp


def _padded_rows(p, n: int) -> int:
    rows = p.shape[0] if p.dim() else 1
    return -(-rows // n) * (p.numel() // max(rows, 1))


def fsdp_bytes(params: list, n: int, itemsize: int = 4) -> dict[str, int]:
    """params: the model's parameters before sharding (shapes and requires_grad)."""
    gather = 2 * sum(_padded_rows(p, n) for p in params) * itemsize
    scatter = sum(_padded_rows(p, n) * n for p in params if p.requires_grad) * itemsize
    return {"all_gather": gather, "reduce_scatter": scatter, "total": gather + scatter}


def sharded_subspace_bytes(slice_len: int, d: int, itemsize: int = 4) -> dict[str, int]:
    out = {"all_gather": slice_len * itemsize, "all_reduce": d * itemsize}
    out["total"] = sum(out.values())
    return out


class FSDP(Strategy):
    """fully_shard per layer, or the model's own sharded form; one process: the model itself."""

    def __init__(self, cfg, n, device):
        super().__init__(cfg, n, device)
        if n > 1 and cfg.train.method == "subspace" and cfg.subspace.projection == "dense":  # before P is built
            raise ConfigError("subspace.projection = 'dense' cannot be sharded without sending ∂L/∂θ (D floats) "
                              "each step: use 'fastfood' or 'sparse' with dist.strategy = 'fsdp', or 'ddp'")

    @property
    def label(self) -> str:
        return "one process" if self.n == 1 else "FSDP"

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.n == 1:
            return model
        if hasattr(model, "sharded"):  # a subspace model: θ₀ sharded by the model, d all-reduced by DDP
            try:
                sharded = model.sharded()
            except ValueError as e:
                raise ConfigError(str(e)) from e
            net, self.counter = ddp(sharded, self.device)
            self.payload = sharded_subspace_bytes(sharded.slot, sum(p.numel() for p in sharded.parameters()
                                                                    if p.requires_grad))
            return net
        self.payload = fsdp_bytes(list(model.parameters()), self.n)
        return wrap_fsdp(model, self.device.type)
