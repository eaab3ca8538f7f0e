"""LoRA (Hu et al. 2021) on nn.Linear / nn.Conv2d / transformers' Conv1D: W = W₀ + (α/r)·B·A, W₀ frozen,
A [r, in], B [out, r]. Conv1D (GPT-2's projections) is a Linear storing Wᵀ [in, out]: its ΔW is ((α/r)·B·A)ᵀ.

Conv2d: A is a conv in→r with the base's kernel/stride/padding/dilation ([r, in, kh, kw]), B a 1×1 conv
r→out ([out, r, 1, 1]); ΔW = (α/r)·(B·A) reshaped to [out, in, kh, kw]. A ~ Kaiming-uniform(a=√5), B = 0.
Budget: rank r costs r·Σ(d_in + d_out) over the targeted layers (d_in = in·kh·kw for a conv), so rank 1
on every layer already costs 784+200 + 200+200 + 200+10 = 1,594 for the MLP (LeNet: 31+166+376+204+94 =
871), both > 750: LoRA on all layers cannot reach the MLP's intrinsic dimension; fewer targets can
(match_budget_targets(mlp, 750) → (['3'], r=2, 800); for LeNet (['7'], r=2, 752)).
"""

from __future__ import annotations

import copy
import fnmatch
import math
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distid import runtime

LAYERS = (nn.Linear, nn.Conv2d)


def _init_factors(out_shape: tuple[int, ...], a_shape: tuple[int, ...], weight: torch.Tensor,
                  generator: torch.Generator | None) -> tuple[nn.Parameter, nn.Parameter]:
    """A Kaiming-uniform(a=√5) as PEFT does (drawn on CPU from `generator`), B zeros; base dtype/device."""
    A = torch.empty(a_shape, dtype=weight.dtype)
    nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
    B = torch.zeros(out_shape, dtype=weight.dtype, device=weight.device)
    return nn.Parameter(A.to(weight.device)), nn.Parameter(B)


class _LoRA(nn.Module):
    """Shared part: frozen `base`, factors `lora_A`, `lora_B`, scale α/r."""

    base: nn.Linear | nn.Conv2d

    def __init__(self, base: nn.Module, r: int, alpha: float):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got r={r}; pass r=1 or more")
        self.base, self.r, self.alpha, self.scale = base, r, alpha, alpha / r
        for p in base.parameters():
            p.requires_grad_(False)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r)·B·A with the base weight's shape."""
        w = self.base.weight
        return (self.scale * (self.lora_B.reshape(w.shape[0], self.r) @ self.lora_A.reshape(self.r, -1))).view(w.shape)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """A plain copy of the base layer with weight W₀ + ΔW (bias and flags kept)."""
        layer = copy.deepcopy(self.base)
        layer.weight = nn.Parameter(self.base.weight + self.delta_weight(),
                                    requires_grad=self.base.weight.requires_grad)
        return layer

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}"


