"""What a config asks to train, built: the model (plain, with LoRA, or in a random subspace), the
optimizer, and the model wrapped for the strategy.

This is where models, the subspace, LoRA and the strategies meet (none of them imports another):
a subspace under FSDP shards θ₀ itself (`subspace/sharded.py`) and DDP all-reduces d's gradient.
"""

from __future__ import annotations

import psutil
import torch
import torch.distributed as dist

from distid import lora, runtime
from distid.config import Config, ConfigError
from distid.models import build_model, count_params, peft_adapters, pretrained
from distid.parallel import formulas
from distid.parallel.parallelize import ddp, parallelize
from distid.subspace import SubspaceModel
from distid.subspace.sharded import DENSE_UNDER_FSDP, ShardedSubspaceModel


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
    D = count_params(model)
    if not 1 <= cfg.train.d <= D:
        raise ConfigError(f"train.d = {cfg.train.d} must be between 1 and D = {D:,} (the model's parameter count)")
    kwargs = {}
    if cfg.train.projection == "dense" and cfg.dist.strategy == "fsdp" and dist.is_initialized() \
            and dist.get_world_size() > 1:  # refuse before allocating 4·D·d bytes
        raise ConfigError(DENSE_UNDER_FSDP)
    if cfg.train.projection == "dense":
        kwargs = dict(max_bytes=dense_limit(cfg), copies=local_world)
    try:
        return SubspaceModel(model, cfg.train.d, cfg.train.projection, seed=cfg.train.seed, said=cfg.train.said,
                             layerwise=cfg.train.layerwise, **kwargs)
    except ValueError as e:  # SAID with d too small
        raise ConfigError(f"train.d: {e}") from e


def with_lora(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """LoRA on train.lora_targets (all Linear/Conv2d/Conv1D by default) at train.lora_rank, or at the rank
    whose trainable count is closest to train.d; α = train.lora_alpha, or the rank."""
    targets = lora.parse_targets(cfg.train.lora_targets)
    save = lora.parse_targets(cfg.train.lora_modules_to_save) or []
    try:
        r = cfg.train.lora_rank or lora.match_budget(model, cfg.train.d, targets)[0]
        model = lora.inject(model, r, cfg.train.lora_alpha or float(r), targets, seed=cfg.train.seed)
        lora.train_fully(model, save)
        return model
    except ValueError as e:
        raise ConfigError(str(e)) from e


def with_peft(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """PEFT's VeRA, FourierFT or Uni-LoRA on train.lora_targets (every Linear by default)."""
    t = cfg.train
    try:
        return peft_adapters.wrap(model, t.method, t.seed, lora.parse_targets(t.lora_targets), rank=t.lora_rank,
                                  n_frequency=t.n_frequency, d=t.d)
    except (ValueError, peft_adapters.MissingPeft) as e:
        raise ConfigError(f"train.method = {t.method!r}: {str(e).splitlines()[0]}") from e


def dense_limit(cfg: Config) -> int:
    """Bytes a dense P may take on this machine: train.max_dense_gb, else half the memory available
    now — the smallest any rank sees, so that every rank takes the same decision."""
    limit = int(cfg.train.max_dense_gb * 1e9) or psutil.virtual_memory().available // 2
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([limit], dtype=torch.int64, device=runtime.device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        limit = int(t.item())
    return limit


def make_optimizer(cfg: Config, params):
    """train.optimizer over `params`: Adam, or SGD with momentum 0.9, at train.lr."""
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.train.lr)
    return torch.optim.SGD(params, lr=cfg.train.lr, momentum=0.9)


def wrap(model: torch.nn.Module, cfg: Config, n: int, device: torch.device):
    """`parallelize`, except a subspace under FSDP: θ₀ sharded by ShardedSubspaceModel, d's gradient
    all-reduced by DDP. Returns (module to call, DDP bucket counter or None, formula)."""
    if not isinstance(model, SubspaceModel):
        return parallelize(model, cfg, n, device)
    if cfg.dist.strategy != "fsdp" or n == 1:
        return parallelize(model, cfg, n, device, ignore=model.regenerated_buffers())
    try:
        sharded = ShardedSubspaceModel(model)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    net, counter = ddp(sharded, device, sharded.regenerated_buffers())
    return net, counter, formulas.sharded_subspace_bytes(sharded.slot, model.projection.d)
