"""Dense Gaussian projection (Li et al. 2018): P_ij ~ N(0, 1), each column scaled to unit norm.

Memory 4·D·d bytes in float32 (the MLP, D = 199,210, at d = 750: 598 MB); P·d and Pᵀ·g are one
matrix–vector product each, bound by memory bandwidth.
"""

from __future__ import annotations

import psutil
import torch

from distid.subspace.projection import Projection


def dense_bytes(D: int, d: int, itemsize: int = 4) -> int:
    return D * d * itemsize


def check_dense_fits(D: int, d: int, max_bytes: int | None = None, copies: int = 1) -> None:
    """Refuse a dense P that would not fit (default limit: half the available memory, shared by
    `copies` processes on this machine) instead of letting the machine swap itself to death."""
    need = dense_bytes(D, d) * copies
    limit = max_bytes if max_bytes else psutil.virtual_memory().available // 2
    if need > limit:
        raise MemoryError(
            f"a dense projection needs {need / 1e9:.2f} GB (D={D:,} × d={d:,} × 4 bytes"
            f"{f' × {copies} processes' if copies > 1 else ''}) but the limit is {limit / 1e9:.2f} GB. "
            f"Use projection = 'fastfood' (O(D) memory) or 'sparse' (about d·√D entries), "
            f"or raise subspace.max_dense_gb.")


class DenseProjection(Projection):
    def __init__(self, D: int, d: int, seed: int = 0, max_bytes: int | None = None, copies: int = 1):
        super().__init__(D, d, seed)
        check_dense_fits(D, d, max_bytes, copies)
        P = torch.randn(D, d, generator=self.generator())
        P /= P.norm(dim=0, keepdim=True)
        self.register_buffer("P", P, persistent=False)

    def matvec(self, d, lo=0, hi=None, add=None):
        out = self.P[lo:hi] @ d
        return out if add is None else out.add_(add)

    def rmatvec(self, g, lo=0):
        return g @ self.P[lo:lo + g.numel()]

    def flops(self) -> int:
        return 4 * self.D * self.d
