
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
