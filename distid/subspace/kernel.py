"""Fastfood's block loops on CPU as a small C kernel, built on first use with the machine's C
compiler and loaded with ctypes; where it cannot be built, fastfood.py runs the same math in torch.

Per block j of length L (a power of two), with G_j int8 [L], s_j its float scale, σ_j its index
scramble and v the shared [L]:
    forward:  out_j = θ₀_j + s_j · H (G_j ⊙ v[σ_j])      (θ₀_j: θ₀'s slice, or none)
    backward: acc += (s_j · G_j ⊙ (H g_j))[σ_j⁻¹]         (acc [L]; a gather, like the forward's)
for any range of rows (partial blocks at its ends included), split over torch.get_num_threads()
threads at block boundaries; and the shared half v = Π H B d̃ and its adjoint.
Each block's work stays in cache (L1 up to L = 4,096 floats on most CPUs): one read of G_j (1 byte
per entry), one of θ₀_j or g_j, one write of out_j. `library()` is None when the kernel cannot be
built (no compiler, not Linux/macOS, DISTID_KERNEL=torch). It is cached under $XDG_CACHE_HOME/distid
(default ~/.cache/distid), named by the hash of this source, the flags, the compiler and the CPU, so
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
from pathlib import Path

import torch

SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* H16[k] = row k of the 16-point Walsh–Hadamard matrix, (-1)^popcount(k & c), as a 16-float vector
   (GCC/Clang vector extension: one AVX-512 register, two AVX ones, four SSE ones). */
typedef float v16 __attribute__((vector_size(64)));
static v16 H16[16];

__attribute__((constructor)) static void h16_init(void) {  /* once, when the library is loaded */
    for (int k = 0; k < 16; k++)
        for (int c = 0; c < 16; c++) H16[k][c] = (__builtin_popcount(k & c) & 1) ? -1.0f : 1.0f;
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
static void fwht(const float *src, float *x, int64_t L) {
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

/* lowbias32 (C. Wellons): the 32-bit hash fastfood.py's hash32 mirrors. */
static inline uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    return x ^ (x >> 16);
}

/* Block j's scramble σ_j(i) = (a_j·(i ⊕ x_j) + c_j) mod L, hashed from (key, j); a_j odd. idx[i] =
   σ_j(i), or (inverse) idx[k] = σ_j⁻¹(k) = (a_j⁻¹·(k − c_j) mod L) ⊕ x_j, in 32-bit arithmetic (L
   divides 2³², so wrapping is harmless): loops the compiler vectorises. */
static void sigma_all(int32_t *idx, int64_t L, uint32_t key, int64_t j, int inverse) {
    const uint32_t mask = (uint32_t)(L - 1), j3 = (uint32_t)(3 * j);
    const uint32_t a = ((hash32(hash32(j3) ^ key) & mask) | 1u) & mask;
    const uint32_t x = hash32(hash32(j3 + 1u) ^ key) & mask, c = hash32(hash32(j3 + 2u) ^ key) & mask;
    if (!inverse) {
        for (int64_t i = 0; i < L; i++) idx[i] = (int32_t)((a * ((uint32_t)i ^ x) + c) & mask);
        return;
    }
    uint32_t ainv = a;  /* Newton: a·a ≡ 1 mod 8, each step doubles the correct low bits (3 → 48) */
    for (int t = 0; t < 5; t++) ainv *= 2u - a * ainv;
    for (int64_t k = 0; k < L; k++) idx[k] = (int32_t)(((ainv * ((uint32_t)k - c)) & mask) ^ x);
}

/* o[m] = g[m]·v[idx[m]] and acc[k] += w[idx[k]]: gathers from an [L] array in L1. GCC 12 does not
   vectorise them itself on every CPU, so AVX-512 / AVX2 gathers are written out where present. */
#if defined(__AVX512F__)
#include <immintrin.h>
static void gather_mul(float *o, const int8_t *g, const float *v, const int32_t *idx, int64_t L) {
    int64_t m = 0;
    for (; m + 16 <= L; m += 16) {
        __m512 vv = _mm512_i32gather_ps(_mm512_loadu_si512((const void *)(idx + m)), v, 4);
        __m512 gg = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(g + m))));
        _mm512_storeu_ps(o + m, _mm512_mul_ps(gg, vv));
    }
    for (; m < L; m++) o[m] = (float)g[m] * v[idx[m]];
}
static void gather_add(float *acc, const float *w, const int32_t *idx, int64_t L) {
    int64_t k = 0;
    for (; k + 16 <= L; k += 16) {
        __m512 ww = _mm512_i32gather_ps(_mm512_loadu_si512((const void *)(idx + k)), w, 4);
        _mm512_storeu_ps(acc + k, _mm512_add_ps(_mm512_loadu_ps(acc + k), ww));
    }
    for (; k < L; k++) acc[k] += w[idx[k]];
}
#elif defined(__AVX2__)
#include <immintrin.h>
static void gather_mul(float *o, const int8_t *g, const float *v, const int32_t *idx, int64_t L) {
    int64_t m = 0;
    for (; m + 8 <= L; m += 8) {
        __m256 vv = _mm256_i32gather_ps(v, _mm256_loadu_si256((const __m256i *)(idx + m)), 4);
        __m256 gg = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(g + m))));
        _mm256_storeu_ps(o + m, _mm256_mul_ps(gg, vv));
    }
    for (; m < L; m++) o[m] = (float)g[m] * v[idx[m]];
}
static void gather_add(float *acc, const float *w, const int32_t *idx, int64_t L) {
    int64_t k = 0;
    for (; k + 8 <= L; k += 8) {
        __m256 ww = _mm256_i32gather_ps(w, _mm256_loadu_si256((const __m256i *)(idx + k)), 4);
        _mm256_storeu_ps(acc + k, _mm256_add_ps(_mm256_loadu_ps(acc + k), ww));
    }
    for (; k < L; k++) acc[k] += w[idx[k]];
}
#else
static void gather_mul(float *o, const int8_t *g, const float *v, const int32_t *idx, int64_t L) {
    for (int64_t m = 0; m < L; m++) o[m] = (float)g[m] * v[idx[m]];
}
static void gather_add(float *acc, const float *w, const int32_t *idx, int64_t L) {
    for (int64_t k = 0; k < L; k++) acc[k] += w[idx[k]];
}
#endif

/* Rows [lo, hi) of add + P·d, blocks j = lo/L … (hi−1)/L:
   out[r − lo] = add[r − lo] + s_j·(H(G_j ⊙ v[σ_j]))[r − jL], v = Π H B d̃.
   A block wholly inside the range is transformed in place in out; a partial one in work ([L]);
   idx is an [L] scratch for the block's σ_j. */
void ff_rows(const int8_t *G, const float *s, uint32_t key, const float *v, const float *add, float *out, int64_t lo, int64_t hi, int64_t L, float *work,
             int32_t *restrict idx) {
    for (int64_t j = lo / L; j * L < hi; j++) {
        const int64_t a = j * L > lo ? j * L : lo, b = (j + 1) * L < hi ? (j + 1) * L : hi, n = b - a;
        const int8_t *g = G + j * L;
        float *o = (n == L) ? out + (a - lo) : work;
        sigma_all(idx, L, key, j, 0);
        gather_mul(o, g, v, idx, L);
        fwht(o, o, L);
        const float sj = s[j], *src = o + (a - j * L);
        float *dst = out + (a - lo);
        if (add) {
            const float *pa = add + (a - lo);
            for (int64_t m = 0; m < n; m++) dst[m] = pa[m] + sj * src[m];
        } else {
            for (int64_t m = 0; m < n; m++) dst[m] = sj * src[m];
        }
    }
}

/* acc[k] += t_j[σ_j⁻¹(k)], t_j = s_j·G_j ⊙ (H g̃_j), over the blocks overlapping rows [lo, hi) — the
   scatter acc[σ_j(m)] += t_j[m] written as a gather; grad holds rows [lo, hi), g̃_j is block j of
   it, zero outside the range. */
void ff_rows_adjoint(const int8_t *G, const float *s, uint32_t key, const float *grad, float *acc, int64_t lo, int64_t hi, int64_t L, float *work,
                     int32_t *restrict idx) {
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
        for (int64_t m = 0; m < L; m++) work[m] *= sj * (float)g[m];
        sigma_all(idx, L, key, j, 1);
        gather_add(acc, work, idx, L);
    }
}

/* The shared half: v = Π H B d̃ (d̃ = d[0..n) zero-padded to L; (Π y)_i = y_perm[i]). */
void ff_shared(const float *d, int64_t n, const int8_t *B, const int32_t *perm, float *u, float *work, int64_t L) {
    for (int64_t i = 0; i < L; i++) work[i] = i < n ? d[i] * (float)B[i] : 0.0f;
    fwht(work, work, L);
    for (int64_t i = 0; i < L; i++) u[i] = work[perm[i]];
}

/* Its adjoint: d_out[0..n) = (B ⊙ H Πᵀ acc)[0..n). */
void ff_shared_adjoint(const float *acc, const int8_t *B, const int32_t *perm, float *d_out, int64_t n,
                       float *work, int64_t L) {
    for (int64_t i = 0; i < L; i++) work[perm[i]] = acc[i];
    fwht(work, work, L);
    for (int64_t i = 0; i < n; i++) d_out[i] = work[i] * (float)B[i];
}
"""

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


def _build(cc: list[str]) -> Path:
    """Compile SOURCE once per (source, flags, compiler, CPU); concurrent ranks race safely (write, then rename)."""
    tag = hashlib.sha256((SOURCE + " ".join(FLAGS + cc) + _cpu()).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"fastfood-{tag}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src, out = Path(tmp) / "fastfood.c", Path(tmp) / "fastfood.so"
        src.write_text(SOURCE)
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