class LoRALinear(_LoRA):
    """y = base(x) + (α/r)·(x·Aᵀ)·Bᵀ; x [..., in] → y [..., out]."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__(base, r, alpha)
        self.lora_A, self.lora_B = _init_factors((base.out_features, r), (r, base.in_features), base.weight, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.t()) @ self.lora_B.t())


class LoRAConv2d(_LoRA):
    """y = base(x) + (α/r)·conv1×1(conv(x, A), B); x [B, in, H, W] → y [B, out, H', W']."""

    def __init__(self, base: nn.Conv2d, r: int, alpha: float, generator: torch.Generator | None = None):
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError("LoRAConv2d supports groups=1 and padding_mode='zeros' only; leave this layer "
                             "out of targets")
        super().__init__(base, r, alpha)
        kh, kw = base.kernel_size
        self.lora_A, self.lora_B = _init_factors((base.out_channels, r, 1, 1), (r, base.in_channels, kh, kw),
                                                 base.weight, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        h = F.conv2d(x, self.lora_A, None, b.stride, b.padding, b.dilation)
        return b(x) + self.scale * F.conv2d(h, self.lora_B)


class LoRAConv1D(_LoRA):
    """transformers' Conv1D, y = x·W + b with W [in, out]: y = base(x) + (α/r)·(x·Aᵀ)·Bᵀ; x [..., in] → [..., out]."""

    def __init__(self, base: nn.Module, r: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__(base, r, alpha)
        d_in, d_out = base.weight.shape
        self.lora_A, self.lora_B = _init_factors((d_out, r), (r, d_in), base.weight, generator)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = ((α/r)·B·A)ᵀ, [in, out] like the base weight."""
        return (self.scale * (self.lora_B @ self.lora_A)).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.t()) @ self.lora_B.t())


WRAPPERS: dict[type, type[_LoRA]] = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}


def _hf_conv1d() -> type | None:
    """transformers' Conv1D class if transformers is loaded (a model cannot hold one otherwise)."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def _wrapper(m: nn.Module) -> type[_LoRA] | None:
    """The LoRA class for layer `m`, or None if `m` is not adaptable."""
    if type(m) in WRAPPERS:
        return WRAPPERS[type(m)]
    return LoRAConv1D if type(m) is _hf_conv1d() else None


def _supported(m: nn.Module) -> bool:
    return _wrapper(m) is not None and (not isinstance(m, nn.Conv2d) or (m.groups == 1 and m.padding_mode == "zeros"))


def layers(model: nn.Module) -> dict[str, nn.Module]:
    """The adaptable layers by qualified name, in module order (layers inside LoRA wrappers excluded)."""
    out: dict[str, nn.Module] = {}
    wrapped: list[str] = []
    for name, m in model.named_modules():
        if any(name == w or name.startswith(w + ".") or w == "" for w in wrapped):
            continue
        if isinstance(m, _LoRA):
            wrapped.append(name)
        elif _supported(m):
            out[name] = m
    return out


def _dims(m: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of ΔW seen as a matrix: a conv's d_in is in·kh·kw."""
    if isinstance(m, nn.Conv2d):
        return m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return tuple(m.weight.shape)  # Conv1D: [in, out]


def parse_targets(text: str) -> list[str] | None:
    """'q, v' → ['q', 'v']; '' → None (every Linear/Conv2d/Conv1D): the form of lora.targets."""
    return [t.strip() for t in text.split(",") if t.strip()] or None


def _resolve(model: nn.Module, targets: Sequence[str] | None) -> dict[str, nn.Module]:
    """The layers named by `targets`: exact names, fnmatch patterns, or name suffixes as PEFT's
    target_modules ("v" picks "blocks.0.attn.v", "attn.v" too); None = all. Errors if any is empty."""
    avail = layers(model)
    names = ", ".join(repr(n) for n in avail) or "none"
    if targets is None:
        chosen = dict(avail)
    else:
        if isinstance(targets, str):
            targets = [targets]
        chosen = {}
        for t in targets:
            hit = [n for n in avail if n == t or n.endswith("." + t) or fnmatch.fnmatchcase(n, t)]
            if not hit:
                raise ValueError(f"target {t!r} matches no Linear/Conv2d/Conv1D layer; available layers: {names}")
            chosen.update((n, avail[n]) for n in hit)
        chosen = {n: avail[n] for n in avail if n in chosen}  # module order
    if not chosen:
        raise ValueError(f"no layer targeted (targets={targets!r}); name some of the available layers: {names}")
    return chosen


def train_fully(model: nn.Module, modules: Sequence[str]) -> int:
    """Make every parameter of the named modules trainable (exact names or name suffixes, as
    `targets`): PEFT's `modules_to_save`, e.g. a new task's classifier head next to LoRA.
    Returns how many parameters that adds."""
    named = dict(model.named_modules())
    added = 0
    for t in modules:
        hit = [n for n in named if n and (n == t or n.endswith("." + t))]
        if not hit:
            raise ValueError(f"lora.modules_to_save: {t!r} names no module of the model")
        for n in hit:
            for p in named[n].parameters():
                if not p.requires_grad:
                    p.requires_grad_(True)
                    added += p.numel()
    return added


def _max_rank(chosen: dict[str, nn.Module]) -> int:
    return min(min(_dims(m)) for m in chosen.values())


def max_rank(model: nn.Module, targets: Sequence[str] | None = None) -> int:
    """The largest rank every targeted layer takes: min over them of min(in, out)."""
    return _max_rank(_resolve(model, targets))


def _check_rank(chosen: dict[str, nn.Module], r: int) -> None:
    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got r={r}; pass r=1 or more")
    for name, m in chosen.items():
        if r > min(_dims(m)):
            raise ValueError(f"rank r={r} exceeds min(in, out)={min(_dims(m))} of layer {name!r}; "
                             "use a smaller r or leave that layer out of targets")


def inject(model: nn.Module, r: int, alpha: float, targets: Sequence[str] | None = None, seed: int = 0) -> nn.Module:
    """Wrap the targeted layers in LoRA (in place), freeze everything else; A drawn from the generator keyed by (seed, "lora").

    Returns the model (the wrapper itself when the model is a single targeted layer).
    """
    chosen = _resolve(model, targets)
    _check_rank(chosen, r)
    for p in model.parameters():
        p.requires_grad_(False)
    gen = runtime.generator(seed, "lora")  # never the stream of the base model's W₀
    for name, m in chosen.items():
        wrapper = _wrapper(m)(m, r, alpha, generator=gen)
        if name == "":
            return wrapper
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, wrapper)
    return model


def merge(model: nn.Module) -> nn.Module:
    """Replace every LoRA wrapper by its merged plain layer (in place); returns the model."""
    if isinstance(model, _LoRA):
        return model.merged()
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, _LoRA)]:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, m.merged())
    return model


