"""Fastfood's block loops on CPU as a small C kernel (kernel.c, beside this file), built on first use
with the machine's C compiler and loaded with ctypes; where it cannot be built, fastfood.py runs the
same math in torch.

Per block j of length L (a power of two), with G_j int8 [L], s_j its float scale, σ_j its index
scramble and v the shared [L]:
    forward:  out_j = θ₀_j + s_j · H (G_j ⊙ v[σ_j])      (θ₀_j: θ₀'s slice, or none)
    backward: acc += (s_j · G_j ⊙ (H g_j))[σ_j⁻¹]         (acc [L]; a gather, like the forward's)
for any range of rows (partial blocks at its ends included), split over torch.get_num_threads()
threads at block boundaries; and the shared half v = Π H B d̃ and its adjoint.
Each block's work stays in cache (L1 up to L = 4,096 floats on most CPUs): one read of G_j (1 byte
per entry), one of θ₀_j or g_j, one write of out_j. `library()` is None when the kernel cannot be
built (no compiler, not Linux/macOS, DISTID_KERNEL=torch). It is cached under $XDG_CACHE_HOME/distid
(default ~/.cache/distid), named by the hash of kernel.c's text, the flags, the compiler and the CPU, so
a changed kernel is rebuilt and a shared cache never hands a build to a CPU it was not made for.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import torch

FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c99"]


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distid"


def _cpu() -> str:
    """What -march=native compiles for: the CPU's model and flags (a shared cache across CPUs must
    not hand an AVX-512 build to an AVX2 machine)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in info if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        import platform

        return platform.processor() + platform.machine()


def source() -> str:
    """The kernel's C source: the text of kernel.c."""
    return resources.files(__package__).joinpath("kernel.c").read_text(encoding="utf-8")


def _build(cc: list[str]) -> Path:
    """Compile source() once per (source, flags, compiler, CPU); concurrent ranks race safely (write, then rename)."""
    text = source()
    tag = hashlib.sha256((text + " ".join(FLAGS + cc) + _cpu()).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"fastfood-{tag}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src, out = Path(tmp) / "fastfood.c", Path(tmp) / "fastfood.so"
        src.write_text(text, encoding="utf-8")
        subprocess.run([*cc, *FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
        os.replace(out, lib)
    return lib


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (then the torch path runs). DISTID_KERNEL=torch forces None."""
    if os.environ.get("DISTID_KERNEL", "c") == "torch" or sys.platform not in ("linux", "darwin"):
        return None
    cc = shlex.split(os.environ.get("CC", "")) or [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    if not cc:
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, RuntimeError, subprocess.SubprocessError):  # RuntimeError: no home folder
        return None
    ptr, i64, u32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32
    lib.ff_rows.argtypes = [ptr, ptr, u32, ptr, ptr, ptr, i64, i64, i64, ptr, ptr]
    lib.ff_rows_adjoint.argtypes = [ptr, ptr, u32, ptr, ptr, i64, i64, i64, ptr, ptr]
    lib.ff_shared.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64]
    lib.ff_shared_adjoint.argtypes = [ptr, ptr, ptr, ptr, i64, ptr, i64]
    for f in (lib.ff_rows, lib.ff_rows_adjoint, lib.ff_shared, lib.ff_shared_adjoint):
        f.restype = None
    return lib


def usable(p, *tensors: torch.Tensor) -> bool:
    """The C path takes a float32 projection on the CPU and contiguous float32 CPU tensors."""
    return p.s.dtype == torch.float32 and p.q.device.type == "cpu" and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors) \
        and library() is not None


def _ptr(t: torch.Tensor | None, offset: int = 0) -> int | None:
    return None if t is None else t.data_ptr() + offset * t.element_size()


ROWS_PER_THREAD = 1 << 18  # below this a second thread costs more to hand work to than it saves (measured)


def _spans(lo: int, hi: int, L: int) -> list[tuple[int, int]]:
    """Rows [lo, hi) in one span per thread (up to torch.get_num_threads(), one per ROWS_PER_THREAD rows),
    cut at block boundaries."""
    k = max(1, min(torch.get_num_threads(), (hi - lo) // ROWS_PER_THREAD, -(-(hi - lo) // L)))
    cuts = [lo] + [min(hi, max(lo, (lo + (hi - lo) * i // k) // L * L)) for i in range(1, k)] + [hi]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """One pool for the process (threads start as needed); a forked child starts its own."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="distid-fastfood")
    return _POOL


def _forget_pool() -> None:
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def _run(calls: list) -> None:
    """Each call on its own thread (ctypes releases the GIL), the first on this one."""
    futures = [_pool().submit(c) for c in calls[1:]]
    calls[0]()
    for f in futures:
        f.result()


def matvec(p, d: torch.Tensor, lo: int, hi: int, add: torch.Tensor | None) -> torch.Tensor:
    """add + (P·d)[lo:hi] for a FastfoodProjection p → [hi − lo]."""
    lib, L = library(), p.L
    spans = _spans(lo, hi, L)
    work = torch.empty(len(spans) + 1, L, dtype=torch.float32)
    idx = torch.empty(len(spans), L, dtype=torch.int32)
    u, out = work[-1], torch.empty(hi - lo, dtype=torch.float32)
    lib.ff_shared(_ptr(d), d.numel(), _ptr(p.B), _ptr(p.perm), _ptr(u), _ptr(work[0]), L)
    _run([lambda i=i, a=a, b=b: lib.ff_rows(_ptr(p.q), _ptr(p.s), p.key, _ptr(u), _ptr(add, a - lo),
                                            _ptr(out, a - lo), a, b, L, _ptr(work[i]), _ptr(idx[i]))
          for i, (a, b) in enumerate(spans)])
    return out


def rmatvec(p, g: torch.Tensor, lo: int) -> torch.Tensor:
    """P[lo:lo + len(g)]ᵀ·g for a FastfoodProjection p → [d]."""
    lib, L, hi = library(), p.L, lo + g.numel()
    spans = _spans(lo, hi, L)
    acc, work = torch.zeros(len(spans), L, dtype=torch.float32), torch.empty(len(spans), L, dtype=torch.float32)
    idx = torch.empty(len(spans), L, dtype=torch.int32)
    _run([lambda i=i, a=a, b=b: lib.ff_rows_adjoint(_ptr(p.q), _ptr(p.s), p.key, _ptr(g, a - lo), _ptr(acc[i]),
                                                    a, b, L, _ptr(work[i]), _ptr(idx[i]))
          for i, (a, b) in enumerate(spans)])
    total = acc[0] if len(spans) == 1 else acc.sum(0)
    out = torch.empty(p.d, dtype=torch.float32)
    lib.ff_shared_adjoint(_ptr(total), _ptr(p.B), _ptr(p.perm), _ptr(out), p.d, _ptr(work[0]), L)
    return out
