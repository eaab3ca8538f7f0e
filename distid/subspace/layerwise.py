"""θ = θ₀ + P·d formed one module at a time, for large D (SubspaceModel(layerwise=True)).

A forward pre-hook on every module that owns parameters gives it θ[lo:hi] = θ₀[lo:hi] + P[lo:hi]·d
(its rows only, fused in one pass) just before it runs, and a forward hook points it back at θ₀
after. Autograd would keep each slice alive until the backward (a matmul saves its weight), so a
saved-tensor hook stores the slice as its row range instead and recomputes it when the backward
needs it. ∂L/∂d = Σ_modules P[lo:hi]ᵀ·∂L/∂θ[lo:hi], one module's gradient at a time.

Peak memory: θ₀ + the projection's state + one module's slice (and its gradient) + activations,
instead of θ₀ + a whole second θ (and a whole ∂L/∂θ). The price: each slice of P·d is computed
twice per step (once more in the backward, however many tensors of it autograd saved). Every module
must use its parameters inside its own forward: a parent reading a child's weight directly would
see θ₀ — the saved-tensor hook refuses that when it sees θ₀ saved; distid's models pass
(test_layerwise). d must not change between a forward and its backward (checked).

glibc serves blocks up to 32 MiB from its heap once such a block has been freed (a dynamic mmap
threshold), and the heap keeps what it frees: slices and gradients of different sizes then pile up
(measured at D = 10⁸: 1.52× θ₀ at peak against 1.38× with the threshold fixed). Layerwise mode therefore fixes
the threshold at 1 MiB for the whole process (mallopt; it stays set), so every large block goes back
to the system when freed — at the price of fresh page faults for each one.
"""

from __future__ import annotations

import ctypes
from collections import defaultdict

import torch
from torch import nn


M_MMAP_THRESHOLD = -3


def return_large_blocks_to_the_system(threshold: int = 1 << 20) -> bool:
    """glibc: allocate blocks ≥ threshold with mmap, returned on free (no-op elsewhere). True if set."""
    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


class _Slice(torch.autograd.Function):
    """θ₀[lo:hi] + P[lo:hi]·d forward; P[lo:hi]ᵀ·g backward, after which the slice's recomputation is
    dropped (autograd runs a tensor's consumers' backward before its producer's)."""

    @staticmethod
    def forward(ctx, d: torch.Tensor, owner: "Layerwise", lo: int, hi: int) -> torch.Tensor:
        ctx.owner, ctx.lo, ctx.hi = owner, lo, hi
        return owner.sm.projection.matvec(d, lo, hi, add=owner.sm.theta0[lo:hi])

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        ctx.owner.slice_done(ctx.lo, ctx.hi)
        return ctx.owner.sm.projection.rmatvec(g.contiguous(), ctx.lo), None, None, None


class Layerwise:
    """Hooks on `sm.module` that form θ slice by slice while `forward` runs; `sm` is a SubspaceModel."""

    def __init__(self, sm: nn.Module):
        self.sm, self.active, self.live = sm, False, {}
        self.recomputed: dict = {}  # (lo, hi, d's version) → the slice, from its first unpack to its backward
        owned = defaultdict(list)  # module name → [(buffer name, offset, shape)]
        for name, (offset, shape) in sm.frozen_slices().items():
            owner, _, leaf = name.rpartition(".")
            owned[owner].append((leaf, offset, shape))
        for owner, items in owned.items():
            lo = min(o for _, o, _ in items)
            hi = max(o + s.numel() for _, o, s in items)
            module = sm.module.get_submodule(owner)
            stack: list = []  # one entry per call in progress (a module may run inside itself)
            module.register_forward_pre_hook(self._enter(lo, hi, items, stack), prepend=True)
            module.register_forward_hook(self._leave(items, stack), always_call=True)
        return_large_blocks_to_the_system()

    def _enter(self, lo: int, hi: int, items: list, stack: list):
        def hook(module, args):
            if not self.active:
                return
            sm = self.sm
            flat = _Slice.apply(sm.d, self, lo, hi)  # θ₀[lo:hi] + P[lo:hi]·d, differentiable in d
            key = flat.untyped_storage().data_ptr()
            self.live[key] = (lo, hi, flat.storage_offset(), sm.d._version)
            stack.append((key, {leaf: module._buffers[leaf] for leaf, _, _ in items}))
            for leaf, offset, shape in items:
                module._buffers[leaf] = flat[offset - lo:offset - lo + shape.numel()].view(shape)
        return hook

    def _leave(self, items: list, stack: list):
        def hook(module, args, output):
            if not self.active or not stack:
                return
            key, before = stack.pop()
            self.live.pop(key, None)  # this call's slice is freed now: its address may be reused
            module._buffers.update(before)
        return hook

    def _pack(self, t: torch.Tensor):
        if t.layout is not torch.strided or t.is_nested:  # no storage of its own: never a slice of θ
            return t
        key = t.untyped_storage().data_ptr()
        if key in self.live:
            lo, hi, base, version = self.live[key]
            return ("θ slice", lo, hi, version, t.size(), t.stride(), t.storage_offset() - base)
        if key == self.theta0_key:
            raise RuntimeError("layerwise θ: an operation saved θ₀ itself — some module uses parameters outside "
                               "its own forward (a parent reading a child's weight); use subspace.layerwise = false")
        return t

    def _unpack(self, x):
        if not (isinstance(x, tuple) and x and x[0] == "θ slice"):
            return x
        _, lo, hi, version, size, stride, offset = x
        sm = self.sm
        if sm.d._version != version:
            raise RuntimeError("layerwise θ: d changed in place between the forward and the backward")
        flat = self.recomputed.get((lo, hi, version))  # one recomputation however many tensors it saved
        if flat is None:
            with torch.no_grad():
                flat = sm.projection.matvec(sm.d.detach(), lo, hi, add=sm.theta0[lo:hi])
            self.recomputed[lo, hi, version] = flat
        return flat.as_strided(size, stride, offset)

    def slice_done(self, lo: int, hi: int) -> None:
        """The slice's own backward ran: every tensor saved from it has been used; drop the recomputation."""
        self.recomputed.pop((lo, hi, self.sm.d._version), None)

    def forward(self, *args, **kwargs):
        """The module's forward with θ formed slice by slice."""
        self.active, self.theta0_key = True, self.sm.theta0.untyped_storage().data_ptr()
        self.recomputed.clear()  # what a backward that did not finish left
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                return self.sm.module(*args, **kwargs)
        finally:
            self.active, self.live = False, {}
