/* The innermost loops of gncpu's kernels, on explicit 32-byte vectors.
 *
 * Cython orchestrates (chunks, pairs, threads); these loops do the arithmetic. They are in C
 * because the compiler, left to vectorize Cython's lane loops, spilled the accumulators to
 * the stack. GCC and Clang vector extensions compile to AVX on x86-64-v3, and to pairs of
 * SSE2 or NEON registers elsewhere.
 *
 * Summation order, fixed for a given length n, so results depend only on the data:
 * blocks of 4 vectors go to 4 vector accumulators; the remaining whole vectors to the first
 * one; the last n % W elements (W = 32 / sizeof(T)) to a float64 scalar. The accumulators
 * are added as (a0 + a1) + (a2 + a3), then its W lanes pairwise in float64, then the scalar.
 * Each T is defined once by GN_DEFINE_KERNELS below (float: _f32, double: _f64).
 */
#ifndef GNCPU_SIMD_H
#define GNCPU_SIMD_H

#include <stddef.h>
#include <string.h>
#include "_platform.h"

typedef float gn_vf32 __attribute__((vector_size(32)));
typedef double gn_vf64 __attribute__((vector_size(32)));

#if defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>
#define GN_VFMA_f32(a, b, c) ((gn_vf32)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#define GN_VFMA_f64(a, b, c) ((gn_vf64)_mm256_fmadd_pd((__m256d)(a), (__m256d)(b), (__m256d)(c)))
#else
#define GN_VFMA_f32(a, b, c) ((a) * (b) + (c))
#define GN_VFMA_f64(a, b, c) ((a) * (b) + (c))
#endif
#define GN_FMA_f32 gn_fmaf
#define GN_FMA_f64 gn_fma

/* Elements averaged for the shift of a chunk's one-pass moments. */
#define GN_PILOT 32

