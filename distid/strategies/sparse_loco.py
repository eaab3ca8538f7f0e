"""`dist.strategy = "sparse_loco"`: SparseLoCo (Sarfi et al. 2025), DiLoCo whose pseudo-gradient is
sent as a quantised top-k. Every rank takes H = `sparse_loco.every` local steps alone (its own Adam),
then the replicas synchronise once (after every H-th step, and after the last).

All trainable numbers are one flat vector of T entries, cut into C = ⌈T / chunk⌉ chunks (the last one
padded with zeros). At a synchronisation, on each rank, with the error feedback e (T numbers, the
rank's own) in place of DiLoCo's outer momentum:
    Δ = θ_start − θ                     the pseudo-gradient of the H inner steps
    e ← β·e + Δ                         β = error_decay
    S = top-k of |e| in every chunk     k = round(density · chunk) entries per chunk
    q = Q(e[S])                         values to `value_bits` bits (32: float32 as they are)
    e ← e − Q⁻¹(q) on S                 what was sent leaves e; the rest waits for a later round
every rank's (S, q) is all-gathered, decoded and averaged, Δ̄ = (1/N)·Σᵢ Q⁻¹(qᵢ) on Sᵢ (zero elsewhere),
and θ ← θ_start − outer_lr·Δ̄;  θ_start ← θ. Every rank decodes the same N messages in the same
order, so the replicas hold the same numbers again (the run's replica check confirms it).

Q is the reference's statistical quantiser with B = 2^value_bits levels: the values' mean m and
standard deviation σ (unbiased) give the step s = 6σ / B and the level ℓ = clamp(round((v − m)/s + B/2),
0, B − 1); the message carries a table of B float32, each level's mean of v − m, and m: Q⁻¹(ℓ) =
table[ℓ] + m. The reference keeps one table per parameter tensor and tiles matrices into 2-D chunks;
here the trainable numbers are one flat vector, so there is one table per message and a chunk is
`chunk` consecutive numbers. No DCT (that is DeMo's transform; SparseLoCo drops it).

One message per rank, one flat uint8 buffer, handed to one all-gather (its bytes grow with N):
    indices  C·k · (1 B if chunk ≤ 256, 2 B if ≤ 32768, else 4 B)
    values   ⌈C·k·value_bits / 8⌉ B, packed 8/value_bits to a byte (value_bits = 32: C·k·4 B)
    table    (1 + 2^value_bits)·4 B: m and the levels' means (none at value_bits = 32)
Per training step: the message's bytes × synchronisations ÷ steps, over the steps a process ran.
State per rank: e (4·T B), θ_start (4·T B), the all-gather's receive buffer (N × message); the inner
optimizer's state is each rank's own, as in DiLoCo.
"""

from __future__ import annotations

import math

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from distid.parallel.consistency import check_replicas
from distid.runtime import all_gather_tensor
from distid.strategies.base import Strategy, index_dtype, tensor_bytes
from distid.strategies.local_sgd import LocalSGD

SIGMAS = 6.0  # the quantiser's range in standard deviations (the reference's default)


def message_bytes(T: int, chunk: int, k: int, bits: int) -> int:
    """Bytes of one rank's message for T trainable numbers (see the module docstring)."""
    sent = math.ceil(T / chunk) * k
    idx = sent * torch.tensor([], dtype=index_dtype(chunk)).element_size()
    return idx + sent * 4 if bits == 32 else idx + math.ceil(sent * bits / 8) + 4 * (1 + 2**bits)