def lora_param_count(model: nn.Module, r: int, targets: Sequence[str] | None = None) -> int:
    """Trainable scalars LoRA of rank r adds: r·(d_in + d_out) per targeted layer. Model unchanged."""
    chosen = _resolve(model, targets)
    _check_rank(chosen, r)
    return r * sum(sum(_dims(m)) for m in chosen.values())


def match_budget(model: nn.Module, d: int, targets: Sequence[str] | None = None,
                 max_rank: int | None = None) -> tuple[int, int]:
    """(r, count): the rank r ≥ 1 whose parameter count is closest to d (ties → smaller r).

    r is at most max_rank and at most the largest rank every targeted layer admits.
    """
    chosen = _resolve(model, targets)
    top = _max_rank(chosen) if max_rank is None else min(max_rank, _max_rank(chosen))
    if top < 1:
        raise ValueError(f"max_rank={max_rank} leaves no rank >= 1; pass max_rank >= 1 or None")
    per_rank = sum(sum(_dims(m)) for m in chosen.values())
    r = min(range(1, top + 1), key=lambda k: (abs(k * per_rank - d), k))
    return r, r * per_rank


def contiguous_runs(model: nn.Module) -> list[list[str]]:
    """Every non-empty contiguous run of adaptable layers, shortest first, in module order."""
    names = list(layers(model))
    return [names[i:i + n] for n in range(1, len(names) + 1) for i in range(len(names) - n + 1)]


def match_budget_targets(model: nn.Module, d: int,
                         candidates: list[list[str]] | None = None) -> tuple[list[str], int, int]:
    """(targets, r, count) over candidate target sets with count closest to d.

    Default candidates: contiguous_runs(model). Ties → smaller r, then the earlier candidate.
    """
    cands = contiguous_runs(model) if candidates is None else candidates
    best = None
    for i, t in enumerate(cands):
        r, count = match_budget(model, d, t)
        key = (abs(count - d), r, i)
        if best is None or key < best[0]:
            best = (key, list(t), r, count)
    if best is None:
        raise ValueError("no candidate target sets given; pass a non-empty list of layer-name lists or None")
    return best[1], best[2], best[3]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA factors, keyed as in model.state_dict(): a tiny checkpoint."""
    keys = {f"{n}.{f}" if n else f for n, m in model.named_modules() if isinstance(m, _LoRA)
            for f in ("lora_A", "lora_B")}
    return {k: v for k, v in model.state_dict().items() if k in keys}


__all__ = ["LoRAConv1D", "LoRAConv2d", "LoRALinear", "contiguous_runs", "inject", "layers", "lora_param_count",
           "lora_state_dict", "match_budget", "match_budget_targets", "merge"]


def rank_of(model: nn.Module) -> int | None:
    """The LoRA rank of the first adapter in `model` (None if it has none)."""
    return next((m.r for m in model.modules() if isinstance(m, _LoRA)), None)
