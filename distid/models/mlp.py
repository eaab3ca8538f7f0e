"""The fully connected network of Li et al. (2018): 784-200-200-10 with ReLU, D = 199,210.

x: [B, 1, 28, 28] or [B, 784] → logits [B, 10].
"""

from __future__ import annotations

import torch
from torch import nn

from distid import runtime


class MLP(nn.Sequential):
    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = (200, 200), classes: int = 10):
        layers: list[nn.Module] = [nn.Flatten()]
        widths = (in_features, *hidden)
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], classes))
        super().__init__(*layers)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """D: the number of scalars in the model's parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def seeded(builder, seed: int) -> nn.Module:
    """Build a model with torch's global RNG seeded by (seed, "model init"): every rank gets identical
    weights, from a stream no other purpose (P, LoRA's A, the data order) draws from."""
    state = torch.random.get_rng_state()
    torch.manual_seed(runtime.rng_seed(seed, "model init"))
    try:
        return builder()
    finally:
        torch.random.set_rng_state(state)
