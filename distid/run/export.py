"""A checkpoint → a plain state_dict of the base architecture, loadable without distid.

    python -m distid.run.export runs/mnist_fc_subspace-…/checkpoints/step_001407.pt [--out model.pt]

Subspace: θ = θ₀ + P·d (θ₀ and P regenerated from the seed; re-drawn subspaces: replayed from the d
of every fold, which the checkpoint keeps), split into the module's parameter
names; LoRA: each adapted layer merged, W = W₀ + (α/r)·B·A; full training (a DCP folder): the model
weights. The file holds tensors only (torch.load(..., weights_only=True)) and loads with
load_state_dict(strict=True) into build_model(name) — or the same architecture written without distid.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from distid import lora
from distid.config import Config
from distid.run import cli
from distid.run.checkpoint import CheckpointError, config_from_dict, latest, read, replay
from distid.subspace import SubspaceModel


def resolve(path: str | Path) -> Path:
    """A checkpoint file or folder as given, or the latest one of a run folder (or its checkpoints/)."""
    path = Path(path)
    for folder in (path / "checkpoints", path):
        found = latest(folder) if folder.is_dir() else None
        if found:
            return found
    if path.exists():
        return path
    raise CheckpointError(f"no checkpoint at {path}: give a step_*.pt file, a step_* folder or a run folder")


def export(path: str | Path) -> tuple[dict[str, torch.Tensor], Config]:
    """(state_dict of the base architecture, the run's config) from a checkpoint."""
    from distid.run.build import build  # the same model the run trained, from its config

    path = resolve(path)
    payload = read(path)
    meta = payload if path.is_dir() else payload["meta"]
    cfg = config_from_dict(meta["config"])
    model = build(cfg, local_world=1)
    if isinstance(model, SubspaceModel):
        if meta.get("fingerprint") and meta["fingerprint"] != model.fingerprint():
            raise CheckpointError(f"{path}: θ₀/P regenerated here differ from the run's (another torch version?)")
        replay(model, meta, str(path))  # a re-drawn subspace: θ₀ and P as its last re-draw left them
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        if path.is_dir():  # DCP: read just the model's trainable tensors, in place
            state = {"model": {k: p.detach() for k, p in trainable.items()}}
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
                warnings.simplefilter("ignore", UserWarning)
                dcp.load(state, checkpoint_id=str(path), no_dist=True)
        else:
            for k, p in trainable.items():
                p.copy_(payload["trainable"][k])
    if isinstance(model, SubspaceModel):
        with torch.no_grad():
            state = {**model.module.state_dict(), **model.params_dict()}
    elif cfg.train.method == "lora":
        state = lora.merge(model).state_dict()
    else:
        state = model.state_dict()
    return {k: v.detach().clone().contiguous() for k, v in state.items()}, cfg


def main(argv=None) -> int:
    p = cli.parser("python -m distid.run.export", __doc__, config=False)
    p.add_argument("checkpoint", help="a step_*.pt file, a step_* DCP folder, or a run folder (its latest)")
    p.add_argument("--out", default=None, help="file to write (default: model.pt in the run folder)")
    args = p.parse_args(argv)

    def work():
        path = resolve(args.checkpoint)
        state, cfg = export(path)
        out = Path(args.out) if args.out else path.parent.parent / "model.pt"
        torch.save(state, out)
        n = sum(t.numel() for t in state.values())
        print(f"wrote {out}: {len(state)} tensors, {n:,} numbers, the state_dict of {cfg.model.name!r} "
              f"({cfg.train.method}); load it with model.load_state_dict(torch.load('{out}'))")

    return cli.guarded(work, input_errors=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
