"""Checkpoints: only what a run cannot regenerate, written atomically, the last K kept.

Subspace and LoRA (trainable state replicated on every rank): one file written by rank 0,
`step_000040.pt` = {meta, trainable: d (or the LoRA factors), optim: the optimizer's state_dict};
θ₀ and P are regenerated from the seed, a LoRA base from build_model(seed). Full training and
FSDP-sharded LoRA: a `torch.distributed.checkpoint` folder `step_000040/` (each rank writes its
shards, any world size loads them) with the same meta in `meta.pt`. meta = steps done, loader
position, the config and its resume hash, θ₀/P fingerprints, the RNG state (once when all ranks'
agree), each rank's recent losses and its strategy's own state (PowerSGD's), and the strategy's
shared state once (DiLoCo's outer momentum). Where each rank's optimizer state is its own (local
steps), each rank's is in meta and none in the file.
Atomic: written as `.tmp-step_…`, fsync'd, renamed; a crash before the rename leaves the previous
checkpoint the latest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from distid.config import APPLIES_WHEN, SECTIONS, Config, flat, idle_sections, timestamped_dir, to_dict
from distid.run import fault_injection
from distid.strategies import Strategy
from distid.run import redraw

FORMAT = 3  # 3: the config by sections, the strategy's state
NAME = re.compile(r"^step_(\d{6,})(\.pt)?$")
# Keys that may change between a checkpoint and its resume: run length, logging, where data lives,
# and the [dist] settings that decide how the run talks, not what it computes (backend, timeout).
# A strategy's or a hook's own section ([ddp], [powersgd], [local_sgd]) counts where it applies.
RESUMABLE_CHANGES = ("name", "data.root", "train.steps", "train.epochs", "train.log_every", "train.eval_every",
                     "checkpoint.every", "checkpoint.keep", "subspace.max_dense_gb", "dist.backend",
                     "dist.timeout_s", "dist.check_replicas_every", "dist.measure_interface")
# Strategies that apply the same mean gradient every step: one may resume another's checkpoint
EVERY_STEP = ("none", "ddp", "fsdp")
# torch.distributed.checkpoint is imported where a DCP checkpoint is written or read: it pulls in
# DTensor (about 1 s per process on a 2-core AMD EPYC), which runs without one need not pay.
FROZEN_LEFT_OUT = dict(ignore_frozen_params=True)  # a LoRA base is rebuilt from the seed, not saved


def _dcp():
    """(torch.distributed.checkpoint, its state_dict module), imported on first use."""
    import torch.distributed.checkpoint as dcp
    import torch.distributed.checkpoint.state_dict as sd

    return dcp, sd


class CheckpointError(ValueError):
    """A checkpoint this run cannot use: unreadable, or written by another config."""


class AlreadyFinished(Exception):
    """--resume of a run that has finished: nothing to do, and nothing is written."""


def flat_config(cfg: Config | dict) -> dict:
    """{'train.lr': 0.03, ...} of the keys that decide a run's trajectory (see RESUMABLE_CHANGES);
    a strategy's or hook's section only where it applies, and then only its values that differ from
    the defaults (so that DDP without a hook and FSDP compare equal)."""
    default = flat(to_dict(Config()))
    keys = {**default, **flat(to_dict(cfg) if isinstance(cfg, Config) else cfg)}  # a key newer than the writer:
    # its default, which is what the writer did
    idle = idle_sections(keys)
    if keys.get("dist.strategy") in EVERY_STEP:
        keys["dist.strategy"] = "every step"
    return {k: v for k, v in sorted(keys.items()) if k not in RESUMABLE_CHANGES and not (
        k.split(".")[0] in APPLIES_WHEN and (k.split(".")[0] in idle or v == default.get(k)))}


def resume_hash(cfg: Config | dict) -> str:
    """16 hex digits of the sha256 of flat_config(cfg): equal iff a checkpoint may resume this config."""
    return hashlib.sha256(json.dumps(flat_config(cfg), sort_keys=True).encode()).hexdigest()[:16]


def config_from_dict(raw: dict) -> Config:
    """The Config a checkpoint's meta stores (keys this version does not know are dropped)."""
    cfg = Config(name=raw.get("name", "default"))
    for section in SECTIONS:
        target = getattr(cfg, section)
        for key, value in raw.get(section, {}).items():
            if hasattr(target, key):
                setattr(target, key, value)
    return cfg


