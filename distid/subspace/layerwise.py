"""θ = θ₀ + P·d formed one module at a time, for large D (SubspaceModel(layerwise=True)).

A forward pre-hook on every module that owns parameters gives it θ[lo:hi] = θ₀[lo:hi] + P[lo:hi]·d
(its rows only, fused in one pass) just before it runs, and a forward hook points it back at θ₀
after. Autograd would keep each slice alive until the backward (a matmul saves its weight), so a
saved-tensor hook stores the slice as its row range instead and recomputes it when the backward
needs it. ∂L/∂d = Σ_modules P[lo:hi]ᵀ·∂L/∂θ[lo:hi], one module's gradient at a time.

Peak memory: θ₀ + the projection's state + one module's slice (and its gradient) + activations,
instead of θ₀ + a whole second θ (and a whole ∂L/∂θ). The price: each slice of P·d is computed
twice per step. Every module must use its parameters inside its own forward (a parent reading a
child's weight directly would see θ₀): distid's models do; test_layerwise checks them.

glibc serves blocks up to 32 MiB from its heap once such a block has been freed (a dynamic mmap
threshold), and the heap keeps what it frees: slices and gradients of different sizes then pile up
(measured at D = 10⁸: 1.52× θ₀ at peak against 1.38× with the fix). Layerwise mode therefore fixes
the threshold at 1 MiB for the process (mallopt), so every large block goes back to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections import defaultdict

import torch
from torch import nn


M_MMAP_THRESHOLD = -3


def return_large_blocks_to_the_system(threshold: int = 1 << 20) -> bool:
    """glibc: allocate blocks ≥ threshold with mmap, returned on free (no-op elsewhere). True if set."""
    name = ctypes.util.find_library("c")
    try:
        return bool(ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, threshold)) if name else False
    except (OSError, AttributeError):
        return False


class Layerwise:
    """Hooks on `sm.module` that form θ slice by slice while `forward` runs; `sm` is a SubspaceModel."""

    def __init__(self, sm: nn.Module):
        self.sm, self.active, self.live = sm, False, {}
        return_large_blocks_to_the_system()
        owned = defaultdict(list)  # module name → [(buffer name, offset, shape)]
        for name, (offset, shape) in sm.frozen_slices().items():
            owner, _, leaf = name.rpartition(".")
            owned[owner].append((leaf, offset, shape))
        for owner, items in owned.items():
            lo = min(o for _, o, _ in items)
            hi = max(o + s.numel() for _, o, s in items)
            module = sm.module.get_submodule(owner)
            module.register_forward_pre_hook(self._enter(lo, hi, items))
            module.register_forward_hook(self._leave(items))

    def _enter(self, lo: int, hi: int, items: list):
        def hook(module, args):
            if not self.active:
                return
            sm = self.sm
            flat = sm.projection(sm.d, lo, hi, add=sm.theta0[lo:hi])  # [hi − lo], differentiable in d
            self.live[flat.untyped_storage().data_ptr()] = (lo, hi, flat.storage_offset())
            for leaf, offset, shape in items:
                module._buffers[leaf] = flat[offset - lo:offset - lo + shape.numel()].view(shape)
        return hook

    def _leave(self, items: list):
        def hook(module, args, output):
            if not self.active:
                return
            for leaf, offset, shape in items:
                slice_ = module._buffers[leaf]
                self.live.pop(slice_.untyped_storage().data_ptr(), None)  # freed now: its address may be reused
                module._buffers[leaf] = self.sm.theta0_view(offset, shape)
        return hook

    def _pack(self, t: torch.Tensor):
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else None
        if key in self.live:
            lo, hi, base = self.live[key]
            return ("θ slice", lo, hi, t.size(), t.stride(), t.storage_offset() - base)
        return t

    def _unpack(self, x):
        if isinstance(x, tuple) and x and x[0] == "θ slice":
            _, lo, hi, size, stride, offset = x
            sm = self.sm
            with torch.no_grad():
                flat = sm.projection.matvec(sm.d.detach(), lo, hi, add=sm.theta0[lo:hi])
            return flat.as_strided(size, stride, offset)
        return x

    def forward(self, *args, **kwargs):
        """The module's forward with θ formed slice by slice."""
        self.active = True
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                return self.sm.module(*args, **kwargs)
        finally:
            self.active, self.live = False, {}
