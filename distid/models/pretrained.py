"""θ₀ from a file: `model.init_from = "path"` loads a plain state_dict (or a distid full-training
run's trainable.pt, or a run folder holding one) into the freshly built model before anything
wraps it, so subspace, LoRA and full training all start from those weights.

The summary names where θ₀ came from: "seed:<n>" (regenerated on every rank) or
"file:<first 12 hex of the file's sha256>" (read on every rank; the ranks compare the hash).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


class PretrainedError(ValueError):
    """init_from names no usable file, or its tensors do not fit the model."""


def resolve(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "trainable.pt"
    if not p.is_file():
        raise PretrainedError(f"model.init_from = {path!r}: no such file (give a state_dict saved with torch.save, "
                              f"or a full-training run folder with trainable.pt)")
    return p


def file_tag(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"file:{h.hexdigest()[:12]}"


def load_into(model: nn.Module, path: str) -> str:
    """Copy the file's tensors into `model` (every parameter and buffer must match by name and
    shape; a leading "module." from a DDP state_dict is dropped). Returns the θ₀ tag."""
    p = resolve(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise PretrainedError(f"model.init_from = {path!r}: cannot read it as a state_dict ({e})") from e
    if not isinstance(state, dict):
        raise PretrainedError(f"model.init_from = {path!r} holds a {type(state).__name__}, not a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise PretrainedError(f"model.init_from = {path!r} does not fit this model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shape {shapes[:5]}")
    model.load_state_dict(state)
    return file_tag(p)


def theta0_source(init_from: str, seed: int) -> str:
    """"file:<sha256 prefix>" of init_from, or "seed:<seed>"."""
    return file_tag(resolve(init_from)) if init_from else f"seed:{seed}"
