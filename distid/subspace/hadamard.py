"""Walsh–Hadamard transform y = H_L·x for L = 2^k, unnormalised (entries ±1, H·H = L·I).

H_L = H_{n_1} ⊗ … ⊗ H_{n_m} with n_i ≤ 64: view x as [n_1, …, n_m] and multiply each axis by its
small dense H_{n_i} — m batched matmuls, O(L·Σn_i) work, no Python loop over elements.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def _sylvester(n: int, dtype: torch.dtype, device_str: str) -> torch.Tensor:
    """Dense H_n (n a power of two) by Sylvester's construction, built on the device itself (a copy
    from host memory would make the first projection on a GPU wait for the host)."""
    h = torch.ones(1, 1, dtype=dtype, device=device_str)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def factor_sizes(length: int, max_bits: int = 6) -> list[int]:
    """Split L = 2^k into factors 2^{b_i}, b_i ≤ max_bits, as even as possible."""
    k = length.bit_length() - 1
    if length <= 0 or 1 << k != length:
        raise ValueError(f"Walsh–Hadamard length must be a power of two, got {length}")
    m = max(1, -(-k // max_bits))
    bits = [k // m + (1 if i < k % m else 0) for i in range(m)]
    return [1 << b for b in bits if b > 0] or [1]


def hadamard(x: torch.Tensor, max_bits: int = 6) -> torch.Tensor:
    """H_L·x along the last axis of x ([..., L]); differentiable (the adjoint of H is H)."""
    length = x.shape[-1]
    sizes = factor_sizes(length, max_bits)
    lead = x.shape[:-1]
    y = x.reshape(-1, length)
    batch = y.shape[0]
    pre = batch
    post = length
    for n in sizes:
        post //= n
        h = _sylvester(n, x.dtype, str(x.device))
        if post == 1:
            y = y.reshape(-1, n) @ h
        else:
            y = torch.matmul(h, y.reshape(pre, n, post))
        pre *= n
    return y.reshape(*lead, length)
