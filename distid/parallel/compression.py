"""PyTorch's DDP gradient-compression hooks, chosen by name (`dist.comm_hook`): what each hands to
its all-reduces per step, for T trainable float32 numbers in matrices W_i [n_i, m_i] and vectors.

none: 4·T.  fp16 / bf16: 2·T (the bucket cast, all-reduced, cast back).
powersgd (rank r): plain all-reduce (4·T) for the first `start_iter` steps, then per bucket three
all-reduces: the tensors not worth compressing, P = M·Q [n_i, r] and Q = Mᵀ·P [m_i, r] — 4·r·Σ(n_i + m_i)
plus 4·|uncompressed| bytes (see `formulas.powersgd_bytes`).

PowerSGD's state decides the trajectory (its step count, the error-feedback memory, the warm-start
P and Q, its RNG), and it differs on every rank: `state_dict` / `load_state_dict` carry it through a
checkpoint as plain tensors (what `torch.load(weights_only=True)` reads).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

from distid import runtime

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
                                            warm_start=True,
                                            random_seed=runtime.rng_seed(seed, "powersgd") % 2**32)
        return state, powerSGD_hook.powerSGD_hook
    raise ValueError(f"unknown comm hook {name!r}; choose one of {', '.join(HOOKS)}")


STATE = ("iter", "error_dict", "p_memory_dict", "q_memory_dict", "total_numel_before_compression",
         "total_numel_after_compression", "next_stats_report")  # PowerSGDState's internal fields


def state_dict(state) -> dict | None:
    """This rank's hook state as tensors and numbers ({} for a stateless hook, None without a hook)."""
    if not isinstance(state, powerSGD_hook.PowerSGDState):
        return None if state is None else {}
    saved = {k: getattr(state, k) for k in STATE}
    for k in ("error_dict", "p_memory_dict", "q_memory_dict"):
        saved[k] = {i: t.detach().cpu().clone() for i, t in saved[k].items()}
    _, keys, pos, has_gauss, gauss = state.rng.get_state()  # ("MT19937", key [624], pos, has_gauss, gauss)
    saved["rng"] = dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=pos, has_gauss=has_gauss, gauss=gauss)
    return saved


def load_state_dict(state, saved: dict) -> None:
    """Put `saved` (from state_dict, on the same rank) back into a PowerSGDState in place."""
    if not isinstance(state, powerSGD_hook.PowerSGDState):
        return
    device = runtime.device()
    for k in STATE:
        value = saved[k]
        if k.endswith("_dict"):
            value = {i: t.to(device) for i, t in value.items()}
        setattr(state, k, value)
    rng = saved["rng"]
    state.rng.set_state(("MT19937", rng["keys"].numpy().astype(np.uint32), rng["pos"], rng["has_gauss"], rng["gauss"]))


def plain_steps(name: str, start_iter: int) -> int:
    """Steps a hook sends the uncompressed gradient before compressing (PowerSGD's warm-up)."""
    return start_iter if name == "powersgd" else 0
