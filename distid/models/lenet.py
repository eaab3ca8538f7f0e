"""LeNet-5 as Li et al. (2018) use it on 28×28 MNIST: conv 6@5×5 → pool → conv 16@5×5 → pool →
120 → 84 → 10, ReLU, no padding; D = 44,426.  x: [B, 1, 28, 28] → logits [B, 10]."""

from __future__ import annotations

from torch import nn


class LeNet5(nn.Sequential):
    def __init__(self, channels: int = 1, classes: int = 10):
        super().__init__(
            nn.Conv2d(channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),   # 28 → 24 → 12
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),         # 12 → 8 → 4
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, classes),
        )
