"""Hugging Face `transformers` models built from small configs with random weights (no hub access),
adapted to distid's step `cross_entropy(net(x), y)`: images [B, 1, 28, 28] → logits [B, 10] for
ViTForImageClassification; tokens [B, T] → next-token logits [B·T, 256] for a byte-level
GPT2LMHeadModel, whose y is the tokens shifted by one ([B·T]), so the step's loss is the causal-LM loss.

Optional: `pip install -e .[hf]`; without transformers, building one raises MissingDependency.
"""

from __future__ import annotations

import torch
from torch import nn

from distid import runtime

INSTALL_HINT = "pip install -e '.[hf]' (or pip install transformers)"


class MissingDependency(ImportError):
    """An optional package a model needs is not installed."""


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise MissingDependency(f"the Hugging Face models need the optional package transformers: {INSTALL_HINT}") \
            from e
    return transformers


class ImageClassifier(nn.Module):
    """An HF image classifier as a plain map: pixel_values [B, C, H, W] → logits [B, classes]."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=x).logits


class CausalLM(nn.Module):
    """An HF causal LM as tokens [B, T] → next-token logits [B·T, V] (row b·T + t predicts token t+1)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids).logits.flatten(0, 1)


def hf_vit(image: int = 28, patch: int = 7, channels: int = 1, width: int = 64, depth: int = 2, heads: int = 4,
           mlp: int = 128, classes: int = 10) -> ImageClassifier:
    """A tiny ViTForImageClassification (16 patches of 7×7 + [CLS]), D = 72,074 with the defaults.
    Its attention projections are q_proj/k_proj/v_proj/o_proj (transformers 5; query/key/value/dense
    in 4.x): `qv_targets` names the pair LoRA targets by default in PEFT."""
    t = _transformers()
    cfg = t.ViTConfig(image_size=image, patch_size=patch, num_channels=channels, hidden_size=width,
                      num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp, num_labels=classes)
    return ImageClassifier(t.ViTForImageClassification(cfg))


def qv_targets(model: nn.Module) -> list[str]:
    """The name suffixes of a ViT's query and value projections in this transformers version."""
    leaves = {name.rpartition(".")[2] for name, _ in model.named_modules()}
    for pair in (["q_proj", "v_proj"], ["query", "value"]):
        if set(pair) <= leaves:
            return pair
    raise ValueError("no query/value projections found (neither q_proj/v_proj nor query/value)")


def hf_gpt2(vocab: int = 256, context: int = 32, width: int = 32, layers: int = 2, heads: int = 2) -> CausalLM:
    """A 2-layer byte-level GPT2LMHeadModel, no dropout; lm_head.weight IS transformer.wte.weight
    (tied), so D = 34,688 unique parameters (42,880 if the tie were counted twice)."""
    t = _transformers()
    cfg = t.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=width, n_layer=layers, n_head=heads,
                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                       tie_word_embeddings=True)
    return CausalLM(t.GPT2LMHeadModel(cfg))


TEXT = (b"In a random subspace only d numbers are trained: theta = theta0 + P d. "
        b"LoRA trains two thin factors per layer: W = W0 + B A. "
        b"Data parallel training all-reduces the gradients; FSDP all-gathers the weights and "
        b"reduce-scatters the gradients. ")


def byte_batch(batch: int, context: int = 32, seed: int = 0, text: bytes = TEXT) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `text` (repeated): x [batch, context] bytes, y [batch·context] the next bytes."""
    g = runtime.generator(seed, "byte batches")
    corpus = torch.tensor(list(text * (context // len(text) + 2)), dtype=torch.int64)
    starts = torch.randint(0, len(text), (batch,), generator=g)
    windows = torch.stack([corpus[s:s + context + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:].reshape(-1)
