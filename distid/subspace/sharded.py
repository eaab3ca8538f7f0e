"""Subspace training with θ₀ sharded across ranks (dist.strategy = "fsdp"): where FSDP and the subspace
meet, in one file.

Rank r keeps only its slice θ₀[a_r:b_r] (D/N floats) at rest. Forward: every rank computes its
rows of P·d, (P·d)[a_r:b_r], from the seed-generated structure (Fastfood: 1 byte per parameter;
sparse: O(d√D)), adds them to its θ₀ slice and the slices are all-gathered into θ [D] — the all-gather FSDP does for any frozen
weight. Backward: ∂L/∂d = Pᵀ·∂L/∂θ, computed locally; d's gradient (d floats) is then all-reduced
by DDP. A dense P is refused here: sharded by rows it would need ∂L/∂θ reduce-scattered (D floats
per step), replicated it would undo the memory saving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from distid import runtime
from distid.primitives.ring import chunk_bounds
if TYPE_CHECKING:
    from distid.subspace.model import SubspaceModel


DENSE_UNDER_FSDP = ("a dense projection cannot be sharded without sending ∂L/∂θ (D floats) each step: "
                    "use subspace.projection = 'fastfood' or 'sparse' with dist.strategy = 'fsdp', or 'ddp'")


class _GatherTheta(torch.autograd.Function):
    """θ = all_gather(θ₀[a:b] + (P·d)[a:b]) forward; ∂L/∂d = Pᵀ·∂L/∂θ backward (no collective)."""

    @staticmethod
    def forward(ctx, d: torch.Tensor, owner: "ShardedSubspaceModel") -> torch.Tensor:
        ctx.owner = owner
        a, b = owner.bounds
        L = owner.slot  # slices differ by one element at most; collectives want equal sizes: pad
        local = torch.zeros(L, dtype=d.dtype, device=d.device)
        local[: b - a] = owner.inner.projection.matvec(d, a, b, add=owner.theta0_shard)  # this rank's rows only
        out = torch.empty(L * len(owner.all_bounds), dtype=d.dtype, device=d.device)
        runtime.all_gather_tensor(out, local)
        return torch.cat([out[i * L:i * L + hi - lo] for i, (lo, hi) in enumerate(owner.all_bounds)])

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return ctx.owner.inner.projection.rmatvec(g), None


class ShardedSubspaceModel(nn.Module):
    """A SubspaceModel whose θ₀ lives as one 1/N slice per rank; same forward, same d."""

    def __init__(self, inner: SubspaceModel):
        super().__init__()
        if inner.kind == "dense":
            raise ValueError(DENSE_UNDER_FSDP)
        if inner.layerwise is not None:
            raise ValueError("subspace.layerwise = true is for dist.strategy = 'ddp': under 'fsdp' each rank already "
                             "forms only its own rows of θ")
        if inner.said is not None:
            raise ValueError("subspace.said = true is not supported with dist.strategy = 'fsdp' (the sharded forward "
                             "applies P·d slice by slice); use 'ddp'")
        n, r = dist.get_world_size(), dist.get_rank()
        self.all_bounds = chunk_bounds(inner.D, n)
        self.bounds = self.all_bounds[r]
        self.slot = max(hi - lo for lo, hi in self.all_bounds)  # padded slice length
        a, b = self.bounds
        self.inner = inner
        self.register_buffer("theta0_shard", inner.theta0[a:b].clone(), persistent=False)
        _drop_full_theta0(inner)
        self.d = inner.d  # the one parameter, shared with `inner`

    @property
    def D(self) -> int:
        return self.all_bounds[-1][1]

    def forward(self, *args, **kwargs):
        theta = _GatherTheta.apply(self.d, self)
        return self.inner.run(theta, *args, **kwargs)

    def regenerated_buffers(self) -> list[str]:
        """Every buffer (the θ₀ slices differ by rank on purpose): DDP must not broadcast any."""
        return [n for n, _ in self.named_buffers()]


def _drop_full_theta0(inner: SubspaceModel) -> None:
    """Free the replicated θ₀ (and the module's views of it): only the shard stays at rest."""
    like = dict(dtype=inner.theta0.dtype, device=inner.theta0.device)
    slots = [(inner.module.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2])
             for name in inner.frozen_names()]
    views = [getattr(owner, leaf) for owner, leaf in slots]  # held: their ids stay distinct
    empties: dict[int, torch.Tensor] = {}  # one empty tensor per view: one shared by all would read as
    for (owner, leaf), view in zip(slots, views):  # tied weights; truly tied ones (GPT-2) stay tied
        setattr(owner, leaf, empties.setdefault(id(view), torch.empty(0, **like)))
    inner.theta0 = torch.empty(0, **like)
