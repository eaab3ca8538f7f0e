"""Random-subspace training of any nn.Module (Li et al. 2018): θ = θ₀ + P·d.

The module's D parameters become frozen buffers (views into one flat θ₀ [D]); d ∈ R^d, initialised
to zero, is the only nn.Parameter. forward() builds θ = θ₀ + P·d and runs the unchanged module on
it with torch.func.functional_call. Gradient: ∂L/∂d = Pᵀ·∂L/∂θ.

Re-drawn subspaces (Gressmann et al. 2020): `redraw()` folds θ₀ ← θ₀ + P·d, draws the next P from
the seed (draw e: generator keyed by (seed, "subspace redraw", e)) and sets d ← 0, so training can
leave any one subspace while d keeps its size. Every rank folds the same d into the same θ₀ itself;
θ₀ is then no longer regenerated from the seed alone, but replayed from the d of every fold
(`folded`, d numbers each): a checkpoint keeps those.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.func import functional_call

from distid import runtime
from distid.subspace.dense import DenseProjection
from distid.subspace.fastfood import FastfoodProjection
from distid.subspace.layerwise import Layerwise
from distid.subspace.projection import Projection
from distid.subspace.sharded import ShardedSubspaceModel
from distid.subspace.sparse import SparseProjection

PROJECTIONS = ("dense", "sparse", "fastfood")


def make_projection(kind: str, D: int, d: int, seed: int, **kwargs) -> Projection:
    """A projection by name; kwargs go to its constructor (dense: max_bytes, copies; fastfood: block)."""
    if kind == "dense":
        return DenseProjection(D, d, seed, **kwargs)
    if kind == "sparse":
        return SparseProjection(D, d, seed)
    if kind == "fastfood":
        return FastfoodProjection(D, d, seed, **kwargs)
    raise ValueError(f"unknown projection {kind!r}; choose one of {', '.join(PROJECTIONS)}")


def _freeze_into_buffers(module: nn.Module) -> tuple[list[str], list[torch.Size], torch.Tensor, dict]:
    """Turn every parameter of `module` into a non-persistent buffer viewing one flat θ₀.

    Tied parameters (one tensor under several names) get one slice of θ₀ and stay tied.
    Returns (names, shapes, θ₀, {every buffer name created, aliases included: (offset, shape)}).
    """
    named = list(module.named_parameters())  # one entry per distinct tensor
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
    where, offset = {}, 0
    for _, p in named:
        where[id(p)] = (offset, p.shape)
        offset += p.numel()
    created = {name: where[id(p)] for name, p in module.named_parameters(remove_duplicate=False)}
    for name in created:
        owner_name, _, leaf = name.rpartition(".")
        del module.get_submodule(owner_name)._parameters[leaf]
    _point_into(module, theta0, created)
    return [n for n, _ in named], [p.shape for _, p in named], theta0, created


def _point_into(module: nn.Module, theta0: torch.Tensor, slices: dict) -> None:
    """Make each named buffer a view of θ₀ at its (offset, shape); names sharing a slice share one
    view object, so functional_call still sees them as tied."""
    views: dict[tuple, torch.Tensor] = {}
    for name, (offset, shape) in slices.items():
        key = (offset, tuple(shape))  # a zero-size tensor shares its offset with the next one
        if key not in views:
            views[key] = theta0[offset:offset + shape.numel()].view(shape)
        owner_name, _, leaf = name.rpartition(".")
        module.get_submodule(owner_name).register_buffer(leaf, views[key], persistent=False)


class SubspaceModel(nn.Module):
    """Wrap `module` so that only d (zeros, [d]) is trained; θ₀ and P are regenerated, never sent.

    `module` is modified in place (its parameters become buffers); its forward is untouched.

    said=True (Aghajanyan et al. 2020, "structure-aware intrinsic dimension"): one trainable scale
    per parameter tensor, θᵢ = θ₀ᵢ + λᵢ·(P·d)ᵢ with λ ∈ R^m initialised to 1; the budget stays d,
    so the subspace vector has d − m entries and λ the other m.

    layerwise=True (large D): θ is formed one module at a time (layerwise.py), so memory holds θ₀
    and one module's slice of θ instead of two whole copies; same map, same gradient.
    """

    def __init__(self, module: nn.Module, d: int, projection: str = "fastfood", seed: int = 0, said: bool = False,
                 layerwise: bool = False, **proj_kwargs):
        super().__init__()
        self.names, self.shapes, theta0, self._frozen = _freeze_into_buffers(module)
        self.module = module
        self.register_buffer("theta0", theta0, persistent=False)
        m = len(self.names) if said else 0
        if d - m < 1:
            raise ValueError(f"SAID needs d > {m} (one scale per parameter tensor, the rest for the subspace); "
                             f"got d = {d}")
        self.seed, self.draw, self._proj_kwargs = seed, 0, proj_kwargs
        self.folded: list[torch.Tensor] = []  # d at each re-draw so far (CPU copies), to replay θ₀
        self.projection = make_projection(projection, theta0.numel(), d - m, seed, **proj_kwargs).to(theta0.dtype)
        self.d = nn.Parameter(torch.zeros(d - m, dtype=theta0.dtype))
        self.said = nn.Parameter(torch.ones(m, dtype=theta0.dtype)) if said else None
        self.kind = projection
        if layerwise and said:
            raise ValueError("layerwise θ and SAID cannot be combined (SAID scales P·d per tensor over the whole θ)")
        self.layerwise = Layerwise(self) if layerwise else None

    @property
    def D(self) -> int:
        return self.projection.D

    def theta(self) -> torch.Tensor:
        """θ = θ₀ + P·d (SAID: + λ per tensor, repeated over its entries), flat [D]; differentiable in d (and λ)."""
        if self.said is None:
            return self.projection(self.d, add=self.theta0)  # fused: one pass writes θ
        return self.theta0 + self.offset()

    def offset(self) -> torch.Tensor:
        """P·d, each parameter tensor's slice scaled by its λ under SAID; flat [D]."""
        pd = self.projection(self.d)
        if self.said is None:
            return pd
        sizes = torch.tensor([s.numel() for s in self.shapes], device=pd.device)
        return pd * self.said.repeat_interleave(sizes, output_size=pd.numel())

    def params_dict(self, theta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """θ (default θ₀ + P·d) split into the module's named parameter shapes (views)."""
        theta = self.theta() if theta is None else theta
        sizes = [s.numel() for s in self.shapes]
        return {n: t.view(s) for n, t, s in zip(self.names, theta.split(sizes), self.shapes)}

    def run(self, theta: torch.Tensor, *args, **kwargs):
        """The unchanged module evaluated at the flat parameter vector θ [D]."""
        return functional_call(self.module, self.params_dict(theta), args, kwargs)

    def forward(self, *args, **kwargs):
        if self.layerwise is not None:
            return self.layerwise.forward(*args, **kwargs)
        return self.run(self.theta(), *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        """.to()/.cuda()/.double() convert every buffer on its own, which would turn the module's
        views of θ₀ into copies (twice θ₀'s memory): point them back into the converted θ₀."""
        super()._apply(fn, *args, **kwargs)
        if self.theta0.numel() == self.D:  # ShardedSubspaceModel frees the full θ₀ and the views
            _point_into(self.module, self.theta0, self._frozen)
        return self

    def frozen_slices(self) -> dict[str, tuple[int, torch.Size]]:
        """{buffer name inside `module`: (offset in θ₀, shape)}, aliases of tied parameters included."""
        return dict(self._frozen)

    def theta0_view(self, offset: int, shape: torch.Size) -> torch.Tensor:
        return self.theta0[offset:offset + shape.numel()].view(shape)

    def frozen_names(self) -> list[str]:
        """Qualified names (inside `module`) of the buffers that replaced its parameters."""
        return list(self._frozen)

    def regenerated_buffers(self) -> list[str]:
        """Buffers rebuilt from the seed — θ₀, its per-parameter views, P — which DDP must neither
        broadcast nor sync. The module's own buffers (batch-norm statistics) are not among them."""
        return (["theta0"] + [f"module.{n}" for n in self._frozen]
                + [f"projection.{n}" for n, _ in self.projection.named_buffers()])

    @torch.no_grad()
    def redraw(self) -> None:
        """θ₀ ← θ₀ + P·d (with SAID's λ), the next P from the seed, d ← 0. Autograd state of d is
        untouched (it is a leaf): an optimizer keeps or drops its moments of d (see Redraw)."""
        if self.layerwise is not None:
            raise ValueError("a re-drawn subspace folds θ₀ whole: it cannot be combined with subspace.layerwise")
        self.folded.append(self.d.detach().cpu().clone())
        self.theta0.add_(self.offset())  # in place: the module's views of θ₀ follow
        self.draw += 1
        seed = runtime.rng_seed(self.seed, "subspace redraw", self.draw)
        self.projection = make_projection(self.kind, self.D, self.d.numel(), seed, **self._proj_kwargs).to(
            device=self.theta0.device, dtype=self.theta0.dtype)
        self.d.zero_()

    def replay(self, folded: list[torch.Tensor]) -> None:
        """Re-do the re-draws of a run whose d at each fold was `folded` (from draw 0): θ₀ and P as
        they were after the last, d ← 0 (a resume then loads d)."""
        if self.draw:
            raise ValueError(f"replay starts from the first subspace; this model is at draw {self.draw}")
        with torch.no_grad():
            for d in folded:
                self.d.copy_(d)
                self.redraw()

    def sharded(self) -> ShardedSubspaceModel:
        """This model's FSDP form: θ₀ sharded across the ranks, the same forward and d (sharded.py)."""
        return ShardedSubspaceModel(self)

    def fingerprint(self) -> dict[str, str]:
        """SHA-256 of θ₀ and of P·e₁: equal on every rank iff θ₀ and P were regenerated identically."""
        e1 = torch.zeros_like(self.d)
        e1[0] = 1
        with torch.no_grad():
            pe1 = self.projection.matvec(e1)
        return {"theta0": self.theta0_digest(), "P_e1": _sha(pe1)}

    def theta0_digest(self) -> str:
        """16 hex digits of the sha256 of θ₀'s bytes (after re-draws: the folded θ₀)."""
        return _sha(self.theta0)


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
