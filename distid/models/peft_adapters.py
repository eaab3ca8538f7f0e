"""PEFT's methods with fewer trainable numbers than LoRA, around any distid model, through the
installed `peft` (not copies): the model is `peft.get_peft_model(base, config)` and DDP syncs its
trainable tensors like any other.

    vera      (Kopiczko et al. 2024)  ΔW = Λ_b·B·Λ_d·A: A [r, in] and B [out, r] random, frozen and
              shared by every layer (sliced to each shape); trained: λ_d [r] and λ_b [out] per layer.
              r = lora.rank (0: PEFT's 256).
    fourierft (Gao et al. 2024)       ΔW = α·Re(IDFT₂(S)): S holds n trainable spectral coefficients at
              n random frequencies of each layer. n = lora.n_frequency.
    unilora   (Uni-LoRA)              every LoRA factor entry of every layer is one entry of a single
              trainable vector θ_d [d] (a random, normalised assignment): a subspace of LoRA's
              parameters. d = subspace.d, LoRA rank r = lora.rank (0: PEFT's 4).

Every random part is keyed by (seed, purpose) (`runtime.rng_seed`): the frozen projections by their
PEFT seed argument, and the initial values PEFT draws from torch's global generator (FourierFT's
spectrum, Uni-LoRA's θ_d) under a generator seeded for the purpose, restored afterwards.
"""

from __future__ import annotations

import torch
from torch import nn

from distid import runtime

METHODS = ("vera", "fourierft", "unilora")


class MissingPeft(ImportError):
    """`peft` (or the method in this version of it) is not installed."""


def _peft():
    try:
        import peft
    except ImportError as e:
        raise MissingPeft("train.method = 'vera' | 'fourierft' | 'unilora' needs PEFT: "
                          "pip install peft") from e
    return peft


def linear_names(model: nn.Module) -> list[str]:
    """Names of every nn.Linear in `model`: the default targets."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def peft_config(method: str, seed: int, targets: list[str], rank: int = 0, n_frequency: int = 1000, d: int = 256):
    """The PEFT config of `method` on `targets`, its random parts keyed by (seed, method)."""
    peft = _peft()
    key = runtime.rng_seed(seed, f"{method} projection") % 2**31
    if method == "vera":
        return peft.VeraConfig(r=rank or 256, target_modules=targets, projection_prng_key=key)
    if method == "fourierft":
        return peft.FourierFTConfig(n_frequency=n_frequency, target_modules=targets, random_loc_seed=key)
    if not hasattr(peft, "UniLoraConfig"):
        raise MissingPeft(f"train.method = 'unilora' needs a PEFT with Uni-LoRA (0.21 has it); "
                          f"this one is {peft.__version__}")
    return peft.UniLoraConfig(r=rank or 4, theta_d_length=d, target_modules=targets, proj_seed=key)


def wrap(model: nn.Module, method: str, seed: int, targets: list[str] | None = None, **sizes) -> nn.Module:
    """`peft.get_peft_model(model, peft_config(...))`: only the method's own tensors train."""
    config = peft_config(method, seed, targets or linear_names(model), **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(runtime.rng_seed(seed, f"{method} init"))
        return _peft().get_peft_model(model, config)
