"""PyTorch's DDP gradient-compression hooks, chosen by name (`dist.comm_hook`): what each hands to
its all-reduces per step, for T trainable float32 numbers in matrices W_i [n_i, m_i] and vectors.

none: 4·T.  fp16 / bf16: 2·T (the bucket cast, all-reduced, cast back).
powersgd (rank r): plain all-reduce (4·T) for the first `start_iter` steps, then per bucket three
all-reduces: the tensors not worth compressing, P = M·Q [n_i, r] and Q = Mᵀ·P [m_i, r] — 4·r·Σ(n_i + m_i)
plus 4·|uncompressed| bytes (see `formulas.powersgd_bytes`).
"""

from __future__ import annotations

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

HOOKS = ("none", "fp16", "bf16", "powersgd")


CPU_POWERSGD_ON_GPU_MACHINE = (
    "dist.comm_hook = 'powersgd' on CPU tensors (gloo) cannot run on a machine with a CUDA GPU: PyTorch's "
    "powerSGD_hook then synchronises a CUDA device with the CPU tensors' device and fails. Use the GPUs "
    "(backend nccl), or hide them for a CPU run: CUDA_VISIBLE_DEVICES=''")


def comm_hook(name: str, rank: int = 1, start_iter: int = 10, error_feedback: bool = True, seed: int = 0,
              device_type: str = "cpu"):
    """(state, hook) for `DistributedDataParallel.register_comm_hook`: PyTorch's own hooks."""
    if name == "none":
        return None, default_hooks.allreduce_hook
    if name == "fp16":
        return None, default_hooks.fp16_compress_hook
    if name == "bf16":
        return None, default_hooks.bf16_compress_hook
    if name == "powersgd":
        if device_type == "cpu" and torch.cuda.is_available():  # seen with torch 2.11 on an H100 machine
            raise ValueError(CPU_POWERSGD_ON_GPU_MACHINE)
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                            start_powerSGD_iter=start_iter, use_error_feedback=error_feedback,
                                            warm_start=True, random_seed=seed)
        return state, powerSGD_hook.powerSGD_hook
    raise ValueError(f"unknown comm hook {name!r}; choose one of {', '.join(HOOKS)}")


def plain_steps(name: str, start_iter: int) -> int:
    """Steps a hook sends the uncompressed gradient before compressing (PowerSGD's warm-up)."""
    return start_iter if name == "powersgd" else 0
