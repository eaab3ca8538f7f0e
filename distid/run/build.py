"""What a config asks to train, built: the model (plain, with LoRA, or in a random subspace) and
the optimizer. This is where models, the subspace and LoRA meet (none of them imports another);
the strategy (distid/strategies) then wraps whatever this returns.
"""

from __future__ import annotations

import psutil
import torch
import torch.distributed as dist

from distid import lora, runtime
from distid.config import Config, ConfigError
from distid.models import build_model, count_params, peft_adapters, pretrained
from distid.subspace import SubspaceModel


def build(cfg: Config, local_world: int = 1) -> torch.nn.Module:
    """The model of the config: plain (full training), with LoRA adapters, or in a random subspace."""
    model = build_model(cfg.model.name, seed=cfg.train.seed)
    if cfg.model.init_from:
        try:
            pretrained.load_into(model, cfg.model.init_from)
        except pretrained.PretrainedError as e:
            raise ConfigError(str(e)) from e
    if cfg.train.method == "full":
        return model
    if cfg.train.method == "lora":
        return with_lora(model, cfg)
    if cfg.train.method in peft_adapters.METHODS:
        return with_peft(model, cfg)
    D, sub = count_params(model), cfg.subspace
    if not 1 <= sub.d <= D:
        raise ConfigError(f"subspace.d = {sub.d} must be between 1 and D = {D:,} (the model's parameter count)")
    kwargs = dict(max_bytes=dense_limit(cfg), copies=local_world) if sub.projection == "dense" else {}
    try:
        return SubspaceModel(model, sub.d, sub.projection, seed=cfg.train.seed, said=sub.said,
                             layerwise=sub.layerwise, **kwargs)
    except ValueError as e:  # SAID with d too small
        raise ConfigError(f"subspace.d: {e}") from e


def with_lora(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """LoRA on lora.targets (all Linear/Conv2d/Conv1D by default) at lora.rank, or at the rank whose
    trainable count is closest to subspace.d; α = lora.alpha, or the rank."""
    lo = cfg.lora
    targets = lora.parse_targets(lo.targets)
    save = lora.parse_targets(lo.modules_to_save) or []
    try:
        r = lo.rank or lora.match_budget(model, cfg.subspace.d, targets)[0]
        model = lora.inject(model, r, lo.alpha or float(r), targets, seed=cfg.train.seed)
        lora.train_fully(model, save)
        return model
    except ValueError as e:
        raise ConfigError(str(e)) from e


def with_peft(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """PEFT's VeRA, FourierFT or Uni-LoRA on lora.targets (every Linear by default)."""
    t, lo = cfg.train, cfg.lora
    try:
        return peft_adapters.wrap(model, t.method, t.seed, lora.parse_targets(lo.targets), rank=lo.rank,
                                  n_frequency=lo.n_frequency, d=cfg.subspace.d)
    except (ValueError, peft_adapters.MissingPeft) as e:
        raise ConfigError(f"train.method = {t.method!r}: {str(e).splitlines()[0]}") from e


def dense_limit(cfg: Config) -> int:
    """Bytes a dense P may take on this machine: subspace.max_dense_gb, else half the memory available
    now — the smallest any rank sees, so that every rank takes the same decision."""
    limit = int(cfg.subspace.max_dense_gb * 1e9) or psutil.virtual_memory().available // 2
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([limit], dtype=torch.int64, device=runtime.device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        limit = int(t.item())
    return limit


def make_optimizer(cfg: Config, params, strategy=None):
    """The strategy's own optimizer where it has one (DeMo), else train.optimizer over `params`:
    Adam, or SGD with momentum 0.9, at train.lr."""
    own = strategy.make_optimizer(params) if strategy is not None else None
    if own is not None:
        return own
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.train.lr)
    return torch.optim.SGD(params, lr=cfg.train.lr, momentum=0.9)
