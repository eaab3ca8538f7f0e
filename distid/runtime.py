"""Process-group set-up and tear-down shared by every entry point.

Rank, local rank and world size come from torchrun's environment only (RANK, LOCAL_RANK,
WORLD_SIZE, GROUP_RANK, ...); without it, one process. Backend "auto": NCCL when every local rank
can have its own GPU (cuda:LOCAL_RANK), gloo otherwise. Every collective has a bounded timeout.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def default_timeout_s() -> float:
    """The process group's timeout where the caller names none: DISTID_TIMEOUT_S, else 120 s."""
    return float(os.environ.get("DISTID_TIMEOUT_S", "120"))


# torch ≥ 2.13 renames the tensor-in/tensor-out collectives; older releases have only the old names.
all_gather_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def rng_seed(seed: int, purpose: str, *more: int) -> int:
    """The seed of the generator for one purpose of a run: the first 63 bits of
    sha256("seed/purpose/more…"), e.g. rng_seed(0, "data order", 3) for epoch 3's shuffle. Keyed by a
    hash, two purposes or two (seed, epoch) pairs never share a stream the way `seed + epoch` does
    (seed 0's epoch 1 was seed 1's epoch 0) or one seed for two purposes did (LoRA's A = rows of W₀)."""
    key = "/".join(str(x) for x in (seed, purpose, *more)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


_code_version: str | None = None


def code_version() -> str:
    """"distid <version>+<12 hex>": the package version and a sha256 of every source file under distid/
    (.py and .c; path and bytes), computed once per process. Caches key results on it: any code change misses."""
    global _code_version
    if _code_version is None:
        from distid import __version__

        root, h = Path(__file__).resolve().parent, hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".c")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        _code_version = f"distid {__version__}+{h.hexdigest()[:12]}"
    return _code_version


def generator(seed: int, purpose: str, *more: int) -> torch.Generator:
    """A CPU generator seeded by rng_seed(seed, purpose, *more): the same on every rank and machine."""
    return torch.Generator().manual_seed(rng_seed(seed, purpose, *more))


def pick_backend() -> str:
    """'nccl' when every local rank can have its own GPU, 'gloo' otherwise (override: DISTID_BACKEND)."""
    forced = os.environ.get("DISTID_BACKEND")
    if forced:
        return forced
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= local_world else "gloo"


class BackendError(ValueError):
    """A backend this machine cannot run (NCCL without a GPU, an unknown name)."""


def check_backend(backend: str) -> None:
    if backend not in ("gloo", "nccl"):
        raise BackendError(f"unknown backend {backend!r}: use 'auto', 'gloo' or 'nccl'")
    if backend == "nccl" and not torch.cuda.is_available():
        raise BackendError("backend 'nccl' needs a CUDA GPU and none is visible here: use 'gloo' (or 'auto')")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if backend == "nccl" and torch.cuda.device_count() < local_world:
        raise BackendError(f"backend 'nccl' runs one process per GPU: {local_world} processes on this node but "
                           f"{torch.cuda.device_count()} GPU(s); lower --nproc_per_node or use 'gloo'")


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


_shared = False


def share_cores() -> None:
    """With DISTID_THREADS=auto (set by the venv's activate script, with OMP_NUM_THREADS=1 so that
    torchrun stays quiet): torch's intra-op threads = this machine's usable cores ÷ the processes
    torchrun started on it. Once per process: the first call decides (a sweep's split mode calls it
    before its points pose as one-process runs)."""
    global _shared
    if os.environ.get("DISTID_THREADS") == "auto" and not _shared:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    _shared = True


def init(timeout_s: float | None = None, backend: str | None = None) -> tuple[int, int]:
    """Join the process group if launched by torchrun; returns (rank, world_size). timeout_s: every
    collective's bound (None: `default_timeout_s`). backend: 'gloo', 'nccl', or None / 'auto'
    (`pick_backend`).

    A plain `python -m ...` run is world size 1 and creates a one-rank gloo group, so the same
    code path (collectives included) runs everywhere.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    share_cores()
    backend = pick_backend() if backend in (None, "auto") else backend
    check_backend(backend)
    if not launched_by_torchrun():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    kwargs = {}
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        kwargs["device_id"] = torch.device("cuda", local)  # binds the group to this GPU (barrier() asks for it)
    timeout = timedelta(seconds=default_timeout_s() if timeout_s is None else timeout_s)
    dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return dist.get_rank(), dist.get_world_size()


def device() -> torch.device:
    """The device this rank computes on: its local GPU under NCCL, the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_CLOSING_BARRIER: list = []  # the last barrier's handle, released only as the process exits


def shutdown(clean: bool = True) -> None:
    """Barrier, then destroy the group: ranks leave together, so none aborts mid-collective.

    The barrier's handle is kept to the end of the process. gloo's worker thread drops its own
    reference to a finished work a moment after wait() returns; if that last reference went at
    exit, while Python finalizes, the thread would need the GIL to free the work's tensors and the
    process would abort ("terminate called without an active exception", SIGABRT). Held here, the
    work is freed by the main thread. destroy_process_group() does not stop gloo's threads while
    a model (DDP, FSDP) still refers to the group.

    clean=False (after an error on this rank): destroy without the barrier, which could only
    wait for peers that are themselves failing; torchrun then stops the rest of the group. A
    group of one has no peer to wait for: it leaves through the barrier either way.
    """
    if dist.is_initialized():
        try:
            if clean or dist.get_world_size() == 1:
                work = dist.barrier(async_op=True)
                work.wait()
                _CLOSING_BARRIER.append(work)
        finally:
            dist.destroy_process_group()


def reduce_scalar(x: float, op: dist.ReduceOp = dist.ReduceOp.SUM) -> float:
    """op (SUM, MAX, …) of a per-rank number over ranks, on this rank's device."""
    t = torch.tensor([x], dtype=torch.float64, device=device())
    dist.all_reduce(t, op=op)
    return t.item()


def gather_floats(x: float) -> list[float]:
    """[x of rank 0, x of rank 1, …] on every rank."""
    t = torch.tensor([x], dtype=torch.float64, device=device())
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.item() for o in out]


def first_problem(problem: str | None) -> str | None:
    """The first rank's problem (a one-line reason, or None), on every rank: so that a check that
    fails on one rank stops them all, instead of leaving the others waiting in a collective."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return problem
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, problem)
    return next((p for p in everyone if p), None)


def node_count() -> int:
    """Number of torchrun nodes (agents) in the job: distinct GROUP_RANKs over all ranks."""
    mine = int(os.environ.get("GROUP_RANK", "0"))
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 1
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return len(set(everyone))


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo; elsewhere what `platform` says). DISTID_CPU_NAME replaces
    it: the docs test describes its runs as another machine's to check that pages compare alike."""
    import platform

    if os.environ.get("DISTID_CPU_NAME"):
        return os.environ["DISTID_CPU_NAME"]
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict:
    """What a measurement ran on: CPU model, cores, torch threads and version, backend, world size."""
    import platform

    cpu = cpu_name()
    gpu = torch.cuda.get_device_name() if device().type == "cuda" else None
    return dict(cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), gpu=gpu,
                backend=dist.get_backend() if dist.is_initialized() else None,
                world_size=dist.get_world_size() if dist.is_initialized() else 1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only; other ranks stay quiet."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)