def top_k(e: torch.Tensor, chunk: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """e [T] → (indices [C, k] within each chunk, ascending; values [C, k]): the k largest |e| per chunk."""
    chunks = torch.nn.functional.pad(e, (0, -e.numel() % chunk)).view(-1, chunk)
    idx = torch.topk(chunks.abs(), k, dim=1, sorted=False).indices.sort(dim=1).values
    return idx, chunks.gather(1, idx)


def quantise(v: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v [n] float32 → (levels [n] uint8 in 0 … 2^bits − 1, table [1 + 2^bits]: m, then each level's
    mean of v − m). Q⁻¹(ℓ) = table[1 + ℓ] + table[0]."""
    B = 2**bits
    m = v.mean()
    c = v - m
    s = SIGMAS * (c.var() if c.numel() > 1 else c.new_zeros(())).sqrt() / B
    if s == 0 or not torch.isfinite(s):
        s = c.new_ones(())
    levels = (c / s + B // 2).round().clamp(0, B - 1).to(torch.uint8)
    counts = torch.bincount(levels.long(), minlength=B)
    sums = torch.bincount(levels.long(), weights=c, minlength=B)
    means = torch.where(counts > 0, sums / counts.clamp(min=1), 0.0).float()
    return levels, torch.cat([m.view(1), means])


def dequantise(levels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """levels [n] uint8, table [1 + 2^bits] → values [n] float32."""
    return table[1:][levels.long()] + table[0]


def pack(levels: torch.Tensor, bits: int) -> torch.Tensor:
    """levels [n] uint8 < 2^bits → [⌈n·bits/8⌉] uint8, the first level in the lowest bits."""
    per = 8 // bits
    grouped = torch.nn.functional.pad(levels, (0, -levels.numel() % per)).view(-1, per).long()
    return (grouped << (bits * torch.arange(per, device=levels.device))).sum(1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """pack's inverse: [⌈n·bits/8⌉] uint8 → levels [n] uint8."""
    shifts = bits * torch.arange(8 // bits, device=packed.device)
    levels = (packed.long()[:, None] >> shifts) & (2**bits - 1)
    return levels.flatten()[:n].to(torch.uint8)


class SparseLoCo(LocalSGD):
    """H local steps, then one all-gather of every rank's quantised top-k of its error feedback.
    The schedule (after every H-th step and the last, in the ledger's "sync" phase) and the bytes per
    step are local_sgd's; the synchronisation is this module's."""

    own_state = "error feedback and inner optimizer state"
    rebases = False  # its error feedback belongs to the basis it was accumulated in

    def __init__(self, cfg, n, device):
        Strategy.__init__(self, cfg, n, device)
        s = cfg.sparse_loco
        self.period, self.chunk, self.bits = s.every, s.chunk, s.value_bits
        self.k = max(1, round(s.density * s.chunk))
        self.decay, self.outer_lr, self.density = s.error_decay, s.outer_lr, s.density

    @property
    def label(self) -> str:
        values = "float32" if self.bits == 32 else f"{self.bits}-bit"
        return f"SparseLoCo (H = {self.period}, top {self.k} of {self.chunk}, {values})"

    def wrap(self, model):
        """The model itself; θ_start, e and the receive buffer. The replicas must have been built equal."""
        self.params = [p for p in model.parameters() if p.requires_grad]
        check_replicas(model, 0)  # there is no start-up broadcast
        self.start = [p.detach().clone() for p in self.params]  # θ_start: what every replica held at the last sync
        self.T = sum(p.numel() for p in self.params)
        self.error = torch.zeros(self.T, device=self.device)  # e [T], this rank's own
        self.message = message_bytes(self.T, self.chunk, self.k, self.bits)
        self.received = None if self.n == 1 else \
            torch.empty(self.n * self.message, dtype=torch.uint8, device=self.device)  # N messages
        self.per_sync = self.message if self.n > 1 else 0
        return model  # payload: in attach, which knows the run's steps

    def _per_step(self) -> dict:
        each = super()._per_step()["total"]
        return {"all_gather": each, "total": each} if self.per_sync else {"total": 0}

    def encode(self, delta: torch.Tensor) -> torch.Tensor:
        """Fold Δ [T] into e, take out what is sent; returns the message [message] uint8."""
        e = self.error.mul_(self.decay).add_(delta)
        idx, values = top_k(e, self.chunk, self.k)
        if self.bits == 32:
            sent, body = values, [values.view(torch.uint8).flatten()]
        else:
            levels, table = quantise(values.flatten(), self.bits)
            sent = dequantise(levels, table).view_as(values)
            body = [pack(levels, self.bits), table.view(torch.uint8)]
        first = self.chunk * torch.arange(idx.shape[0], device=idx.device)[:, None]
        flat = idx + first  # [C, k]: positions in the padded T
        keep = flat < self.T  # a pad position chosen in the last chunk is dropped
        e.index_add_(0, flat[keep], -sent[keep])
        return torch.cat([idx.to(index_dtype(self.chunk)).view(torch.uint8).flatten(), *body])

    def decode(self, message: torch.Tensor) -> torch.Tensor:
        """One message [message] uint8 → its sparse pseudo-gradient, dense [T]."""
        C = -(-self.T // self.chunk)
        n_idx = C * self.k * torch.tensor([], dtype=index_dtype(self.chunk)).element_size()
        as_ = lambda b, dtype: b.clone().view(dtype)  # a copy: a piece may start at any byte
        idx = as_(message[:n_idx], index_dtype(self.chunk)).long().view(C, self.k)
        rest = message[n_idx:]
        if self.bits == 32:
            values = as_(rest, torch.float32)
        else:
            cut = rest.numel() - 4 * (1 + 2**self.bits)
            packed, table = rest[:cut], as_(rest[cut:], torch.float32)
            values = dequantise(unpack(packed, self.bits, C * self.k), table)
        dense = torch.zeros(C, self.chunk, device=message.device).scatter_(1, idx, values.view(C, self.k))
        return dense.flatten()[:self.T]

    @torch.no_grad()
    def sync(self) -> None:
        """Encode, one all-gather, decode and average, the outer step (see the module docstring)."""
        delta = _flatten_dense_tensors([s - p for s, p in zip(self.start, self.params)])
        message = self.encode(delta)
        if self.n > 1:
            all_gather_tensor(self.received, message)
            messages = self.received.view(self.n, self.message)
        else:
            messages = message.view(1, -1)
        mean = torch.zeros(self.T, device=message.device)
        for m in messages:  # the same order on every rank: the same sums
            mean.add_(self.decode(m))
        mean.div_(self.n)
        theta = _flatten_dense_tensors(self.start).sub_(mean, alpha=self.outer_lr)  # θ_start − outer_lr·Δ̄
        for p, s, new in zip(self.params, self.start, _unflatten_dense_tensors(theta, self.start)):
            p.copy_(new)
            s.copy_(new)

    def state_bytes(self) -> dict[str, int]:
        return {"error feedback": tensor_bytes(self.error), "θ_start": tensor_bytes(self.start),
                "all-gather receive buffer": tensor_bytes(self.received)}

    def state_dict(self) -> dict:
        """This rank's error feedback; θ_start is the model itself right after a synchronisation, the
        only place a checkpoint is written."""
        return {"error": self.error.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.error.copy_(state["error"])

    def shared_state_dict(self) -> dict:
        return {}

    def load_shared_state_dict(self, state: dict) -> None:
        """Nothing is shared: take θ_start from the (just restored) parameters."""
        with torch.no_grad():
            for p, s in zip(self.params, self.start):
                s.copy_(p)


def overrides(every: int, density: float, outer_lr: float) -> tuple[str, ...]:
    """The `--set` lines that turn SparseLoCo on, for experiments that build runs."""
    return ("dist.strategy=sparse_loco", f"sparse_loco.every={every}", f"sparse_loco.density={density:g}",
            f"sparse_loco.outer_lr={outer_lr:g}")
