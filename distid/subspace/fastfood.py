"""Fastfood projection (Le, Sarlós & Smola 2013), as a stack of independent blocks of size L:

    P·d = truncate_D [ V_1 d̃ ; … ; V_nb d̃ ],   V_j = H G_j Π_j H B_j,   d̃ = d zero-padded to L,

H the unnormalised L×L Walsh–Hadamard matrix, B_j random ±1, Π_j a random permutation, G_j
Gaussian scaled so every column of P has unit norm in expectation. `block="auto"`: L = 2^⌈log₂d⌉,
nb = ⌈D/L⌉ blocks — O(D log d) time, O(D) memory: B, G and Π, Π⁻¹ as int32, 16 bytes per entry. `block="whole"`: one block L = 2^⌈log₂D⌉ over
the whole network, as Li et al. (2018) implement it — O(D log D).
"""

from __future__ import annotations

import torch

from distid.subspace.hadamard import factor_sizes, hadamard
from distid.subspace.projection import Projection


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class FastfoodProjection(Projection):
    def __init__(self, D: int, d: int, seed: int = 0, block: str | int = "auto"):
        super().__init__(D, d, seed)
        L = {"auto": _pow2_at_least(d), "whole": _pow2_at_least(D)}.get(block, block)
        if not isinstance(L, int) or L < d or L & (L - 1):
            raise ValueError(f"fastfood block must be 'auto', 'whole' or a power of two ≥ d={d}; got {block!r}")
        self.L, self.nb = L, -(-D // L)
        g = self.generator()
        B = torch.randint(0, 2, (self.nb, L), generator=g).float().mul_(2).sub_(1)
        perm = torch.argsort(torch.rand(self.nb, L, generator=g), dim=1)
        G = torch.randn(self.nb, L, generator=g)
        G /= (D * G.pow(2).sum(1, keepdim=True)).sqrt()  # column norm² ≈ 1 after truncation to D
        offsets = torch.arange(self.nb).unsqueeze(1) * L
        self.register_buffer("B", B, persistent=False)
        self.register_buffer("G", G, persistent=False)
        index = torch.int32 if self.nb * L < 2**31 else torch.int64  # int32 halves the index memory
        self.register_buffer("perm", (perm + offsets).flatten().to(index), persistent=False)
        self.register_buffer("inv_perm", (torch.argsort(perm, dim=1) + offsets).flatten().to(index),
                             persistent=False)

    def matvec(self, d: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(self.L, dtype=d.dtype, device=d.device)
        x[: self.d] = d
        y = hadamard(self.B * x)  # [nb, L]: H B_j d̃ for every block at once
        y = y.view(-1).index_select(0, self.perm).view(self.nb, self.L).mul_(self.G)
        return hadamard(y).view(-1)[: self.D]

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        y = torch.zeros(self.nb * self.L, dtype=g.dtype, device=g.device)
        y[: self.D] = g
        y = hadamard(y.view(self.nb, self.L)).mul_(self.G)
        y = y.view(-1).index_select(0, self.inv_perm).view(self.nb, self.L)
        return hadamard(y).mul_(self.B).sum(0)[: self.d]

    def flops(self) -> int:
        """Two Walsh–Hadamard transforms (2·n_i per element per factor) and three element-wise
        products per direction, over nb·L elements."""
        per_wht = self.nb * self.L * sum(2 * n for n in factor_sizes(self.L))
        return 2 * (2 * per_wht + 3 * self.nb * self.L)
