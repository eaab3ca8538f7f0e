"""Very sparse random projection (Li, Hastie & Church 2006; used by Li et al. 2018): each entry is
nonzero with probability 1/√D, ±1 with equal odds; columns scaled to unit norm.

About d·√D nonzeros (the MLP at d = 750: ≈ 335 k), stored once as a list sorted by row (row and
column int32, value float32: 12 bytes per nonzero). P·d scatters vals·d[cols] into the rows with one
index_add_; Pᵀ·g scatters vals·g[rows] into the d columns; a range of rows is one slice of the list.
Both are O(nnz) (plus the [hi − lo] output for P·d) and run unchanged on a GPU.
"""

from __future__ import annotations

import math
import torch

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
        order = torch.argsort(rows * d + cols)  # one list sorted by row: any row range is one slice
        index = torch.int32 if max(D, d) < 2**31 else torch.int64
        self.register_buffer("rows", rows[order].to(index), persistent=False)
        self.register_buffer("cols", cols[order].to(index), persistent=False)
        self.register_buffer("vals", vals[order], persistent=False)
        self._spans: dict[tuple[int, int], slice] = {}

    def _span(self, lo: int, hi: int) -> slice:
        """The entries of rows [lo, hi), found by binary search in the sorted rows once per range
        (the search reads back to the host: a GPU step never waits after the first)."""
        if lo == 0 and hi == self.D:
            return slice(None)
        if (lo, hi) not in self._spans:
            bounds = torch.tensor([lo, hi], dtype=self.rows.dtype, device=self.rows.device)
            self._spans[lo, hi] = slice(*torch.searchsorted(self.rows, bounds).tolist())
        return self._spans[lo, hi]

    def matvec(self, d, lo=0, hi=None, add=None):
        hi = self.D if hi is None else hi
        k = self._span(lo, hi)
        out = torch.zeros(hi - lo, dtype=d.dtype, device=d.device) if add is None else add.clone()
        rows = self.rows[k] if lo == 0 else self.rows[k] - lo
        return out.index_add_(0, rows, d.index_select(0, self.cols[k]).mul_(self.vals[k]))

    def rmatvec(self, g, lo=0):
        k = self._span(lo, lo + g.numel())
        rows = self.rows[k] if lo == 0 else self.rows[k] - lo
        out = torch.zeros(self.d, dtype=g.dtype, device=g.device)
        return out.index_add_(0, self.cols[k], g.index_select(0, rows).mul_(self.vals[k]))

    def flops(self) -> int:
        return 4 * self.nnz

    @property
    def nnz(self) -> int:
        return self.vals.numel()

    def to_dense(self) -> torch.Tensor:
        """P as a dense [D, d] float64 matrix, from the stored list (tests, small D)."""
        P = torch.zeros(self.D, self.d, dtype=torch.float64)
        P.index_put_((self.rows.long(), self.cols.long()), self.vals.double(), accumulate=True)
        return P
