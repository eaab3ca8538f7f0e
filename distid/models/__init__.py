"""Plain nn.Modules, nothing distributed: the networks distid trains."""

from distid.models.hf import MissingDependency, hf_gpt2, hf_vit
from distid.models.lenet import LeNet5
from distid.models.mlp import MLP, count_params, seeded
from distid.models.vit import ViT

def wide_mlp() -> MLP:
    """784-4096-4096-10, D = 20,037,642: large enough for FSDP's per-rank saving to show."""
    return MLP(hidden=(4096, 4096))


# hf_gpt2 is built directly (distid.models.hf): distid.train feeds images, not tokens
MODELS = {"mlp": MLP, "mlp_wide": wide_mlp, "lenet": LeNet5, "vit": ViT, "hf_vit": hf_vit}


def build_model(name: str, seed: int = 0, **kwargs):
    """A model from the registry, initialised from `seed` (identical on every rank)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return seeded(lambda: MODELS[name](**kwargs), seed)


__all__ = ["LeNet5", "MLP", "MODELS", "MissingDependency", "ViT", "build_model", "count_params", "hf_gpt2",
           "hf_vit", "seeded"]
