"""Fastfood's two block loops on CPU as a small C kernel, built on first use with the machine's C
compiler and loaded with ctypes; None when it cannot be (no compiler, not Linux/macOS, DISTID_KERNEL=torch),
and fastfood.py then runs the same math in torch.

Per block j of length L (a power of two), with G_j int8 [L], s_j its float scale, u the shared [L]:
    forward:  out_j = a_j + s_j · H (G_j ⊙ u)            (a = θ₀'s slice, or none)
    backward: acc  += Σ_j s_j · G_j ⊙ (H g_j)            (acc [L])
for any range of rows (partial blocks at its ends included), split over torch.get_num_threads()
threads at block boundaries; and the shared half u = Π H B d̃ and its adjoint.
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

/* H16[k] = row k of the 16-point Walsh–Hadamard matrix, (-1)^popcount(k & c), as a 16-float vector
   (GCC/Clang vector extension: one AVX-512 register, two AVX ones, four SSE ones). */
typedef float v16 __attribute__((vector_size(64)));
static v16 H16[16];
static int h16_ready = 0;

static void h16_init(void) {
    for (int k = 0; k < 16; k++)
        for (int c = 0; c < 16; c++) H16[k][c] = (__builtin_popcount(k & c) & 1) ? -1.0f : 1.0f;
    h16_ready = 1;
}

/* dst = (I ⊗ H16) src on rows of 16 (src may equal dst): per row, 16 broadcast-multiply-adds of a
   16-wide vector instead of four butterfly stages of span 1–8, which do not vectorise. */
static void h16_rows(const float *src, float *dst, int64_t L) {
    for (int64_t r = 0; r < L; r += 16) {  /* four independent sums: no chain of 16 dependent adds */
        const float *x = src + r;
        v16 a0 = x[0] * H16[0], a1 = x[1] * H16[1], a2 = x[2] * H16[2], a3 = x[3] * H16[3];
        for (int k = 4; k < 16; k += 4) {
            a0 += x[k] * H16[k];
            a1 += x[k + 1] * H16[k + 1];
            a2 += x[k + 2] * H16[k + 2];
            a3 += x[k + 3] * H16[k + 3];
        }
        v16 acc = (a0 + a1) + (a2 + a3);
        memcpy(dst + r, &acc, sizeof acc);
    }
}

/* Unnormalised Walsh–Hadamard transform of src[0..L) into x (src may equal x), L a power of two.
   L ≥ 16: the 16-point transform on each row of 16, then strided radix-4 butterflies (two stages per
   pass) and at most one radix-2 stage, which the compiler vectorises. */
static void fwht(const float *src, float *restrict x, int64_t L) {
    int64_t h = 1;
    if (L >= 16) {
        h16_rows(src, x, L);
        h = 16;
    } else if (src != x) {
        memcpy(x, src, (size_t)L * sizeof(float));
    }
    for (; 4 * h <= L; h <<= 2)
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

/* Rows [lo, hi) of add + P·d, blocks j = lo/L … (hi−1)/L: out[r − lo] = add[r − lo] + s_j·(H(G_j ⊙ u))[r − jL].
   A block wholly inside the range is transformed in place in out; a partial one in work ([L]). */
void ff_rows(const int8_t *G, const float *s, const float *u, const float *add, float *out,
             int64_t lo, int64_t hi, int64_t L, float *work) {
    if (!h16_ready) h16_init();
    for (int64_t j = lo / L; j * L < hi; j++) {
        const int64_t a = j * L > lo ? j * L : lo, b = (j + 1) * L < hi ? (j + 1) * L : hi, n = b - a;
        const int8_t *g = G + j * L;
        float *o = (n == L) ? out + (a - lo) : work;
        for (int64_t m = 0; m < L; m++) o[m] = (float)g[m] * u[m];
        fwht(o, o, L);
        const float sj = s[j], *src = o + (a - j * L);
        float *dst = out + (a - lo);
        if (add) {
            const float *ad = add + (a - lo);
            for (int64_t m = 0; m < n; m++) dst[m] = ad[m] + sj * src[m];
        } else {
            for (int64_t m = 0; m < n; m++) dst[m] = sj * src[m];
        }
    }
}

/* acc[m] += Σ_j s_j·G_j[m]·(H g̃_j)[m] over the blocks overlapping rows [lo, hi); grad holds those rows,
   g̃_j is block j of it, zero outside the range. */
void ff_rows_adjoint(const int8_t *G, const float *s, const float *grad, float *acc,
                     int64_t lo, int64_t hi, int64_t L, float *work) {
    if (!h16_ready) h16_init();
    for (int64_t j = lo / L; j * L < hi; j++) {
        const int64_t a = j * L > lo ? j * L : lo, b = (j + 1) * L < hi ? (j + 1) * L : hi, n = b - a;
        if (n == L) {
            fwht(grad + (a - lo), work, L);
        } else {
            memset(work, 0, (size_t)L * sizeof(float));
            memcpy(work + (a - j * L), grad + (a - lo), (size_t)n * sizeof(float));
            fwht(work, work, L);
        }
        const int8_t *g = G + j * L;
        const float sj = s[j];
        for (int64_t m = 0; m < L; m++) acc[m] += sj * (float)g[m] * work[m];
    }
}

/* The shared half: u = Π H B d̃ (d̃ = d[0..n) zero-padded to L; (Π y)_i = y_perm[i]). */
void ff_shared(const float *d, int64_t n, const int8_t *B, const int32_t *perm, float *u, float *work, int64_t L) {
    if (!h16_ready) h16_init();
    for (int64_t i = 0; i < L; i++) work[i] = i < n ? d[i] * (float)B[i] : 0.0f;
    fwht(work, work, L);
    for (int64_t i = 0; i < L; i++) u[i] = work[perm[i]];
}

/* Its adjoint: d_out[0..n) = (B ⊙ H Πᵀ acc)[0..n). */
void ff_shared_adjoint(const float *acc, const int8_t *B, const int32_t *perm, float *d_out, int64_t n,
                       float *work, int64_t L) {
    if (!h16_ready) h16_init();
    for (int64_t i = 0; i < L; i++) work[perm[i]] = acc[i];
    fwht(work, work, L);
    for (int64_t i = 0; i < n; i++) d_out[i] = work[i] * (float)B[i];
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
    lib.ff_rows.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, ptr]
    lib.ff_rows_adjoint.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, ptr]
    lib.ff_shared.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64]
    lib.ff_shared_adjoint.argtypes = [ptr, ptr, ptr, ptr, i64, ptr, i64]
    for f in (lib.ff_rows, lib.ff_rows_adjoint, lib.ff_shared, lib.ff_shared_adjoint):
        f.restype = None
    return lib


def usable(p, *tensors: torch.Tensor) -> bool:
    """The C path takes a float32 projection on the CPU and contiguous float32 CPU tensors."""
    return library() is not None and p.s.dtype == torch.float32 and p.q.device.type == "cpu" and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def _ptr(t: torch.Tensor | None, offset: int = 0) -> int | None:
    return None if t is None else t.data_ptr() + offset * t.element_size()


ROWS_PER_THREAD = 1 << 18  # below this a second thread costs more to hand work to than it saves (measured)


def _spans(lo: int, hi: int, L: int) -> list[tuple[int, int]]:
    """Rows [lo, hi) in one span per thread (up to torch.get_num_threads(), one per ROWS_PER_THREAD rows),
    cut at block boundaries."""
    k = max(1, min(torch.get_num_threads(), (hi - lo) // ROWS_PER_THREAD, -(-(hi - lo) // L)))
    cuts = [lo] + [min(hi, max(lo, (lo + (hi - lo) * i // k) // L * L)) for i in range(1, k)] + [hi]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


@functools.lru_cache(maxsize=1)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n, thread_name_prefix="distid-fastfood")


def _run(calls: list) -> None:
    """Each call on its own thread (ctypes releases the GIL), the first on this one."""
    futures = [_pool(len(calls)).submit(c) for c in calls[1:]] if len(calls) > 1 else []
    calls[0]()
    for f in futures:
        f.result()


def matvec(p, d: torch.Tensor, lo: int, hi: int, add: torch.Tensor | None) -> torch.Tensor:
    """add + (P·d)[lo:hi] for a FastfoodProjection p → [hi − lo]."""
    lib, L = library(), p.L
    spans = _spans(lo, hi, L)
    work = torch.empty(len(spans) + 1, L)
    u, out = work[-1], torch.empty(hi - lo)
    lib.ff_shared(_ptr(d), d.numel(), _ptr(p.B), _ptr(p.perm), _ptr(u), _ptr(work[0]), L)
    _run([lambda i=i, a=a, b=b: lib.ff_rows(_ptr(p.q), _ptr(p.s), _ptr(u), _ptr(add, a - lo), _ptr(out, a - lo),
                                            a, b, L, _ptr(work[i])) for i, (a, b) in enumerate(spans)])
    return out


def rmatvec(p, g: torch.Tensor, lo: int) -> torch.Tensor:
    """P[lo:lo + len(g)]ᵀ·g for a FastfoodProjection p → [d]."""
    lib, L, hi = library(), p.L, lo + g.numel()
    spans = _spans(lo, hi, L)
    acc, work = torch.zeros(len(spans), L), torch.empty(len(spans), L)
    _run([lambda i=i, a=a, b=b: lib.ff_rows_adjoint(_ptr(p.q), _ptr(p.s), _ptr(g, a - lo), _ptr(acc[i]),
                                                    a, b, L, _ptr(work[i])) for i, (a, b) in enumerate(spans)])
    total = acc[0] if len(spans) == 1 else acc.sum(0)
    out = torch.empty(p.d)
    lib.ff_shared_adjoint(_ptr(total), _ptr(p.B), _ptr(p.perm), _ptr(out), p.d, _ptr(work[0]), L)
    return out
