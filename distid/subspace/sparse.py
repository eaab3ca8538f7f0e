"""Very sparse random projection (Li, Hastie & Church 2006; used by Li et al. 2018): each entry is
nonzero with probability 1/√D, ±1 with equal odds; columns scaled to unit norm.

About d·√D nonzeros (the MLP at d = 750: ≈ 335 k), stored as CSR for P and for Pᵀ. Each product
runs as one embedding_bag over a CSR's rows — out[i] = Σ_k vals[k]·x[cols[k]], k in row i — which
beats torch.mv on a CSR of D short rows (≈ 1.7 entries each) several-fold on this CPU, and runs
unchanged on a GPU.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from distid.subspace.projection import Projection


def sparse_entries(D: int, d: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, values) of a D×d matrix with density ≈ 1/√D, ±1 entries, unit-norm columns."""
    density = 1.0 / math.sqrt(D)
    k = int(torch.binomial(torch.tensor(float(D * d)), torch.tensor(density), generator=g).item())
    flat = torch.unique(torch.randint(D * d, (max(k, d),), generator=g))  # sorted, ≈ k distinct
    rows, cols = flat // d, flat % d
    missing = torch.ones(d, dtype=torch.bool)
    missing[cols] = False  # an all-zero column would never move: give each one entry
    extra = missing.nonzero().flatten()
    rows = torch.cat([rows, torch.randint(D, (len(extra),), generator=g)])
    cols = torch.cat([cols, extra])
    vals = torch.randint(0, 2, (len(rows),), generator=g).float().mul_(2).sub_(1)
    counts = torch.bincount(cols, minlength=d).float()
    return rows, cols, vals / counts.sqrt()[cols]


class SparseProjection(Projection):
    def __init__(self, D: int, d: int, seed: int = 0):
        super().__init__(D, d, seed)
        rows, cols, vals = sparse_entries(D, d, self.generator())
        idx = torch.stack([rows, cols])
        P = torch.sparse_coo_tensor(idx, vals, (D, d), check_invariants=True).coalesce()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.register_buffer("P", P.to_sparse_csr(), persistent=False)
            self.register_buffer("Pt", P.t().coalesce().to_sparse_csr(), persistent=False)

    def matvec(self, d: torch.Tensor) -> torch.Tensor:
        return csr_mv(self.P, d)

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        return csr_mv(self.Pt, g)

    def flops(self) -> int:
        return 4 * self.nnz

    @property
    def nnz(self) -> int:
        return self.P.values().numel()


def csr_mv(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A·x for a CSR matrix A [m, n] and x [n], as one weighted embedding_bag (sum over each row)."""
    crow = A.crow_indices()
    out = F.embedding_bag(A.col_indices(), x.unsqueeze(1), crow[:-1], mode="sum",
                          per_sample_weights=A.values(), include_last_offset=False)
    return out.view(-1)