def restart_count() -> int:
    """torchrun's attempt number (0 on the first start, 1 after the first restart, …)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def default_out_dir(name: str, resume: bool) -> str:
    """Where a run without --out writes: runs/<name>-<time>; with --resume the newest runs/<name>-*
    that holds checkpoints; under torchrun, every restart of one job the folder its first attempt
    chose (remembered in runs/.torchelastic-<run id>)."""
    if resume:
        done = sorted(Path("runs").glob(f"{name}-*/checkpoints"), key=lambda p: p.stat().st_mtime)
        if done:
            return str(done[-1].parent)
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id:
        return timestamped_dir(name)
    marker = Path("runs") / f".torchelastic-{run_id}"
    if restart_count() > 0 and marker.is_file():
        return marker.read_text().strip()
    out = timestamped_dir(name)
    if os.environ.get("RANK", "0") == "0":  # rank 0's choice is the one every rank takes
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(out)
    return out


def sharded(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def uses_dcp(cfg: Config, model: torch.nn.Module) -> bool:
    """Full training, or a trainable state sharded by FSDP: torch.distributed.checkpoint."""
    return cfg.train.method == "full" or sharded(model)


def size_bytes(path: Path) -> int:
    """Bytes on disk of a checkpoint file, or of every file in a checkpoint folder."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def find(folder: Path) -> list[tuple[int, Path]]:
    """[(steps done, path)] of the complete checkpoints in `folder`, oldest first (temporaries ignored)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name))]
    return sorted(found)


def latest(folder: Path) -> Path | None:
    found = find(folder)
    return found[-1][1] if found else None


def read(path: Path) -> dict:
    """The payload of a checkpoint file (or a DCP folder's meta.pt); CheckpointError if unreadable."""
    try:
        return torch.load(path / "meta.pt" if path.is_dir() else path, weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, unpicklable
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}; "
                              f"delete it to resume from the one before") from e


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_file(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _publish(tmp: Path, final: Path, step: int) -> None:
    """Rename a complete, fsync'd temporary into place (rank 0)."""
    _fsync_dir(tmp.parent)
    fault_injection.before_rename(step, 0)
    if final.exists():
        _remove(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def replay(model: torch.nn.Module, meta: dict, where: str) -> None:
    """A re-drawn subspace's θ₀ and P as the writer's last re-draw left them (nothing without re-draws);
    CheckpointError on every rank if θ₀ replayed here differs from the writer's."""
    if not meta.get("folded"):
        return
    model.replay(meta["folded"])
    try:
        redraw.check_replayed(model, meta["theta0"], where)
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def _diff(saved: dict, mine: dict) -> str:
    keys = sorted(set(saved) | set(mine))
    return ", ".join(f"{k}: {saved.get(k)!r} → {mine.get(k)!r}" for k in keys if saved.get(k) != mine.get(k))


class Checkpointer:
    """Saves every `every` steps (0: only at the end) and at the end, keeps the last `keep` (0: none)."""

    def __init__(self, folder: Path, cfg: Config, model: torch.nn.Module, strategy: Strategy,
                 fingerprint: dict | None = None):
        self.folder, self.cfg, self.model, self.fingerprint = Path(folder), cfg, model, fingerprint
        self.every, self.keep, self.strategy = cfg.checkpoint.every, cfg.checkpoint.keep, strategy
        self.rank, self.n = dist.get_rank(), dist.get_world_size()
        self.dcp = uses_dcp(cfg, model)
        self.last: Path | None = None

    def _meta(self, done: int, loader, local: dict) -> dict | None:
        """Meta on rank 0 (None elsewhere): every rank's local state (RNG, recent losses) gathered."""
        everyone = [None] * self.n if self.rank == 0 else None
        dist.gather_object(local, everyone, dst=0)
        if self.rank != 0:
            return None
        rngs = [state.pop("rng") for state in everyone]  # 5 kB each on CPU: once when all agree
        rngs = rngs[:1] if all(torch.equal(rngs[0], g) for g in rngs) else rngs
        return dict(format=FORMAT, step=done, world_size=self.n, config=to_dict(self.cfg),
                    resume_hash=resume_hash(self.cfg), loader=loader.state_dict(),
                    fingerprint=self.fingerprint, ranks=everyone, rng=rngs, dcp=self.dcp,
                    shared=self.strategy.shared_state_dict(), **self._redraws())

    def _redraws(self) -> dict:
        """A re-drawn subspace's history: d at each fold (θ₀ is replayed from it) and θ₀'s hash."""
        folded = getattr(self.model, "folded", None)
        return dict(folded=list(folded), theta0=self.model.theta0_digest()) if folded else {}


    def save(self, done: int, opt: torch.optim.Optimizer, loader, local: dict) -> Path:
        """Write the checkpoint of `done` steps on every rank's behalf (a collective); returns its path.
        `local`: this rank's own state (RNG, losses, …), to which its strategy's state is added."""
        local = dict(local, strategy=self.strategy.state_dict())
        own = self.strategy.own_optimizer
        if own:
            local["optim"] = opt.state_dict()
        name = f"step_{done:06d}"
        final, tmp = self.folder / (name if self.dcp else name + ".pt"), self.folder / f".tmp-{name}"
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            _remove(tmp)
        meta = self._meta(done, loader, local)
        if self.dcp:
            dist.barrier()  # the stale temporary is gone before anyone writes into it
            dcp, sd = _dcp()
            msd, osd = sd.get_state_dict(self.model, opt, options=sd.StateDictOptions(**FROZEN_LEFT_OUT))
            dcp.save({"model": msd} if own else {"model": msd, "optim": osd}, checkpoint_id=str(tmp))
            if self.rank == 0:
                _save_file(meta, tmp / "meta.pt")
        elif self.rank == 0:
            trainable = {k: p.detach().cpu().clone() for k, p in self.model.named_parameters() if p.requires_grad}
            _save_file(dict(meta=meta, trainable=trainable, **({} if own else dict(optim=opt.state_dict()))), tmp)
        if self.rank == 0:
            _publish(tmp, final, done)
            for _, old in find(self.folder)[:-self.keep]:
                _remove(old)
        dist.barrier()  # nobody moves on (or exits) before the checkpoint is in place
        self.last = final
        return final

    def resume(self, opt: torch.optim.Optimizer, loader) -> tuple[int, dict, str] | None:
        """Load the latest checkpoint into model, optimizer and loader (a collective).
        Returns (steps done, this rank's local state, a line for the user), or None if there is none;
        the strategy's state is restored here too."""
        box = [None]
        if self.rank == 0:
            path = latest(self.folder)
            try:
                box = [(path, read(path) if path else None)]
            except CheckpointError as e:
                box = [e]
        dist.broadcast_object_list(box, src=0)  # rank 0's files, also for nodes that cannot see them
        if isinstance(box[0], CheckpointError):
            raise box[0]
        path, payload = box[0]
        if path is None:
            return None
        meta = payload if self.dcp else payload["meta"]
        self._check(path, meta)
        replay(self.model, meta, f"checkpoint {path}")
        if self.dcp:
            dcp, sd = _dcp()
            msd, osd = sd.get_state_dict(self.model, opt, options=sd.StateDictOptions(**FROZEN_LEFT_OUT))
            own = self.strategy.own_optimizer
            state = {"model": msd} if own else {"model": msd, "optim": osd}
            dcp.load(state, checkpoint_id=str(path))
            options = sd.StateDictOptions(**FROZEN_LEFT_OUT, strict=False)  # the frozen base is missing
            keys = sd.set_model_state_dict(self.model, state["model"], options=options) if own else \
                sd.set_state_dict(self.model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"],
                                  options=options)
            trainable = {k for k, p in self.model.named_parameters() if p.requires_grad}
            if set(keys.missing_keys) & trainable:
                raise CheckpointError(f"checkpoint {path} lacks {sorted(set(keys.missing_keys) & trainable)}")
        else:
            self._load_file(payload, opt)
        loader.load_state_dict(meta["loader"])
        same_world = meta["world_size"] == self.n
        local = meta["ranks"][self.rank] if same_world else {"evals": meta["ranks"][0].get("evals", [])}  # every rank's
        if self.strategy.own_optimizer:
            opt.load_state_dict(local["optim"])
        if local.get("strategy"):  # none where the writer's strategy kept nothing (one process, no hook)
            self.strategy.load_state_dict(local["strategy"])
        self.strategy.load_shared_state_dict(meta.get("shared") or {})
        if len(meta["rng"]) == 1 or same_world:
            torch.set_rng_state(meta["rng"][0 if len(meta["rng"]) == 1 else self.rank])
        note = f"resuming from {path} ({meta['step']} steps done)"
        if not same_world:
            note += (f"; it was written by {meta['world_size']} ranks, this run has {self.n}: d, the optimizer "
                     f"state and the data order carry over, floating-point sums may round differently")
        self.last = path
        return meta["step"], local, note

    def _check(self, path: Path, meta: dict) -> None:
        if meta.get("format") in (1, 2):
            why = "random streams differ" if meta["format"] == 1 else "config layout and strategy state differ"
            raise CheckpointError(f"checkpoint {path} was written by an older distid (checkpoint format "
                                  f"{meta['format']}, this one writes {FORMAT}): its {why} from this version's, so "
                                  f"it cannot be continued; start afresh with another --out")
        if meta.get("format") != FORMAT or meta.get("dcp") != self.dcp:
            raise CheckpointError(f"checkpoint {path} is not a distid checkpoint of this kind "
                                  f"({'full/sharded' if self.dcp else 'subspace/LoRA'}); use another --out")
        if resume_hash(meta["config"]) != resume_hash(self.cfg):  # the writer's config, as this version reads it
            diff = _diff(flat_config(meta["config"]), flat_config(self.cfg))
            raise CheckpointError(f"checkpoint {path} was written by another config ({diff}); "
                                  f"resume with the same config, or start afresh with another --out")
        if meta["world_size"] != self.n and any(r.get("strategy") or r.get("optim") for r in meta["ranks"]):
            how = self.strategy.label if self.strategy.own_state else \
                f"dist.strategy = {meta['config']['dist']['strategy']!r}"  # the writer's
            raise CheckpointError(f"checkpoint {path} was written by {meta['world_size']} ranks under {how}, whose "
                                  f"{self.strategy.own_state or 'strategy state'} is each rank's own: resume it on "
                                  f"{meta['world_size']} ranks")
        if self.fingerprint and meta.get("fingerprint") and meta["fingerprint"] != self.fingerprint:
            raise CheckpointError(
                f"checkpoint {path}: θ₀/P regenerated here differ from the checkpoint's (fingerprint "
                f"{meta['fingerprint']} vs {self.fingerprint}): another torch version or projection code")

    def _load_file(self, payload: dict, opt: torch.optim.Optimizer) -> None:
        mine = {k: p for k, p in self.model.named_parameters() if p.requires_grad}
        if set(mine) != set(payload["trainable"]):
            raise CheckpointError(f"checkpoint holds {sorted(payload['trainable'])}, this model trains {sorted(mine)}")
        with torch.no_grad():
            for k, p in mine.items():
                p.copy_(payload["trainable"][k])
        if not self.strategy.own_optimizer:  # else each rank's own, from meta (resume)
            opt.load_state_dict(payload["optim"])
