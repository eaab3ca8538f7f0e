"""`dist.strategy = "demo"`: DeMo, decoupled momentum (Peng, Quesnelle & Kingma 2024). No gradient
all-reduce: each rank keeps its own momentum and shares only its fastest-moving part.

Every step, on each rank and for each trainable tensor (g: this rank's gradient, β = demo.decay):
    m ← β·m + g                         momentum, this rank's own
    c = DCT(m)                          per chunk: a vector in chunks of w entries, a matrix in h × w
                                        blocks (h, w: the largest divisors of its sides ≤ demo.chunk)
    q = the k largest |c| per chunk     k = demo.topk (at most the chunk's size)
    m ← m − IDCT(q)                     what is sent leaves the momentum; the rest keeps accumulating
then every rank's (indices, values) are all-gathered; each component is the mean over the ranks that
sent it (0 where none did), and every rank steps on the same decoded update:
    θ ← θ − lr·sign(IDCT(mean q))       sign descent at train.lr (plain SGD on the sign as gradient)
The replicas apply the same update to the same θ, so they hold the same parameters after every step.

Bytes handed in per step (one all-gather of one byte buffer, values and indices packed together):
    Σ over chunks of k·(4 + b)          4: a float32 value; b: the smallest integer type that holds
                                        every index below the largest chunk's size (uint8, int16, int32)
e.g. the MNIST MLP at chunk 64, k = 32: 2,698 components·(4 + 2) = 16,188 B (DDP: 796,840 B); on the
wire (N − 1)·16,188 B: an all-gather grows with N.

Where this follows the reference (bloc97/DeMo, demo.py) and where it simplifies:
  - chunking (its `_get_smaller_split`), the orthonormal DCT-II per chunk and block, top-k by
    magnitude, the residual m − IDCT(q), and the decode (a mean per component over the ranks that
    sent it) as there;
  - the momentum adds g, not lr·g: with a constant lr the chosen components and the sign are the same;
  - no weight decay; tensors of more than two dimensions are blocked as [shape[0], the rest];
  - the DCT basis is written from its cosine formula (float64, then float32), not through an FFT;
  - one collective per step for all tensors, not two all-gathers per tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distid.config import ConfigError
from distid.parallel.consistency import check_replicas
from distid.runtime import all_gather_tensor
from distid.strategies.base import Strategy, index_dtype, tensor_bytes


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of n that is ≤ at_most (n itself when n ≤ at_most): 784, 64 → 56."""
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II [n, n]: row f is the f-th cosine, C[f, j] = s_f·cos(π(2j + 1)f / 2n),
    s_0 = √(1/n), s_f = √(2/n); C·x is the DCT of x [n] and Cᵀ·X its inverse."""
    j = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (2 * j + 1) * j[:, None] / (2 * n)) * math.sqrt(2 / n)
    c[0] /= math.sqrt(2)
    return c.float()


@dataclass
class Chunks:
    """How one tensor is cut: viewed as [rows, cols] (a vector as [1, n]), in blocks [h, w]; k sent per block."""

    rows: int
    cols: int
    h: int
    w: int
    k: int

    @classmethod
    def of(cls, p: torch.Tensor, chunk: int, topk: int) -> "Chunks":
        rows = p.shape[0] if p.dim() >= 2 else 1
        cols = p.numel() // rows
        h, w = largest_divisor(rows, chunk), largest_divisor(cols, chunk)
        return cls(rows, cols, h, w, min(topk, h * w))

    @property
    def blocks(self) -> int:
        return (self.rows // self.h) * (self.cols // self.w)

    def encode(self, x: torch.Tensor, bases: dict) -> torch.Tensor:
        """x [rows, cols] → its blocks' DCT coefficients [blocks, h·w] (C_h · block · C_wᵀ, flattened)."""
        blocks = x.reshape(self.rows // self.h, self.h, self.cols // self.w, self.w)
        c = torch.einsum("yixj,ai,bj->yxab", blocks, bases[self.h], bases[self.w])
        return c.reshape(self.blocks, self.h * self.w)

    def decode(self, c: torch.Tensor, bases: dict) -> torch.Tensor:
        """Coefficients [blocks, h·w] → x [rows, cols] (C_hᵀ · coefficients · C_w per block)."""
        c = c.reshape(self.rows // self.h, self.cols // self.w, self.h, self.w)
        return torch.einsum("yxab,ai,bj->yixj", c, bases[self.h], bases[self.w]).reshape(self.rows, self.cols)


def mean_by_component(values: torch.Tensor, indices: torch.Tensor, c: Chunks) -> torch.Tensor:
    """Every rank's components of one tensor ([N, blocks·k] each) → coefficients [blocks, h·w]: each
    the mean over the ranks that sent it, 0 where none did. Added rank by rank, in rank order (a
    rank's indices within a block are distinct), so every rank and device sums in the same order."""
    total = torch.zeros(c.blocks, c.h * c.w, device=values.device)
    count = torch.zeros_like(total)
    for v, i in zip(values, indices):
        i = i.view(c.blocks, c.k)
        total.scatter_add_(-1, i, v.view(c.blocks, c.k))
        count.scatter_add_(-1, i, torch.ones_like(total[:, : c.k]))
    return total / count.clamp(min=1)


class DeMo(Strategy):
    """Each rank's momentum, its top-k DCT components all-gathered, sign descent on their mean."""

    own_state = "DeMo's momentum"

    def __init__(self, cfg, n, device):
        super().__init__(cfg, n, device)
        if cfg.train.optimizer != "sgd":
            raise ConfigError(f"train.optimizer = {cfg.train.optimizer!r}: DeMo is its own optimizer (sign descent "
                              f"at train.lr, with its own momentum); set train.optimizer = 'sgd'")
        self.topk, self.chunk, self.decay = cfg.demo.topk, cfg.demo.chunk, cfg.demo.decay

    @property
    def label(self) -> str:
        return f"DeMo (k = {self.topk}, chunk = {self.chunk})"

    def wrap(self, model):
        """The model itself; the chunking, DCT bases, momentum and receive buffer of its trainable tensors."""
        self.params = [p for p in model.parameters() if p.requires_grad]
        check_replicas(model, 0)  # there is no start-up broadcast
        self.chunks = [Chunks.of(p, self.chunk, self.topk) for p in self.params]
        sides = {s for c in self.chunks for s in (c.h, c.w)}
        device = self.params[0].device
        self.bases = {s: dct_matrix(s).to(device) for s in sides}
        self.momentum = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
        self.index_dtype = index_dtype(max(c.h * c.w for c in self.chunks))
        self.sent = sum(c.blocks * c.k for c in self.chunks)  # components per step, K
        itemsize = torch.tensor([], dtype=self.index_dtype).element_size()
        self.per_step = self.sent * (4 + itemsize)  # bytes handed in: K·(4 + index bytes)
        multi = self.n > 1
        self.received = torch.empty(self.n * self.per_step, dtype=torch.uint8, device=device) if multi else None
        self.payload = {"all_gather": self.per_step, "total": self.per_step} if multi else {"total": 0}
        return model

    def make_optimizer(self, params):
        """θ ← θ − lr·grad, where the pre-hook has set grad to the sign of the decoded update."""
        return torch.optim.SGD(params, lr=self.cfg.train.lr, momentum=0)

    def attach(self, opt, ledger, start: int, steps: int) -> None:
        """Before each optimizer step: the exchange (booked in the loop's "step" phase)."""
        opt.register_step_pre_hook(lambda *_: self.exchange())

    @torch.no_grad()
    def compress(self) -> tuple[torch.Tensor, torch.Tensor]:
        """m ← β·m + g; per chunk the k largest DCT components, taken out of m. Returns this rank's
        (values [K] float32, indices [K] long), tensor by tensor, chunk by chunk."""
        values, indices = [], []
        for p, m, c in zip(self.params, self.momentum, self.chunks):
            if p.grad is not None:
                m.mul_(self.decay).add_(p.grad)
            else:
                m.mul_(self.decay)
            coeffs = c.encode(m.view(c.rows, c.cols), self.bases)  # [blocks, h·w]
            idx = coeffs.abs().topk(c.k, dim=-1, sorted=False).indices  # [blocks, k]
            val = coeffs.gather(-1, idx)
            m.sub_(c.decode(torch.zeros_like(coeffs).scatter_(-1, idx, val), self.bases).view_as(m))
            values.append(val.reshape(-1))
            indices.append(idx.reshape(-1))
        return torch.cat(values).float(), torch.cat(indices)

    @torch.no_grad()
    def gather(self, values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's (values, indices) [K] → ([N, K] float32, [N, K] long), by one all-gather of
        this rank's K·(4 + index bytes) packed into one byte buffer."""
        mine = torch.cat([values.view(torch.uint8), indices.to(self.index_dtype).view(torch.uint8)])
        if self.n > 1:
            all_gather_tensor(self.received, mine)
            everyone = self.received.view(self.n, -1)
        else:
            everyone = mine[None]
        split = 4 * self.sent
        values = everyone[:, :split].reshape(-1).view(torch.float32).view(self.n, -1)
        indices = everyone[:, split:].reshape(-1).view(self.index_dtype).view(self.n, -1).long()
        return values, indices

    @torch.no_grad()
    def exchange(self) -> None:
        """Compress, all-gather, decode; each p.grad ← sign(IDCT(mean of the ranks' components))."""
        values, indices = self.gather(*self.compress())  # [N, K] each
        sizes = [c.blocks * c.k for c in self.chunks]
        for p, c, v, i in zip(self.params, self.chunks, values.split(sizes, 1), indices.split(sizes, 1)):
            p.grad = c.decode(mean_by_component(v, i, c), self.bases).sign().view_as(p).to(p.dtype)

    def state_bytes(self) -> dict[str, int]:
        out = {"momentum": tensor_bytes(self.momentum)}
        if self.received is not None:
            out["all-gather receive buffers"] = tensor_bytes(self.received)
        return out

    def state_dict(self) -> dict:
        """This rank's momentum (its residual: what it has not sent yet)."""
        return {"momentum": [m.detach().cpu().clone() for m in self.momentum]}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for m, saved in zip(self.momentum, state["momentum"]):
                m.copy_(saved)
