/* The innermost loops of gncpu's kernels, on explicit 32-byte vectors.
 *
 * Cython orchestrates (chunks, pairs, threads); these loops do the arithmetic. They are in C
 * because the compiler, left to vectorize Cython's lane loops, spilled the accumulators to
 * the stack. GCC and Clang vector extensions compile to AVX on x86-64-v3, and to pairs of
 * SSE2 or NEON registers elsewhere.
 *
 * Lanes: an accumulator set is 4 vectors, LANES = 4 * (32 / sizeof(T)) lanes (32 for
 * float, 16 for double); element i of a chunk goes to lane i % LANES. Every sum over lanes
 * is taken in a fixed pairwise order, so a result depends only on the data and the chunk.
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

#define GN_DEFINE_KERNELS(T, SUF)                                                           \
enum { GN_W_##SUF = 32 / sizeof(T), GN_LANES_##SUF = 4 * (32 / sizeof(T)) };             \
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
/* sum of the LANES lanes of (a0, a1, a2, a3), pairwise, in float64 */                  \
static inline double gn_lanes_total_##SUF(gn_v##SUF a0, gn_v##SUF a1, gn_v##SUF a2,       \
                                          gn_v##SUF a3)                                   \
{                                                                                         \
    T lanes[GN_LANES_##SUF];                                                              \
    double half[GN_LANES_##SUF / 2];                                                      \
    int j, width = GN_LANES_##SUF / 2;                                                    \
    gn_store_##SUF(lanes, a0);                                                            \
    gn_store_##SUF(lanes + GN_W_##SUF, a1);                                               \
    gn_store_##SUF(lanes + 2 * GN_W_##SUF, a2);                                           \
    gn_store_##SUF(lanes + 3 * GN_W_##SUF, a3);                                           \
    for (j = 0; j < width; j++)                                                           \
        half[j] = (double)lanes[j] + (double)lanes[j + width];                            \
    while (width > 1) {                                                                   \
        width /= 2;                                                                       \
        for (j = 0; j < width; j++)                                                       \
            half[j] += half[j + width];                                                   \
    }                                                                                     \
    return half[0];                                                                       \
}                                                                                         \
                                                                                          \
/* The tail x[full:n] (fewer than LANES elements) as vectors: lane k gets x[full + k]. */ \
static inline void gn_tail_##SUF(const T *x, ptrdiff_t count, gn_v##SUF *t)               \
{                                                                                         \
    T lanes[GN_LANES_##SUF] = {0};                                                        \
    memcpy(lanes, x, (size_t)count * sizeof(T));                                          \
    t[0] = gn_load_##SUF(lanes);                                                          \
    t[1] = gn_load_##SUF(lanes + GN_W_##SUF);                                             \
    t[2] = gn_load_##SUF(lanes + 2 * GN_W_##SUF);                                         \
    t[3] = gn_load_##SUF(lanes + 3 * GN_W_##SUF);                                         \
}                                                                                         \
                                                                                          \
/* Moments of x[0:n] by the corrected two-pass algorithm:                                 \
 * m = sum(x) / n;  d = x - m;  mean = m + sum(d) / n;  M2 = sum(d^2) - sum(d)^2 / n.     \
 * Tail lanes past n hold x = m (d = 0) in pass 2 and 0 in pass 1, so they add nothing. */\
static inline void gn_chunk_moments_##SUF(const T *x, ptrdiff_t n, double *mean,          \
                                          double *m2)                                     \
{                                                                                         \
    const ptrdiff_t W = GN_W_##SUF, full = n - n % GN_LANES_##SUF;                        \
    gn_v##SUF a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                     \
    gn_v##SUF s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                                     \
    gn_v##SUF q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};                                     \
    gn_v##SUF t[4], d, vm;                                                                \
    ptrdiff_t i;                                                                          \
    T m;                                                                                  \
    double sum_d;                                                                         \
    for (i = 0; i < full; i += 4 * W) {                                                   \
        a0 += gn_load_##SUF(x + i);                                                       \
        a1 += gn_load_##SUF(x + i + W);                                                   \
        a2 += gn_load_##SUF(x + i + 2 * W);                                               \
        a3 += gn_load_##SUF(x + i + 3 * W);                                               \
    }                                                                                     \
    gn_tail_##SUF(x + full, n - full, t);                                                 \
    a0 += t[0]; a1 += t[1]; a2 += t[2]; a3 += t[3];                                       \
    m = (T)(gn_lanes_total_##SUF(a0, a1, a2, a3) / (double)n);                            \
    vm = (gn_v##SUF){0} + m;                                                              \
    for (i = 0; i < full; i += 4 * W) {                                                   \
        d = gn_load_##SUF(x + i) - vm;         s0 += d; q0 = GN_VFMA_##SUF(d, d, q0);     \
        d = gn_load_##SUF(x + i + W) - vm;     s1 += d; q1 = GN_VFMA_##SUF(d, d, q1);     \
        d = gn_load_##SUF(x + i + 2 * W) - vm; s2 += d; q2 = GN_VFMA_##SUF(d, d, q2);     \
        d = gn_load_##SUF(x + i + 3 * W) - vm; s3 += d; q3 = GN_VFMA_##SUF(d, d, q3);     \
    }                                                                                     \
    if (n > full) {                                                                       \
        gn_v##SUF z[4];                                                                   \
        T lanes[GN_LANES_##SUF] = {0};                                                    \
        for (i = full; i < n; i++)                                                        \
            lanes[i - full] = x[i] - m;                                                   \
        z[0] = gn_load_##SUF(lanes);                                                      \
        z[1] = gn_load_##SUF(lanes + W);                                                  \
        z[2] = gn_load_##SUF(lanes + 2 * W);                                              \
        z[3] = gn_load_##SUF(lanes + 3 * W);                                              \
        s0 += z[0]; q0 = GN_VFMA_##SUF(z[0], z[0], q0);                                   \
        s1 += z[1]; q1 = GN_VFMA_##SUF(z[1], z[1], q1);                                   \
        s2 += z[2]; q2 = GN_VFMA_##SUF(z[2], z[2], q2);                                   \
        s3 += z[3]; q3 = GN_VFMA_##SUF(z[3], z[3], q3);                                   \
    }                                                                                     \
    sum_d = gn_lanes_total_##SUF(s0, s1, s2, s3);                                         \
    *mean = (double)m + sum_d / (double)n;                                                \
    *m2 = gn_lanes_total_##SUF(q0, q1, q2, q3) - sum_d * sum_d / (double)n;               \
}                                                                                         \
                                                                                          \
/* y = (x - m) * a + b over n contiguous elements. */                                     \
static inline void gn_affine_##SUF(const T *x, T *y, ptrdiff_t n, T m, T a, T b)          \
{                                                                                         \
    const ptrdiff_t W = GN_W_##SUF;                                                       \
    const gn_v##SUF vm = (gn_v##SUF){0} + m, va = (gn_v##SUF){0} + a,                     \
                    vb = (gn_v##SUF){0} + b;                                              \
    ptrdiff_t i = 0;                                                                      \
    for (; i + W <= n; i += W)                                                            \
        gn_store_##SUF(y + i, GN_VFMA_##SUF(gn_load_##SUF(x + i) - vm, va, vb));          \
    for (; i < n; i++)                                                                    \
        y[i] = GN_FMA_##SUF(x[i] - m, a, b);                                              \
}                                                                                         \
                                                                                          \
/* out = [sum(dy), sum(dy * (x - m))] over n contiguous elements, in lanes. */            \
static inline void gn_grad_sums_##SUF(const T *dy, const T *x, ptrdiff_t n, T m,          \
                                      double *out)                                        \
{                                                                                         \
    const ptrdiff_t W = GN_W_##SUF, full = n - n % GN_LANES_##SUF;                        \
    gn_v##SUF a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                     \
    gn_v##SUF b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};                                     \
    gn_v##SUF g, vm = (gn_v##SUF){0} + m;                                                 \
    ptrdiff_t i;                                                                          \
    for (i = 0; i < full; i += 4 * W) {                                                   \
        g = gn_load_##SUF(dy + i);                                                        \
        a0 += g; b0 = GN_VFMA_##SUF(g, gn_load_##SUF(x + i) - vm, b0);                    \
        g = gn_load_##SUF(dy + i + W);                                                    \
        a1 += g; b1 = GN_VFMA_##SUF(g, gn_load_##SUF(x + i + W) - vm, b1);                \
        g = gn_load_##SUF(dy + i + 2 * W);                                                \
        a2 += g; b2 = GN_VFMA_##SUF(g, gn_load_##SUF(x + i + 2 * W) - vm, b2);            \
        g = gn_load_##SUF(dy + i + 3 * W);                                                \
        a3 += g; b3 = GN_VFMA_##SUF(g, gn_load_##SUF(x + i + 3 * W) - vm, b3);            \
    }                                                                                     \
    if (n > full) {                                                                       \
        gn_v##SUF gt[4], xt[4];                                                           \
        T lanes[GN_LANES_##SUF] = {0};                                                    \
        gn_tail_##SUF(dy + full, n - full, gt);                                           \
        for (i = full; i < n; i++)                                                        \
            lanes[i - full] = x[i] - m;                                                   \
        xt[0] = gn_load_##SUF(lanes);                                                     \
        xt[1] = gn_load_##SUF(lanes + W);                                                 \
        xt[2] = gn_load_##SUF(lanes + 2 * W);                                             \
        xt[3] = gn_load_##SUF(lanes + 3 * W);                                             \
        a0 += gt[0]; b0 = GN_VFMA_##SUF(gt[0], xt[0], b0);                                \
        a1 += gt[1]; b1 = GN_VFMA_##SUF(gt[1], xt[1], b1);                                \
        a2 += gt[2]; b2 = GN_VFMA_##SUF(gt[2], xt[2], b2);                                \
        a3 += gt[3]; b3 = GN_VFMA_##SUF(gt[3], xt[3], b3);                                \
    }                                                                                     \
    out[0] = gn_lanes_total_##SUF(a0, a1, a2, a3);                                        \
    out[1] = gn_lanes_total_##SUF(b0, b1, b2, b3);                                        \
}                                                                                         \
                                                                                          \
/* dx = a * dy + (b * (x - m) + c) over n contiguous elements. */                         \
static inline void gn_grad_x_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t n, T a,      \
                                   T b, T m, T c)                                         \
{                                                                                         \
    const ptrdiff_t W = GN_W_##SUF;                                                       \
    const gn_v##SUF va = (gn_v##SUF){0} + a, vb = (gn_v##SUF){0} + b,                     \
                    vm = (gn_v##SUF){0} + m, vc = (gn_v##SUF){0} + c;                     \
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