#define GN_DEFINE_KERNELS(T, SUF)                                                           \
enum { GN_W_##SUF = 32 / sizeof(T) };                                                     \
                                                                                          \
static inline gn_v##SUF gn_load_##SUF(const T *p)                                          \
{                                                                                         \
    gn_v##SUF v;                                                                          \
    memcpy(&v, p, sizeof v);                                                              \
    return v;                                                                             \
}                                                                                         \
                                                                                          \
static inline void gn_store_##SUF(T *p, gn_v##SUF v) { memcpy(p, &v, sizeof v); }          \
                                                                                          \
static inline gn_v##SUF gn_splat_##SUF(T v) { return (gn_v##SUF){0} + v; }                 \
                                                                                          \
/* (a0 + a1) + (a2 + a3), its W lanes pairwise, then in float64 plus tail. */             \
static inline double gn_total_##SUF(gn_v##SUF a0, gn_v##SUF a1, gn_v##SUF a2,             \
                                    gn_v##SUF a3, double tail)                            \
{                                                                                         \
    T v[GN_W_##SUF];                                                                      \
    int j, width = GN_W_##SUF;                                                            \
    gn_store_##SUF(v, (a0 + a1) + (a2 + a3));                                             \
    while (width > 1) {                                                                   \
        width /= 2;                                                                       \
        for (j = 0; j < width; j++)                                                       \
            v[j] += v[j + width];                                                         \
    }                                                                                     \
    return (double)v[0] + tail;                                                           \
}                                                                                         \
                                                                                          \
/* Moments of x[0:n] in one pass around a shift K, the mean of the first GN_PILOT         \
 * elements: d = x - K;  mean = K + sum(d) / n;  M2 = sum(d^2) - sum(d)^2 / n.            \
 * By Cauchy-Schwarz (K - mean)^2 <= M2 / GN_PILOT, so the cancellation in M2 costs at    \
 * most a factor 1 + n / GN_PILOT in relative error, whatever the data: no E[x^2]-E[x]^2  \
 * blow-up when |mean| >> std. */                                                         \
static inline void gn_chunk_moments_##SUF(const T *x, ptrdiff_t n, double *mean,          \
                                          double *m2)                                     \
{                                                                                         \
    const ptrdiff_t W = GN_W_##SUF, pilot = n < GN_PILOT ? n : GN_PILOT;                  \
    gn_v##SUF s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                                     \
    gn_v##SUF q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};                                     \
    gn_v##SUF d, vk;                                                                      \
    ptrdiff_t i;                                                                          \
    double k = 0, st = 0, qt = 0, sum_d;                                                  \
    T K;                                                                                  \
    for (i = 0; i < pilot; i++)                                                           \
        k += x[i];                                                                        \
    K = (T)(k / (double)pilot);                                                           \
    vk = gn_splat_##SUF(K);                                                               \
    for (i = 0; i + 4 * W <= n; i += 4 * W) {                                             \
        d = gn_load_##SUF(x + i) - vk;         s0 += d; q0 = GN_VFMA_##SUF(d, d, q0);     \
        d = gn_load_##SUF(x + i + W) - vk;     s1 += d; q1 = GN_VFMA_##SUF(d, d, q1);     \
        d = gn_load_##SUF(x + i + 2 * W) - vk; s2 += d; q2 = GN_VFMA_##SUF(d, d, q2);     \
        d = gn_load_##SUF(x + i + 3 * W) - vk; s3 += d; q3 = GN_VFMA_##SUF(d, d, q3);     \
    }                                                                                     \
    for (; i + W <= n; i += W) {                                                          \
        d = gn_load_##SUF(x + i) - vk;         s0 += d; q0 = GN_VFMA_##SUF(d, d, q0);     \
    }                                                                                     \
    for (; i < n; i++) {                                                                  \
        double e = (double)(x[i] - K);                                                    \
        st += e;                                                                          \
        qt += e * e;                                                                      \
    }                                                                                     \
    sum_d = gn_total_##SUF(s0, s1, s2, s3, st);                                           \
    *mean = (double)K + sum_d / (double)n;                                                \
    *m2 = gn_total_##SUF(q0, q1, q2, q3, qt) - sum_d * sum_d / (double)n;                 \
}                                                                                         \
                                                                                          \
/* y = (x - m) * a + b over n contiguous elements. */                                     \
static inline void gn_affine_##SUF(const T *x, T *y, ptrdiff_t n, T m, T a, T b)          \
{                                                                                         \
    const ptrdiff_t W = GN_W_##SUF;                                                       \
    const gn_v##SUF vm = gn_splat_##SUF(m), va = gn_splat_##SUF(a),                       \
                    vb = gn_splat_##SUF(b);                                               \
    ptrdiff_t i = 0;                                                                      \
    for (; i + W <= n; i += W)                                                            \
        gn_store_##SUF(y + i, GN_VFMA_##SUF(gn_load_##SUF(x + i) - vm, va, vb));          \
    for (; i < n; i++)                                                                    \
        y[i] = GN_FMA_##SUF(x[i] - m, a, b);                                              \
}                                                                                         \
                                                                                          \
/* out = [sum(dy), sum(dy * (x - m))] over n contiguous elements. */                      \
static inline void gn_grad_sums_##SUF(const T *dy, const T *x, ptrdiff_t n, T m,          \
                                      double *out)                                        \
{                                                                                         \
    const ptrdiff_t W = GN_W_##SUF;                                                       \
    gn_v##SUF a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                     \
    gn_v##SUF b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};                                     \
    gn_v##SUF g, vm = gn_splat_##SUF(m);                                                  \
    ptrdiff_t i;                                                                          \
    double at = 0, bt = 0;                                                                \
    for (i = 0; i + 4 * W <= n; i += 4 * W) {                                             \
        g = gn_load_##SUF(dy + i);                                                        \
        a0 += g; b0 = GN_VFMA_##SUF(g, gn_load_##SUF(x + i) - vm, b0);                    \
        g = gn_load_##SUF(dy + i + W);                                                    \
        a1 += g; b1 = GN_VFMA_##SUF(g, gn_load_##SUF(x + i + W) - vm, b1);                \
        g = gn_load_##SUF(dy + i + 2 * W);                                                \
        a2 += g; b2 = GN_VFMA_##SUF(g, gn_load_##SUF(x + i + 2 * W) - vm, b2);            \
        g = gn_load_##SUF(dy + i + 3 * W);                                                \
        a3 += g; b3 = GN_VFMA_##SUF(g, gn_load_##SUF(x + i + 3 * W) - vm, b3);            \
    }                                                                                     \
    for (; i + W <= n; i += W) {                                                          \
        g = gn_load_##SUF(dy + i);                                                        \
        a0 += g; b0 = GN_VFMA_##SUF(g, gn_load_##SUF(x + i) - vm, b0);                    \
    }                                                                                     \
    for (; i < n; i++) {                                                                  \
        at += (double)dy[i];                                                              \
        bt += (double)dy[i] * (double)(x[i] - m);                                         \
    }                                                                                     \
    out[0] = gn_total_##SUF(a0, a1, a2, a3, at);                                          \
    out[1] = gn_total_##SUF(b0, b1, b2, b3, bt);                                          \
}                                                                                         \
                                                                                          \
/* dx = a * dy + (b * (x - m) + c) over n contiguous elements. */                         \
static inline void gn_grad_x_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t n, T a,      \
                                   T b, T m, T c)                                         \
{                                                                                         \
    const ptrdiff_t W = GN_W_##SUF;                                                       \
    const gn_v##SUF va = gn_splat_##SUF(a), vb = gn_splat_##SUF(b),                       \
                    vm = gn_splat_##SUF(m), vc = gn_splat_##SUF(c);                       \
    ptrdiff_t i = 0;                                                                      \
    for (; i + W <= n; i += W)                                                            \
        gn_store_##SUF(dx + i, GN_VFMA_##SUF(va, gn_load_##SUF(dy + i),                   \
                       GN_VFMA_##SUF(vb, gn_load_##SUF(x + i) - vm, vc)));                \
    for (; i < n; i++)                                                                    \
        dx[i] = GN_FMA_##SUF(a, dy[i], GN_FMA_##SUF(b, x[i] - m, c));                     \
}

GN_DEFINE_KERNELS(float, f32)
GN_DEFINE_KERNELS(double, f64)

#endif
