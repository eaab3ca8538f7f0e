"""A small vision transformer for 28×28 images: 7×7 patches → 16 tokens + a class token, width 96,
4 pre-norm blocks (4 heads, MLP 96→192→96, GELU), D = 306,826.  x: [B, 1, 28, 28] → logits [B, 10].

Block: h = h + o(attn(q(n₁h), k(n₁h), v(n₁h))); h = h + fc2(gelu(fc1(n₂h))). q, k, v and o are
separate nn.Linears, so LoRA can target them by name (`--set lora.targets=q,v`, PEFT's choice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention: [B, T, w] → [B, T, w], heads of width w/heads."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, w = x.shape
        q, k, v = (f(x).view(B, T, self.heads, w // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q·kᵀ/√(w/heads))·v, [B, heads, T, w/heads]
        return self.o(y.transpose(1, 2).reshape(B, T, w))


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, mlp), nn.Linear(mlp, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.fc2(F.gelu(self.fc1(self.norm2(h))))


class ViT(nn.Module):
    """Patch embedding (a Linear on each flattened patch) + class token + learned positions,
    `depth` blocks, final LayerNorm, a Linear head on the class token."""

    def __init__(self, image: int = 28, patch: int = 7, channels: int = 1, width: int = 96, depth: int = 4,
                 heads: int = 4, mlp: int = 192, classes: int = 10):
        super().__init__()
        if image % patch or width % heads:
            raise ValueError(f"image {image} must be a multiple of patch {patch}, width {width} of heads {heads}")
        self.patch, tokens = patch, (image // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, classes)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] → [B, (H/p)·(W/p), C·p·p], patches in row-major order."""
        p = self.patch
        return F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.patches(x))
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, 0]))
