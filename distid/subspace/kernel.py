"""Fastfood's two block loops on CPU as a small C kernel, built on first use with the machine's C
compiler and loaded with ctypes; None when it cannot be (no compiler, not Linux/macOS, DISTID_KERNEL=torch),
and fastfood.py then runs the same math in torch.

Per block j of length L (a power of two), with G_j int8 [L], s_j its float scale, u the shared [L]:
    forward:  out_j = a_j + s_j · H (G_j ⊙ u)            (a = θ₀'s slice, or zeros)
    backward: acc  += Σ_j s_j · G_j ⊙ (H g_j)            (acc [L])
Each block's work stays in L1/L2: one read of G_j (1 byte per entry), one of a_j / g_j, one write of
out_j. The library is cached under $XDG_CACHE_HOME/distid (default ~/.cache/distid), named by the
hash of this source and the compiler flags, so a changed kernel is rebuilt.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* In-place unnormalised Walsh–Hadamard transform of x[0..L), L a power of two. Stages of span 1, 2, 4
   are done together on groups of 8 (an 8-point transform), the rest as strided radix-4 butterflies
   (two stages per pass), which the compiler vectorises. */
static void fwht(float *restrict x, int64_t L) {
    int64_t h = 1;
    if (L >= 8) {
        for (int64_t i = 0; i < L; i += 8) {
            float *v = x + i;
            float a0 = v[0] + v[1], a1 = v[0] - v[1], a2 = v[2] + v[3], a3 = v[2] - v[3];
            float a4 = v[4] + v[5], a5 = v[4] - v[5], a6 = v[6] + v[7], a7 = v[6] - v[7];
            float b0 = a0 + a2, b1 = a1 + a3, b2 = a0 - a2, b3 = a1 - a3;
            float b4 = a4 + a6, b5 = a5 + a7, b6 = a4 - a6, b7 = a5 - a7;
            v[0] = b0 + b4; v[1] = b1 + b5; v[2] = b2 + b6; v[3] = b3 + b7;
            v[4] = b0 - b4; v[5] = b1 - b5; v[6] = b2 - b6; v[7] = b3 - b7;
        }
        h = 8;
    }
    for (; 4 * h <= L; h <<= 2)  /* two stages per pass: spans h and 2h together */
        for (int64_t i = 0; i < L; i += 4 * h) {
            float *restrict p = x + i, *restrict q = p + h, *restrict r = q + h, *restrict t = r + h;
            for (int64_t j = 0; j < h; j++) {
                float a = p[j] + q[j], b = p[j] - q[j], c = r[j] + t[j], e = r[j] - t[j];
                p[j] = a + c;
                q[j] = b + e;
                r[j] = a - c;
                t[j] = b - e;
            }
        }
    for (; h < L; h <<= 1)
        for (int64_t i = 0; i < L; i += 2 * h) {
            float *restrict p = x + i, *restrict q = x + i + h;
            for (int64_t j = 0; j < h; j++) {
                float a = p[j], b = q[j];
                p[j] = a + b;
                q[j] = a - b;
            }
        }
}

/* out[j*L + m] = add[j*L + m] + s[j] * (H (G_j ⊙ u))[m], blocks j in [0, nb); add may be NULL. */
void ff_forward(const int8_t *G, const float *s, const float *u, const float *add, float *out,
                int64_t nb, int64_t L) {
    for (int64_t j = 0; j < nb; j++) {
        float *o = out + j * L;
        const int8_t *g = G + j * L;
        for (int64_t m = 0; m < L; m++) o[m] = (float)g[m] * u[m];
        fwht(o, L);
        const float sj = s[j];
        if (add) {
            const float *a = add + j * L;
            for (int64_t m = 0; m < L; m++) o[m] = a[m] + sj * o[m];
        } else {
            for (int64_t m = 0; m < L; m++) o[m] *= sj;
        }
    }
}

/* acc[m] += Σ_j s[j] * G_j[m] * (H g_j)[m]; work is an [L] scratch buffer. */
void ff_backward(const int8_t *G, const float *s, const float *grad, float *acc, float *work,
                 int64_t nb, int64_t L) {
    for (int64_t j = 0; j < nb; j++) {
        memcpy(work, grad + j * L, (size_t)L * sizeof(float));
        fwht(work, L);
        const int8_t *g = G + j * L;
        const float sj = s[j];
        for (int64_t m = 0; m < L; m++) acc[m] += sj * (float)g[m] * work[m];
    }
}
"""

FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c99"]


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distid"


def _build(cc: str) -> Path:
    """Compile SOURCE once per (source, flags); concurrent ranks race safely (write, then rename)."""
    tag = hashlib.sha256((SOURCE + " ".join(FLAGS) + cc).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"fastfood-{tag}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src, out = Path(tmp) / "fastfood.c", Path(tmp) / "fastfood.so"
        src.write_text(SOURCE)
        subprocess.run([cc, *FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
        os.replace(out, lib)
    return lib


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (then the torch path runs). DISTID_KERNEL=torch forces None."""
    if os.environ.get("DISTID_KERNEL", "c") == "torch" or sys.platform not in ("linux", "darwin"):
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, subprocess.SubprocessError):
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.ff_forward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64]
    lib.ff_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64]
    lib.ff_forward.restype = lib.ff_backward.restype = None
    return lib


def usable(*tensors: torch.Tensor) -> bool:
    """The C path takes contiguous float32 / int8 CPU tensors only."""
    return library() is not None and all(t.device.type == "cpu" and t.is_contiguous() for t in tensors) \
        and all(t.dtype in (torch.float32, torch.int8) for t in tensors)


def _ptr(t: torch.Tensor | None, offset: int = 0) -> int | None:
    return None if t is None else t.data_ptr() + offset * t.element_size()


def _spans(nb: int) -> list[tuple[int, int]]:
    """Split nb blocks into one contiguous span per thread (torch.get_num_threads())."""
    k = max(1, min(torch.get_num_threads(), nb))
    cuts = [nb * i // k for i in range(k + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


@functools.lru_cache(maxsize=1)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n, thread_name_prefix="distid-fastfood")


def _run(calls: list) -> None:
    if len(calls) == 1:
        calls[0]()
        return
    for f in [_pool(len(calls)).submit(c) for c in calls]:
        f.result()


def forward(G: torch.Tensor, s: torch.Tensor, u: torch.Tensor, add: torch.Tensor | None,
            out: torch.Tensor) -> None:
    """out [nb·L] = add + blockwise s_j·H(G_j ⊙ u); G [nb, L] int8, s [nb], u [L], add [nb·L] or None."""
    lib, (nb, L) = library(), G.shape
    _run([lambda a=a, b=b: lib.ff_forward(_ptr(G, a * L), _ptr(s, a), _ptr(u), _ptr(add, a * L),
                                          _ptr(out, a * L), b - a, L) for a, b in _spans(nb)])


def backward(G: torch.Tensor, s: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Σ_j s_j·G_j ⊙ H(grad_j) → [L]; grad [nb·L]."""
    lib, (nb, L) = library(), G.shape
    spans = _spans(nb)
    acc = torch.zeros(len(spans), L)
    work = torch.empty(len(spans), L)
    _run([lambda i=i, a=a, b=b: lib.ff_backward(_ptr(G, a * L), _ptr(s, a), _ptr(grad, a * L), _ptr(acc[i]),
                                                _ptr(work[i]), b - a, L) for i, (a, b) in enumerate(spans)])
    return acc.sum(0)
