"""PyTorch's DDP gradient-compression hooks, chosen by `ddp.hook`: what each hands to its
all-reduces per step, for T trainable float32 numbers in matrices W_i [n_i, m_i] and vectors.

none: 4·T.  fp16 / bf16: 2·T (the bucket cast, all-reduced, cast back).
powersgd (rank r = `powersgd.rank`): plain all-reduce (4·T) for the first `powersgd.start_iter`
steps, then per bucket three all-reduces: the tensors not worth compressing, P = M·Q [n_i, r] and
Q = Mᵀ·P [m_i, r]: 4·(Σ r'·(n_i + m_i) + Σ |uncompressed|) with r' = min(n_i, m_i, r), a matrix
compressed only where (n + m)·r'·2 < n·m (PyTorch's `_should_compress`).

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
    "ddp.hook = 'powersgd' on CPU tensors (gloo) cannot run on a machine with a CUDA GPU: PyTorch's "
    "powerSGD_hook then synchronises a CUDA device with the CPU tensors' device and fails. Use the GPUs "
    "(backend nccl), or hide them for a CPU run: CUDA_VISIBLE_DEVICES=''")


class Hook:
    """A comm hook for `DistributedDataParallel.register_comm_hook` (state, fn), its bytes per step
    and its state. This one: PyTorch's plain all-reduce."""

    own_state = ""

    def __init__(self, fn=default_hooks.allreduce_hook, itemsize: int = 4, label: str = ""):
        self.state, self.fn, self.itemsize, self.label = None, fn, itemsize, label

    def payload(self, model) -> dict:
        """{op: bytes handed in per step once steady, 'total'}: itemsize·T."""
        t = sum(p.numel() for p in model.parameters() if p.requires_grad) * self.itemsize
        return {"all_reduce": t, "total": t}

    def plain_steps(self) -> int:
        """Steps still to send the uncompressed gradient."""
        return 0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, saved: dict) -> None:
        pass


class PowerSGD(Hook):
    """PyTorch's powerSGD_hook with its state (see the module docstring)."""

    own_state = "PowerSGD state (error feedback, warm start)"

    def __init__(self, rank: int = 1, start_iter: int = 10, error_feedback: bool = True, seed: int = 0,
                 device_type: str = "cpu"):
        if device_type == "cpu" and torch.cuda.is_available():  # seen with torch 2.11 on an H100 machine
            raise ValueError(CPU_POWERSGD_ON_GPU_MACHINE)
        super().__init__(powerSGD_hook.powerSGD_hook, label=f"PowerSGD (rank {rank})")
        self.rank, self.start_iter = rank, start_iter
        self.state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                                 start_powerSGD_iter=start_iter, use_error_feedback=error_feedback,
                                                 warm_start=True,
                                                 random_seed=runtime.rng_seed(seed, "powersgd") % 2**32)

    def payload(self, model, min_compression_rate: float = 2) -> dict:
        low_rank, plain = 0, 0
        for p in model.parameters():
            if not p.requires_grad:
                continue
            n = p.shape[0] if p.dim() else 1
            m = p.numel() // n
            r = min(n, m, self.rank)
            if (n + m) * r * min_compression_rate < n * m:
                low_rank += r * (n + m)
            else:
                plain += p.numel()
        t = (low_rank + plain) * self.itemsize
        return {"all_reduce": t, "total": t}

    def plain_steps(self) -> int:
        return max(self.start_iter - self.state.iter, 0)  # the count survives a resume

    def state_dict(self) -> dict:
        return state_dict(self.state)

    def load_state_dict(self, saved: dict) -> None:
        load_state_dict(self.state, saved)


def choose(name: str, cfg, device_type: str = "cpu") -> Hook:
    """The hook `ddp.hook` names, with [powersgd]'s settings."""
    if name == "none":
        return Hook()
    if name in ("fp16", "bf16"):
        fn = default_hooks.fp16_compress_hook if name == "fp16" else default_hooks.bf16_compress_hook
        return Hook(fn, itemsize=2, label=f"{name} hook")
    if name == "powersgd":
        p = cfg.powersgd
        return PowerSGD(p.rank, p.start_iter, p.error_feedback, cfg.train.seed, device_type)
    raise ValueError(f"unknown comm hook {name!r}; choose one of {', '.join(HOOKS)}")


STATE = ("iter", "error_dict", "p_memory_dict", "q_memory_dict", "total_numel_before_compression",
         "total_numel_after_compression", "next_stats_report")  # PowerSGDState's internal fields


def state_dict(state) -> dict:
    """A PowerSGDState as tensors and numbers."""
    saved = {k: getattr(state, k) for k in STATE}
    for k in ("error_dict", "p_memory_dict", "q_memory_dict"):
        saved[k] = {i: t.detach().cpu().clone() for i, t in saved[k].items()}
    _, keys, pos, has_gauss, gauss = state.rng.get_state()  # ("MT19937", key [624], pos, has_gauss, gauss)
    saved["rng"] = dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=pos, has_gauss=has_gauss, gauss=gauss)
    return saved


def load_state_dict(state, saved: dict) -> None:
    """Put `saved` (from state_dict, on the same rank) back into a PowerSGDState in place."""
    device = runtime.device()
    for k in STATE:
        value = saved[k]
        if k.endswith("_dict"):
            value = {i: t.to(device) for i, t in value.items()}
        setattr(state, k, value)
    rng = saved["rng"]
    state.rng.set_state(("MT19937", rng["keys"].numpy().astype(np.uint32), rng["pos"], rng["has_gauss"], rng["gauss"]))


def overrides(name: str, rank: int | None = None) -> tuple[str, ...]:
    """The `--set` lines that run DDP with the hook `name` (PowerSGD at `rank`), for experiments."""
    return ("dist.strategy=ddp", f"ddp.hook={name}") + ((f"powersgd.rank={rank}",) if rank else ())


def describe(cfg) -> str:
    """PowerSGD's settings in a sentence, for a report."""
    p = cfg.powersgd
    return (f"PowerSGD: PyTorch's `powerSGD_hook`, plain all-reduce for the first {p.start_iter} steps, error "
            f"feedback {'on' if p.error_feedback else 'off'}, warm start.")
