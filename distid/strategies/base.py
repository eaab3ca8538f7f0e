"""What a strategy is: how the replicas of one model, one per rank, are kept together.

    s = choose(cfg, n, device)    # dist.strategy; its own settings read here, combinations refused
    net = s.wrap(model)           # the module the loop calls (DDP, FSDP, or the model itself)
    s.attach(opt, ledger, start)  # hook the optimizer's step (torchft's LocalSGD does the same)
    ... loop: forward, backward, opt.step() ...   # the strategy acts inside backward or after step()

A strategy knows nothing of subspaces or LoRA: those are re-parameterisations of the model that any
strategy carries (it synchronises whatever requires a gradient: d, the adapters, or all D). A model
may bring its own form for a strategy: a subspace model's `sharded()` is its FSDP form (θ₀ sharded,
d's gradient all-reduced). Strategies compose by holding one another: the FSDP form of a subspace
runs DDP over d; local steps run over an inner strategy (none today: each replica is whole).

Bytes: `payload` is what the strategy hands its collectives per training step, by formula
({op: bytes, ..., "total"}); the ledger measures the same. State: `state_dict` is this rank's own,
`shared_state_dict` what every rank holds alike (a checkpoint stores it once).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from distid.config import Config, ConfigError
from distid.parallel.consistency import trainable_digest

BUILTIN = {"none": "distid.strategies.single:Single", "ddp": "distid.strategies.ddp:DDP",
           "fsdp": "distid.strategies.fsdp:FSDP", "local_sgd": "distid.strategies.local_sgd:LocalSGD",
           "streaming_diloco": "distid.strategies.streaming_diloco:StreamingDiLoCo",
           "sparse_loco": "distid.strategies.sparse_loco:SparseLoCo", "demo": "distid.strategies.demo:DeMo"}


class Strategy:
    """The interface, with the behaviour of one process that synchronises nothing."""

    period = 1  # the replicas hold the same trainable state after every `period`-th step (and the last);
    # evaluations and checkpoints fall there (Streaming DiLoCo: its global copies agree there, its replicas not)
    own_optimizer = False  # each rank's optimizer state is its own (a checkpoint keeps every rank's)
    own_state = ""  # what of this rank's state is its own, in words (a resume on other world sizes is refused)
    rebases = False  # its state stays right through `rebase` (a re-drawn subspace may run under it)

    def __init__(self, cfg: Config, n: int, device: torch.device):
        self.cfg, self.n, self.device = cfg, n, device
        self.payload: dict = {"total": 0}  # per training step, by formula; set by wrap
        self.counter = None  # DDP's BucketCounter, where DDP runs

    @property
    def label(self) -> str:
        """The strategy in words, for tables: "DDP", "DiLoCo (H = 32)"."""
        return type(self).__name__

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls; sets `payload` (or attach does, where it needs the run's steps)."""
        return model

    def make_optimizer(self, params: list) -> torch.optim.Optimizer | None:
        """A strategy that is its own optimizer (DeMo: sign descent) returns it; None: the run's
        train.optimizer at train.lr (run/build.py)."""
        return None

    def digest(self, model: nn.Module) -> str:
        """What the run's replica check compares across ranks (after every synchronisation, at checks
        and checkpoints, at the end): the trainable parameters' hash. A strategy whose replicas differ
        by design between synchronisations hashes what every rank holds alike (its global copy)."""
        return trainable_digest(model)

    def rebase(self, reset: bool) -> None:
        """The trainable parameters were changed between steps, alike on every rank (a re-drawn
        subspace: d ← 0 in a new basis): take them as the common point; `reset`: drop state tied
        to the old values (an outer momentum)."""

    def state_bytes(self) -> dict[str, int]:
        """Bytes of every tensor this strategy keeps on this rank between steps, by what it is
        ({"θ_start": 796840, "outer momentum": 796840}), measured from the tensors themselves;
        the optimizer's own state is counted by the run, not here."""
        return {}

    def attach(self, opt: torch.optim.Optimizer, ledger, start: int, steps: int) -> None:
        """Called once before the first step (`start` steps already done, of `steps`)."""

    def warm_steps(self) -> int:
        """Steps from now whose bytes are not yet the steady state (PowerSGD's plain ones)."""
        return 0

    def state_dict(self) -> dict:
        """This rank's own state (e.g. PowerSGD's error feedback), as tensors and numbers."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def shared_state_dict(self) -> dict:
        """State every rank holds alike (e.g. DiLoCo's outer momentum)."""
        return {}

    def load_shared_state_dict(self, state: dict) -> None:
        pass


def tensor_bytes(*tensors) -> int:
    """Bytes held by these tensors (lists, tuples and dicts of them walked)."""
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        elif isinstance(t, dict):
            total += tensor_bytes(*t.values())
        elif isinstance(t, (list, tuple)):
            total += tensor_bytes(*t)
    return total


def index_dtype(size: int) -> torch.dtype:
    """The smallest integer dtype that holds every index in [0, size): what a sparse exchange sends
    as each value's address within its chunk (uint8 up to 256, int16 up to 32,768)."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if size - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def find(name: str) -> type:
    """The class `dist.strategy` names: a built-in name, or "package.module:Class"."""
    path = BUILTIN.get(name, name)
    module, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"dist.strategy = {name!r}: cannot import {path!r} ({type(e).__name__}: {e})") from e
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"dist.strategy = {name!r}: {path} is not a subclass of distid.strategies.Strategy")
    return cls


def choose(cfg: Config, n: int, device: torch.device) -> Strategy:
    """The strategy of `cfg` for `n` ranks; a combination it cannot run raises ConfigError in one line."""
    return find(cfg.dist.strategy)(cfg, n, device)


def falls_due(done: int, every: int, period: int = 1) -> bool:
    """Is something that runs every `every` steps (an evaluation, a replica check, a checkpoint) due
    after `done` steps? The replicas are one model only every `period` steps, so it falls on the
    first such step at or after each multiple of `every` (period 1: done % every == 0)."""
    return every > 0 and done % period == 0 and done // every > (done - period) // every
