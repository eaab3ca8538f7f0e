"""The common shape of a random projection P ∈ R^{D×d}, generated from a seed.

forward(d) = P·d ([d] → [D]); its backward applies Pᵀ ([D] → [d]) explicitly, so autograd never
stores or differentiates through the construction of P. Subclasses implement matvec / rmatvec for
any range of rows [lo, hi) — forward(d, lo, hi, add) = add + P[lo:hi]·d — so θ = θ₀ + P·d can be
formed one slice at a time (fused with θ₀'s add where a projection can).
"""

from __future__ import annotations

import torch
from torch import nn

from distid import runtime
from distid.observe.memory import tensor_bytes


class _Apply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d: torch.Tensor, proj: "Projection", lo: int, hi: int | None, add: torch.Tensor | None):
        ctx.proj, ctx.lo = proj, lo
        return proj.matvec(d, lo, hi, add)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return ctx.proj.rmatvec(g.contiguous(), ctx.lo), None, None, None, None


class Projection(nn.Module):
    """P: R^d → R^D. Everything it holds is a buffer regenerated from `seed` (never trained or sent)."""

    def __init__(self, D: int, d: int, seed: int):
        super().__init__()
        if D < 1 or d < 1:
            raise ValueError(f"projection needs D ≥ 1 and d ≥ 1, got D={D}, d={d}")
        self.D, self.d, self.seed = D, d, seed

    def generator(self, salt: int = 0) -> torch.Generator:
        """CPU generator keyed by (seed, "projection", salt): bit-identical on every rank and machine."""
        return runtime.generator(self.seed, "projection", salt)

    def matvec(self, d: torch.Tensor, lo: int = 0, hi: int | None = None,
               add: torch.Tensor | None = None) -> torch.Tensor:
        """add + P[lo:hi]·d: [d] → [hi − lo] (hi defaults to D; add, when given, is [hi − lo])."""
        raise NotImplementedError

    def rmatvec(self, g: torch.Tensor, lo: int = 0) -> torch.Tensor:
        """P[lo:lo + len(g)]ᵀ·g: [hi − lo] → [d]."""
        raise NotImplementedError

    def forward(self, d: torch.Tensor, lo: int = 0, hi: int | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """matvec, differentiable in d (backward: rmatvec); `add` (θ₀'s slice) takes no gradient."""
        return _Apply.apply(d, self, lo, hi, add)

    def flops(self) -> int:
        """Analytic FLOPs of one P·d plus one Pᵀ·g (multiply-adds count 2)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Memory held by the projection's buffers."""
        return sum(tensor_bytes(b) for b in self.buffers())

    def materialize(self) -> torch.Tensor:
        """P as a dense [D, d] matrix, column by column (tests and small D only)."""
        eye = torch.eye(self.d, dtype=self._dtype())
        return torch.stack([self.matvec(eye[i]) for i in range(self.d)], 1).double()

    def _dtype(self) -> torch.dtype:
        return next((b.dtype for b in self.buffers() if b.is_floating_point()), torch.float32)

    def extra_repr(self) -> str:
        return f"D={self.D:,}, d={self.d:,}, seed={self.seed}, {self.nbytes() / 2**20:.1f} MiB"
