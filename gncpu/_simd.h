/* The innermost loops of gncpu's kernels, on explicit 32-byte vectors (64-byte ones in the
 * AVX-512 build).
 *
 * Cython orchestrates (chunks, pairs, threads); these loops do the arithmetic. They are in C
 * because the compiler, left to vectorize Cython's lane loops, spilled the accumulators to
 * the stack. GCC and Clang vector extensions compile to AVX on x86-64-v3, AVX-512 on
 * x86-64-v4, and to pairs of SSE2 or NEON registers elsewhere.
 *
 * Storage and compute types: f32 (float, computed in float), f64 (double, in double), f16
 * (IEEE half, in float: F16C instructions where the CPU has them) and bf16 (bfloat16, in
 * float). GN_DEFINE_KERNELS instantiates every loop once per storage type.
 *
 * Summation order, fixed for a given length n, so results depend only on the data:
 * blocks of 4 vectors go to 4 vector accumulators; the remaining whole vectors to the first
 * one; the last n % W elements (W lanes per vector) to a float64 scalar. The accumulators are
 * added as (a0 + a1) + (a2 + a3), its W lanes pairwise, then in float64 plus the scalar.
 * Element-wise outputs go through the vector code for every element (a tail is padded into
 * a vector), so an element's result never depends on where a segment starts or ends.
 *
 * Channels-last ("rows") loops take a (rows, C) block with unit channel stride: channels
 * are the vector lanes, rows are the accumulation steps.
 */
#ifndef GNCPU_SIMD_H
#define GNCPU_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "_platform.h"

/* Vector bytes: 64 (16 floats) where AVX-512 (F, BW, DQ, VL: x86-64-v4) is built in, else
 * 32 (8 floats). */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) \
    && defined(__AVX512VL__)
#define GN_AVX512 1
#define GN_VBYTES 64
#else
#define GN_AVX512 0
#define GN_VBYTES 32
#endif
#define GN_W32 (GN_VBYTES / 4)  /* float lanes */
#define GN_W64 (GN_VBYTES / 8)  /* double lanes */

typedef float gn_vf32 __attribute__((vector_size(GN_VBYTES)));
typedef double gn_vf64 __attribute__((vector_size(GN_VBYTES)));
typedef int32_t gn_vi32 __attribute__((vector_size(GN_VBYTES)));
typedef int64_t gn_vi64 __attribute__((vector_size(GN_VBYTES)));
typedef uint32_t gn_vu32 __attribute__((vector_size(GN_VBYTES)));
typedef uint16_t gn_vu16 __attribute__((vector_size(GN_VBYTES / 2)));

#if defined(__AVX__) || defined(__F16C__) || defined(__FMA__)
#include <immintrin.h>
#endif

/* The float and double intrinsics of the build's vector width, and their vector types:
 * GN_MM_PS(min) is _mm512_min_ps under AVX-512, _mm256_min_ps under AVX. */
#if GN_AVX512
#define GN_MM_PS(op) _mm512_##op##_ps
#define GN_MM_PD(op) _mm512_##op##_pd
typedef __m512 gn_mm32;
typedef __m512d gn_mm64;
#elif defined(__AVX__)
#define GN_MM_PS(op) _mm256_##op##_ps
#define GN_MM_PD(op) _mm256_##op##_pd
typedef __m256 gn_mm32;
typedef __m256d gn_mm64;
#endif

#if GN_AVX512 || (defined(__FMA__) && defined(__AVX__))
#define GN_VFMA_f32(a, b, c) \
    ((gn_vf32)GN_MM_PS(fmadd)((gn_mm32)(a), (gn_mm32)(b), (gn_mm32)(c)))
#define GN_VFMA_f64(a, b, c) \
    ((gn_vf64)GN_MM_PD(fmadd)((gn_mm64)(a), (gn_mm64)(b), (gn_mm64)(c)))
#define GN_HAS_FMA 1
#else
#define GN_VFMA_f32(a, b, c) ((a) * (b) + (c))
#define GN_VFMA_f64(a, b, c) ((a) * (b) + (c))
#define GN_HAS_FMA 0
#endif

/* Keeps a vector in a register: without it GCC folds a load used twice into both
 * instructions, loading it twice (and a load straddling cache lines costs double). */
#if defined(__AVX__) && defined(__GNUC__)
#define GN_KEEP(v) __asm__("" : "+x"(v))
#else
#define GN_KEEP(v) ((void)0)
#endif

/* Vectors per block of channels-last moments whose rows are a multiple of
 * GN_ALIASING_BYTES apart: 8 where there are 32 vector registers (AVX-512), else 4. A
 * block walks its rows column-wise, and such rows fall in a few L1 sets, so fewer, wider
 * blocks fetch more cleanly (AMD Zen 5, 1 x C x 14 x 14 float32 forward with 512 to 2048
 * channels: 1.03-1.13x; rows of 1280 or 2560 bytes ran 0.93-0.98x with them). */
#if GN_AVX512
#define GN_ROW_VECS 8
#else
#define GN_ROW_VECS 4
#endif
#define GN_ALIASING_BYTES 1024
#define GN_UNROLL _Pragma("GCC unroll 8")

/* Activation codes, shared with Cython. */
enum { GN_ACT_NONE = 0, GN_ACT_RELU = 1, GN_ACT_SILU = 2 };

/* ---- storage <-> compute conversions --------------------------------------------------- */

/* IEEE half -> float, exact. */
static inline float gn_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    float f;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {                                 /* subnormal half: man * 2^-24 */
        f = (float)man * 5.9604644775390625e-8f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    memcpy(&f, &bits, 4);
    return f;
}

/* float -> IEEE half, rounding to nearest even (as NumPy's astype does). */
static inline uint16_t gn_float_to_half(float f)
{
    uint32_t bits, sign, exp, man;
    memcpy(&bits, &f, 4);
    sign = (bits >> 16) & 0x8000;
    exp = (bits >> 23) & 0xff;
    man = bits & 0x7fffff;
    if (exp == 0xff)                                         /* inf, nan */
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 | (man >> 13) : 0));
    if (exp > 142)                                           /* overflow */
        return (uint16_t)(sign | 0x7c00);
    if (exp < 113) {                                         /* subnormal or zero */
        uint32_t shift, half_man, rem, halfway;
        if (exp < 102)
            return (uint16_t)sign;
        man |= 0x800000;
        shift = 126 - exp;
        half_man = man >> shift;
        rem = man & ((1u << shift) - 1);
        halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half_man & 1)))
            half_man++;
        return (uint16_t)(sign | half_man);
    }
    {
        uint32_t h = ((exp - 112) << 10) | (man >> 13), rem = man & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
            h++;                                             /* may carry into inf: right */
        return (uint16_t)(sign | h);
    }
}

static inline float gn_bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* float -> bfloat16, rounding to nearest even; NaN stays NaN. */
static inline uint16_t gn_float_to_bf16(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((bits >> 16) | 0x40);
    return (uint16_t)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

static inline gn_vf32 gn_vload_f32(const float *p)
{
    gn_vf32 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void gn_vstore_f32(float *p, gn_vf32 v) { memcpy(p, &v, sizeof v); }
static inline gn_vf64 gn_vload_f64(const double *p)
{
    gn_vf64 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void gn_vstore_f64(double *p, gn_vf64 v) { memcpy(p, &v, sizeof v); }

static inline gn_vf32 gn_vload_f16(const uint16_t *p)
{
#if GN_AVX512
    return (gn_vf32)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif defined(__F16C__)
    return (gn_vf32)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#else
    gn_vf32 v;
    int j;
    for (j = 0; j < GN_W32; j++)
        v[j] = gn_half_to_float(p[j]);
    return v;
#endif
}

static inline void gn_vstore_f16(uint16_t *p, gn_vf32 v)
{
#if GN_AVX512
    __m256i h = _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT);
    GN_KEEP(h);
    _mm256_storeu_si256((__m256i *)p, h);
#elif defined(__F16C__)
    __m128i h = _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT);
    GN_KEEP(h);          /* converted into memory directly: 1.7x slower on AMD Zen 5 */
    _mm_storeu_si128((__m128i *)p, h);
#else
    int j;
    for (j = 0; j < GN_W32; j++)
        p[j] = gn_float_to_half(v[j]);
#endif
}

/* f[0:n] = h[0:n], half to float (weight and bias of a float16 call). */
static inline void gn_halves_to_floats(const uint16_t *h, float *f, ptrdiff_t n)
{
    ptrdiff_t i;
    for (i = 0; i + GN_W32 <= n; i += GN_W32)
        gn_vstore_f32(f + i, gn_vload_f16(h + i));
    for (; i < n; i++)
        f[i] = gn_half_to_float(h[i]);
}

/* Non-temporal stores of an aligned vector: for outputs too large to stay in cache, they
 * skip reading each line before it is written. Plain stores where AVX is not built in. */
#if defined(__AVX__)
static inline void gn_vstream_f32(float *p, gn_vf32 v) { GN_MM_PS(stream)(p, (gn_mm32)v); }
static inline void gn_vstream_f64(double *p, gn_vf64 v) { GN_MM_PD(stream)(p, (gn_mm64)v); }
static inline void gn_stream_fence(void) { _mm_sfence(); }
#else
static inline void gn_vstream_f32(float *p, gn_vf32 v) { gn_vstore_f32(p, v); }
static inline void gn_vstream_f64(double *p, gn_vf64 v) { gn_vstore_f64(p, v); }
static inline void gn_stream_fence(void) { }
#endif
#if GN_AVX512
static inline void gn_vstream_f16(uint16_t *p, gn_vf32 v)
{
    _mm256_stream_si256((__m256i *)p, _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT));
}
#elif defined(__AVX__) && defined(__F16C__)
static inline void gn_vstream_f16(uint16_t *p, gn_vf32 v)
{
    _mm_stream_si128((__m128i *)p, _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
}
#else
static inline void gn_vstream_f16(uint16_t *p, gn_vf32 v) { gn_vstore_f16(p, v); }
#endif

static inline gn_vf32 gn_vload_bf16(const uint16_t *p)
{
    gn_vu16 h;
    gn_vu32 u;
    memcpy(&h, p, sizeof h);
    u = __builtin_convertvector(h, gn_vu32) << 16;
    return (gn_vf32)u;
}

static inline void gn_vstore_bf16(uint16_t *p, gn_vf32 v)
{
    gn_vu32 u = (gn_vu32)v;
    gn_vu32 nan = (gn_vu32)((u & 0x7fffffff) > 0x7f800000);  /* all ones where NaN */
    gn_vu32 rounded = (u + 0x7fff + ((u >> 16) & 1)) >> 16;
    gn_vu32 quiet = (u >> 16) | 0x40;
    gn_vu16 h = __builtin_convertvector((nan & quiet) | (~nan & rounded), gn_vu16);
    memcpy(p, &h, sizeof h);
}

#if GN_AVX512
static inline void gn_vstream_bf16(uint16_t *p, gn_vf32 v)
{
    uint16_t h[16] __attribute__((aligned(32)));
    gn_vstore_bf16(h, v);
    _mm256_stream_si256((__m256i *)p, _mm256_load_si256((const __m256i *)h));
}
#elif defined(__AVX__)
static inline void gn_vstream_bf16(uint16_t *p, gn_vf32 v)
{
    uint16_t h[8] __attribute__((aligned(16)));
    gn_vstore_bf16(h, v);
    _mm_stream_si128((__m128i *)p, _mm_load_si128((const __m128i *)h));
}
#else
static inline void gn_vstream_bf16(uint16_t *p, gn_vf32 v) { gn_vstore_bf16(p, v); }
#endif

/* ---- exp and activations ------------------------------------------------------------ */

static inline gn_vf32 gn_select_f32(gn_vi32 mask, gn_vf32 a, gn_vf32 b)
{
    return (gn_vf32)((mask & (gn_vi32)a) | (~mask & (gn_vi32)b));
}

static inline gn_vf64 gn_select_f64(gn_vi64 mask, gn_vf64 a, gn_vf64 b)
{
    return (gn_vf64)((mask & (gn_vi64)a) | (~mask & (gn_vi64)b));
}

/* min(k, x) and max(k, x) with a constant k, as the SSE/AVX instructions define them: x
 * when either is NaN, so NaN stays NaN. One instruction on AVX and AVX-512. */
#if defined(__AVX__)
static inline gn_vf32 gn_vmin_f32(float k, gn_vf32 x)
{
    return (gn_vf32)GN_MM_PS(min)(GN_MM_PS(set1)(k), (gn_mm32)x);
}
static inline gn_vf32 gn_vmax_f32(float k, gn_vf32 x)
{
    return (gn_vf32)GN_MM_PS(max)(GN_MM_PS(set1)(k), (gn_mm32)x);
}
static inline gn_vf64 gn_vmin_f64(double k, gn_vf64 x)
{
    return (gn_vf64)GN_MM_PD(min)(GN_MM_PD(set1)(k), (gn_mm64)x);
}
static inline gn_vf64 gn_vmax_f64(double k, gn_vf64 x)
{
    return (gn_vf64)GN_MM_PD(max)(GN_MM_PD(set1)(k), (gn_mm64)x);
}
#else
static inline gn_vf32 gn_vmin_f32(float k, gn_vf32 x)
{
    return gn_select_f32(k < x, (gn_vf32){0} + k, x);
}
static inline gn_vf32 gn_vmax_f32(float k, gn_vf32 x)
{
    return gn_select_f32(k > x, (gn_vf32){0} + k, x);
}
static inline gn_vf64 gn_vmin_f64(double k, gn_vf64 x)
{
    return gn_select_f64(k < x, (gn_vf64){0} + k, x);
}
static inline gn_vf64 gn_vmax_f64(double k, gn_vf64 x)
{
    return gn_select_f64(k > x, (gn_vf64){0} + k, x);
}
#endif

#if GN_AVX512
/* exp(-x) for float lanes as p * scale, with AVX-512's two-table permute as a table of
 * 32: -x = m ln2 / 32 - w, m rounded to nearest by the 1.5 * 2^23 trick, which also
 * leaves m in t's low bits; w by Cody and Waite's two-part ln2 / 32 (m * 0.693359375 / 32
 * is exact); p = exp(-w) by a degree-2 minimax polynomial (relative error 5.4e-8 on
 * |w| <= ln2 / 64); scale = 2^(m / 32): 2^((m mod 32) / 32) from the table, its exponent
 * bits plus floor(m / 32), a normal number for m in [-4032, 4095]. The table holds the
 * bits of 2^(j / 32) less j << 18, so that adding t's bits shifted left by 18, which are
 * m << 18 = (floor(m / 32) << 23) + ((m mod 32) << 18) modulo 2^32, makes the scale in
 * one shift and one add. Three FMAs fewer per vector than the degree-5 scheme below, for
 * a permute and an add (AMD Zen 5, SiLU in L1: 1.08x faster than a table of 16 with a
 * degree-3 polynomial, which was 1.3x faster than degree 5; SiLU error 4.0 ulp against
 * 3.2, see below). NaN stays NaN. */
static const int32_t gn_exp2_32nds[32] = {
    0x3f800000, 0x3f7ecd87, 0x3f7daac3, 0x3f7c980f, 0x3f7b95c2, 0x3f7aa43a, 0x3f79c3d3,
    0x3f78f4f0, 0x3f7837f0, 0x3f778d3a, 0x3f76f532, 0x3f767043, 0x3f75fed7, 0x3f75a15b,
    0x3f75583f, 0x3f7523f6, 0x3f7504f3, 0x3f74fbaf, 0x3f7508a4, 0x3f752c4d, 0x3f75672a,
    0x3f75b9be, 0x3f76248c, 0x3f76a81e, 0x3f7744fd, 0x3f77fbb8, 0x3f78ccdf, 0x3f79b907,
    0x3f7ac0c7, 0x3f7be4ba, 0x3f7d257d, 0x3f7e83b3};

static inline gn_vf32 gn_vexpneg_parts_f32(gn_vf32 x, gn_vf32 *scale)
{
    const gn_vf32 t = GN_VFMA_f32(x, (gn_vf32){0} - 46.16624130844683f,
                                  (gn_vf32){0} + 12582912.0f);
    const gn_vf32 m = t - 12582912.0f;
    const __m512i mi = _mm512_castps_si512((gn_mm32)t);
    gn_vf32 w = GN_VFMA_f32(m, (gn_vf32){0} + 0.693359375f / 32, x);
    gn_vf32 p;
    w = GN_VFMA_f32(m, (gn_vf32){0} - 2.12194440e-4f / 32, w);
    p = GN_VFMA_f32((gn_vf32){0} + 0.50000054f, w, (gn_vf32){0} - 1.0000147f);
    p = GN_VFMA_f32(p, w, (gn_vf32){0} + 1.0f);
    *scale = (gn_vf32)_mm512_add_epi32(
        _mm512_permutex2var_epi32(_mm512_loadu_si512(gn_exp2_32nds), mi,
                                  _mm512_loadu_si512(gn_exp2_32nds + 16)),
        _mm512_slli_epi32(mi, 18));
    return p;
}
#else
/* exp(-x) for float lanes as p * scale: x = m ln2 + w with |w| <= ln2 / 2, m rounded to
 * nearest by the 1.5 * 2^23 trick, which also leaves m in t's low bits; w by Cody and
 * Waite's two-part ln2 (m * 0.693359375 is exact, with or without FMA); p = exp(-w) by a
 * degree-5 minimax polynomial (relative error 9e-8 on |w| <= ln2 / 2), its odd terms'
 * signs flipped so that -x is never formed; scale = 2^-m from m's bits: a normal power of
 * 2 for m in [-127, 126], infinity for -128. No step can lose a NaN, so NaN needs no
 * select. */
static inline gn_vf32 gn_vexpneg_parts_f32(gn_vf32 x, gn_vf32 *scale)
{
    const gn_vf32 t = GN_VFMA_f32(x, (gn_vf32){0} + 1.44269504088896341f,
                                  (gn_vf32){0} + 12582912.0f);
    const gn_vf32 m = t - 12582912.0f;
    gn_vf32 w = GN_VFMA_f32(m, (gn_vf32){0} - 0.693359375f, x);
    gn_vf32 p;
    w = GN_VFMA_f32(m, (gn_vf32){0} + 2.12194440e-4f, w);
    p = GN_VFMA_f32((gn_vf32){0} - 8.290315046906471e-3f, w,
                    (gn_vf32){0} + 4.189793020486832e-2f);
    p = GN_VFMA_f32(p, w, (gn_vf32){0} - 1.666763573884964e-1f);
    p = GN_VFMA_f32(p, w, (gn_vf32){0} + 4.999915063381195e-1f);
    p = GN_VFMA_f32(p, w, (gn_vf32){0} - 9.999997019767761e-1f);
    p = GN_VFMA_f32(p, w, (gn_vf32){0} + 1.0f);
    *scale = (gn_vf32)(((gn_vi32){0} + 127 - (gn_vi32)t) << 23);
    return p;
}
#endif

/* exp(-x) for double lanes, the same scheme as the degree-5 one with the 1.5 * 2^52 trick,
 * fdlibm's two-part ln2 and the Taylor polynomial of degree 13 (truncation error below
 * 1e-17 on |w| <= ln2 / 2); scale = 2^-m is infinity for m = -1024. */
static inline gn_vf64 gn_vexpneg_parts_f64(gn_vf64 x, gn_vf64 *scale)
{
    static const double c[14] = {
        1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
        1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600,
        1.0 / 6227020800.0};
    const gn_vf64 t = GN_VFMA_f64(x, (gn_vf64){0} + 1.4426950408889634,
                                  (gn_vf64){0} + 6755399441055744.0);
    const gn_vf64 m = t - 6755399441055744.0;
    gn_vf64 w = GN_VFMA_f64(m, (gn_vf64){0} - 6.93147180369123816490e-1, x);
    gn_vf64 p = (gn_vf64){0} - c[13];
    int k;
    w = GN_VFMA_f64(m, (gn_vf64){0} - 1.90821492927058770002e-10, w);
    for (k = 12; k >= 0; k--)
        p = GN_VFMA_f64(p, w, (gn_vf64){0} + (k % 2 == 0 ? c[k] : -c[k]));
    *scale = (gn_vf64)(((gn_vi64){0} + 1023 - (gn_vi64)t) << 52);
    return p;
}

/* silu(p) = p / (1 + exp(-p)) and silu'(p) = s (1 + p (1 - s)) with s = sigmoid(p) =
 * 1 / (1 + exp(-p)), for float (f32) or double (f64) lanes. silu clamps p at LO (the max
 * keeps m in range and silu(-inf) finite) and exp's argument at HI, above which
 * 1 + exp(-p) = 1 and the result is p; silu' clamps p to [LO, HI] first, so it is 1 from HI
 * up and silu'(LO) from LO down, infinities included.
 * - float, LO = -88.5, HI = 87.3. Measured on every float from -87 up: silu within 4.1 ulp
 *   with the AVX-512 exp, 3.6 ulp with the other; sigmoid within 4.0 and 3.4 ulp. Lower,
 *   |silu(p)| < 1.5e-36: from LO down silu is -3.2e-37 and silu' about -3.2e-37 with the
 *   AVX-512 exp; with the other exp(-p) rounds to 2^128 = inf from p = -88.38 down, and
 *   both are -0.
 * - double, LO = -709.6, HI = 708.0: both -0 from p = -709.44 down (|silu(p)| < 5.6e-306
 *   there). */
#define GN_DEFINE_SILU(VT, SUF, LO, HI)                                                   \
static inline VT gn_vsilu_##SUF(VT p)                                                     \
{                                                                                         \
    VT scale, e;                                                                          \
    p = gn_vmax_##SUF(LO, p);                                                             \
    e = gn_vexpneg_parts_##SUF(gn_vmin_##SUF(HI, p), &scale);                             \
    return p / GN_VFMA_##SUF(e, scale, (VT){0} + 1);                                      \
}                                                                                         \
                                                                                          \
static inline VT gn_vsilu_grad_##SUF(VT p)                                                \
{                                                                                         \
    VT scale, e, s;                                                                       \
    p = gn_vmin_##SUF(HI, gn_vmax_##SUF(LO, p));                                          \
    e = gn_vexpneg_parts_##SUF(p, &scale);                                                \
    s = 1 / GN_VFMA_##SUF(e, scale, (VT){0} + 1);                                         \
    return s * (1 + p * (1 - s));                                                         \
}

GN_DEFINE_SILU(gn_vf32, f32, -88.5f, 87.3f)
GN_DEFINE_SILU(gn_vf64, f64, -709.6, 708.0)

/* Half and bfloat16 compute in float. */
#define gn_vsilu_f16 gn_vsilu_f32
#define gn_vsilu_bf16 gn_vsilu_f32
#define gn_vsilu_grad_f16 gn_vsilu_grad_f32
#define gn_vsilu_grad_bf16 gn_vsilu_grad_f32

/* Lane masks for the first n lanes, for AVX2's masked loads and stores of 4- and 8-byte
 * elements: a partial vector then costs no call to memcpy. */
#if defined(__AVX2__)
static inline __m256i gn_lanes32(ptrdiff_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __m256i gn_lanes64(ptrdiff_t n)
{
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}

/* 0 < n < 8 halves (IEEE or bfloat16) of p, zero-padded, and the way back. AVX2 masks go
 * down to 4 bytes: the n / 2 whole pairs move by a masked 32-bit load or store, then
 * element n - 1 alone (when n is even it is the last pair's, moved again: no branch).
 * Nothing outside [p, p + n) is touched. */
static inline __m128i gn_load16_part(const uint16_t *p, ptrdiff_t n)
{
    const __m128i pairs = _mm_maskload_epi32((const int *)p,
                                             _mm256_castsi256_si128(gn_lanes32(n / 2)));
    const __m128i last = _mm_cmpeq_epi16(_mm_set1_epi16((short)(n - 1)),
                                         _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm_blendv_epi8(pairs, _mm_set1_epi16((short)p[n - 1]), last);
}

static inline void gn_store16_part(uint16_t *p, __m128i h, ptrdiff_t n)
{
    _mm_maskstore_epi32((int *)p, _mm256_castsi256_si128(gn_lanes32(n / 2)), h);
    /* bytes 2 (n - 1) and 2 (n - 1) + 1 of h to the bottom */
    h = _mm_shuffle_epi8(h, _mm_set1_epi16((short)(0x0100 + 0x0202 * (n - 1))));
    p[n - 1] = (uint16_t)_mm_cvtsi128_si32(h);
}
#endif

/* In a partial load or store of T elements, through AVX2's masked instructions: float
 * and double directly; 2-byte storage (f16, bf16) as its raw bits, converted by LOAD or
 * STORE (the whole-vector load or store of T) through tmp, which the compiler keeps in a
 * register. T's size tells the types apart here; the other branches are dead code.
 * AVX-512 masks the n lanes of every element size directly (BW for 2-byte lanes). */
#if GN_AVX512
#define GN_MASKED_LOAD(T, VT, p, n, tmp, LOAD)                                            \
    do {                                                                                  \
        const __mmask16 lanes = (__mmask16)((1u << (n)) - 1);                             \
        if (sizeof(T) == 4)                                                               \
            return (VT)_mm512_maskz_loadu_ps(lanes, (const float *)(p));                  \
        if (sizeof(T) == 8)                                                               \
            return (VT)_mm512_maskz_loadu_pd((__mmask8)lanes, (const double *)(p));       \
        if (sizeof(T) == 2) {                                                             \
            _mm256_storeu_si256((__m256i *)(tmp), _mm256_maskz_loadu_epi16(lanes, (p)));  \
            return LOAD(tmp);                                                             \
        }                                                                                 \
    } while (0)
#define GN_MASKED_STORE(T, p, v, n, tmp, STORE)                                           \
    do {                                                                                  \
        const __mmask16 lanes = (__mmask16)((1u << (n)) - 1);                             \
        if (sizeof(T) == 4) {                                                             \
            _mm512_mask_storeu_ps((float *)(p), lanes, (__m512)(v));                      \
            return;                                                                       \
        }                                                                                 \
        if (sizeof(T) == 8) {                                                             \
            _mm512_mask_storeu_pd((double *)(p), (__mmask8)lanes, (__m512d)(v));          \
            return;                                                                       \
        }                                                                                 \
        if (sizeof(T) == 2) {                                                             \
            STORE(tmp, v);                                                                \
            _mm256_mask_storeu_epi16((p), lanes, _mm256_loadu_si256((const __m256i *)(tmp)));\
            return;                                                                       \
        }                                                                                 \
    } while (0)
#elif defined(__AVX2__)
#define GN_MASKED_LOAD(T, VT, p, n, tmp, LOAD)                                            \
    do {                                                                                  \
        if (sizeof(T) == 4)                                                               \
            return (VT)_mm256_maskload_ps((const float *)(p), gn_lanes32(n));             \
        if (sizeof(T) == 8)                                                               \
            return (VT)_mm256_maskload_pd((const double *)(p), gn_lanes64(n));            \
        if (sizeof(T) == 2) {                                                             \
            _mm_storeu_si128((__m128i *)(tmp), gn_load16_part((const uint16_t *)(p), n)); \
            return LOAD(tmp);                                                             \
        }                                                                                 \
    } while (0)
#define GN_MASKED_STORE(T, p, v, n, tmp, STORE)                                           \
    do {                                                                                  \
        if (sizeof(T) == 4) {                                                             \
            _mm256_maskstore_ps((float *)(p), gn_lanes32(n), (__m256)(v));                \
            return;                                                                       \
        }                                                                                 \
        if (sizeof(T) == 8) {                                                             \
            _mm256_maskstore_pd((double *)(p), gn_lanes64(n), (__m256d)(v));              \
            return;                                                                       \
        }                                                                                 \
        if (sizeof(T) == 2) {                                                             \
            STORE(tmp, v);                                                                \
            gn_store16_part((uint16_t *)(p), _mm_loadu_si128((const __m128i *)(tmp)), n); \
            return;                                                                       \
        }                                                                                 \
    } while (0)
#else
#define GN_MASKED_LOAD(T, VT, p, n, tmp, LOAD) do { } while (0)
#define GN_MASKED_STORE(T, p, v, n, tmp, STORE) do { } while (0)
#endif

/* Channels-last loops walk down the rows of a block of channels, then of the next block:
 * while in row r of one block, they ask for the lines at p (row r of the next block, or of
 * the same block a row chunk on), whose lines are otherwise missed one by one when x is
 * larger than the cache (channels-last forward, (8,256,56,56) float32: 1.12x faster on
 * AMD Zen 5 for the next block, 1.08x more for the next chunk; the same where x fits in
 * the cache). */
static inline void gn_prefetch_lines(const void *p, size_t bytes)
{
    size_t o;
    for (o = 0; o < bytes; o += 64)
        __builtin_prefetch((const char *)p + o);
}

/* The same with low temporal locality: into L2, not L1, whose lines the caller's own pass
 * needs (channels-last outputs asking for the next sample: 1.05x; into L1, 0.94x). */
static inline void gn_prefetch_lines_low(const void *p, size_t bytes)
{
    size_t o;
    for (o = 0; o < bytes; o += 64)
        __builtin_prefetch((const char *)p + o, 0, 1);
}

/* Whether rows of C channels, xs and ys elements apart, follow each other with no gap in
 * whole vectors of `lanes`: gn_rows_affine then takes them as one run. */
static inline int gn_rows_run(ptrdiff_t C, ptrdiff_t xs, ptrdiff_t ys, ptrdiff_t lanes)
{
    return xs == C && ys == C && C % lanes == 0;
}

/* Lane j plus lane j + W/2, and so on down to one lane: a vector's lanes added pairwise.
 * With AVX, on halves of the register: the same additions, without the trip through the
 * stack that a loop over lanes takes (its store-to-load chain was 40% of the channels-
 * first moments' time on AMD Zen 5, with a horizontal total per 2048 elements). */
#if defined(__AVX__)
static inline float gn_fold256_ps(__m256 h)
{
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
static inline double gn_fold256_pd(__m256d h)
{
    const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
}
#endif
#if GN_AVX512
static inline float gn_fold_f32(gn_vf32 v)
{
    const __m512 a = (__m512)v;
    return gn_fold256_ps(_mm256_add_ps(_mm512_castps512_ps256(a),
                                       _mm512_extractf32x8_ps(a, 1)));
}
static inline double gn_fold_f64(gn_vf64 v)
{
    const __m512d a = (__m512d)v;
    return gn_fold256_pd(_mm256_add_pd(_mm512_castpd512_pd256(a),
                                       _mm512_extractf64x4_pd(a, 1)));
}
#elif defined(__AVX__)
static inline float gn_fold_f32(gn_vf32 v) { return gn_fold256_ps((__m256)v); }
static inline double gn_fold_f64(gn_vf64 v) { return gn_fold256_pd((__m256d)v); }
#else
#define GN_FOLD_LANES(CT, W, v)                                                            \
    CT u[W];                                                                              \
    int j, width = W;                                                                     \
    memcpy(u, &v, sizeof u);                                                              \
    while (width > 1) {                                                                   \
        width /= 2;                                                                       \
        for (j = 0; j < width; j++)                                                       \
            u[j] += u[j + width];                                                         \
    }                                                                                     \
    return u[0];
static inline float gn_fold_f32(gn_vf32 v) { GN_FOLD_LANES(float, GN_W32, v) }
static inline double gn_fold_f64(gn_vf64 v) { GN_FOLD_LANES(double, GN_W64, v) }
#undef GN_FOLD_LANES
#endif

/* Per lane, in float64: mean = k + s / n and m2 = q - s * s / n (a channels-last chunk's
 * moments of W channels around their shifts k), the same operations as one lane at a
 * time: on AMD Zen 5, scalar ones per channel and row chunk were a third of the
 * channels-last moments' time. */
static inline void gn_moments_lanes_f64(gn_vf64 k, gn_vf64 s, gn_vf64 q, double n,
                                        double *mean, double *m2)
{
    const gn_vf64 vn = (gn_vf64){0} + n;
    gn_vstore_f64(mean, k + s / vn);
    gn_vstore_f64(m2, q - s * s / vn);
}

static inline void gn_moments_lanes_f32(gn_vf32 k, gn_vf32 s, gn_vf32 q, double n,
                                        double *mean, double *m2)
{
    typedef float half __attribute__((vector_size(GN_VBYTES / 2)));
    half h[6];
    int j;
    memcpy(h, &k, sizeof k);
    memcpy(h + 2, &s, sizeof s);
    memcpy(h + 4, &q, sizeof q);
    for (j = 0; j < 2; j++)
        gn_moments_lanes_f64(__builtin_convertvector(h[j], gn_vf64),
                             __builtin_convertvector(h[2 + j], gn_vf64),
                             __builtin_convertvector(h[4 + j], gn_vf64), n,
                             mean + j * GN_W64, m2 + j * GN_W64);
}

/* Chan's merge of a chunk's per-channel (mean, m2) into running ones, channel by channel,
 * all with the same counts: f = n_chunk / (n_run + n_chunk), h = n_run * f. */
static inline void gn_merge_channels(double *restrict run_mean, double *restrict run_m2,
                                     const double *restrict mean, const double *restrict m2,
                                     ptrdiff_t n, double f, double h)
{
    ptrdiff_t c;
    double d;
    for (c = 0; c < n; c++) {
        d = mean[c] - run_mean[c];
        run_mean[c] = run_mean[c] + d * f;
        run_m2[c] = run_m2[c] + m2[c] + d * d * h;
    }
}

/* out[k] = the lanes of v[k] totalled as gn_lanes_total does for W float lanes (lane j plus
 * lane j + W/2, down to one, then in float64 plus 0), for the W vectors of v (k < W) at
 * once: the same additions, several channels per instruction (backward sums of channels
 * of 49-64 elements 1.1x faster on AMD Zen 5). */
#if GN_AVX512
#define GN_TOTALS 1
static inline void gn_lanes_totals(const void *v, double *out)
{
    const __m512 *u = (const __m512 *)v;
    __m512 p[8], q[4], x0, x1, t;
    double d[16];
    int k, c;
    for (k = 0; k < 8; k++)       /* r_j = u_j + u_j+8 of channels 2k | 2k + 1 */
        p[k] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0xEE));
    for (k = 0; k < 4; k++)       /* s_j = r_j + r_j+4 of channels 4k + c in 128-bit lane c */
        q[k] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * k], p[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(p[2 * k], p[2 * k + 1], 0xDD));
    /* per 128-bit lane c: [s0 + s2, s1 + s3] of channels c, c + 4 (x0) and c + 8, c + 12 */
    x0 = _mm512_add_ps(_mm512_shuffle_ps(q[0], q[1], 0x44), _mm512_shuffle_ps(q[0], q[1], 0xEE));
    x1 = _mm512_add_ps(_mm512_shuffle_ps(q[2], q[3], 0x44), _mm512_shuffle_ps(q[2], q[3], 0xEE));
    /* lane 4c + i: the total of channel c + 4i */
    t = _mm512_add_ps(_mm512_shuffle_ps(x0, x1, 0x88), _mm512_shuffle_ps(x0, x1, 0xDD));
    _mm512_storeu_pd(d, _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(t)),
                                      _mm512_setzero_pd()));
    _mm512_storeu_pd(d + 8, _mm512_add_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(t, 1)),
                                          _mm512_setzero_pd()));
    for (c = 0; c < 4; c++)
        for (k = 0; k < 4; k++)
            out[c + 4 * k] = d[4 * c + k];
}
#elif defined(__AVX__)
#define GN_TOTALS 1
static inline void gn_lanes_totals(const void *v, double *out)
{
    const __m256 *u = (const __m256 *)v;
    __m256 p[4], x0123, x4567, t;
    __m256d lo, hi;
    double l[4], h[4];
    int k;
    for (k = 0; k < 4; k++)       /* [u2k.lo + u2k.hi | u2k+1.lo + u2k+1.hi] */
        p[k] = _mm256_add_ps(_mm256_permute2f128_ps(u[2 * k], u[2 * k + 1], 0x20),
                             _mm256_permute2f128_ps(u[2 * k], u[2 * k + 1], 0x31));
    /* per 128-bit half: [e0 + e2, e1 + e3] of two channels */
    x0123 = _mm256_add_ps(_mm256_shuffle_ps(p[0], p[1], 0x44),
                          _mm256_shuffle_ps(p[0], p[1], 0xEE));
    x4567 = _mm256_add_ps(_mm256_shuffle_ps(p[2], p[3], 0x44),
                          _mm256_shuffle_ps(p[2], p[3], 0xEE));
    /* channels 0, 2, 4, 6 in the low half, 1, 3, 5, 7 in the high half */
    t = _mm256_add_ps(_mm256_shuffle_ps(x0123, x4567, 0x88),
                      _mm256_shuffle_ps(x0123, x4567, 0xDD));
    lo = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(t)), _mm256_setzero_pd());
    hi = _mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)), _mm256_setzero_pd());
    _mm256_storeu_pd(l, lo);
    _mm256_storeu_pd(h, hi);
    for (k = 0; k < 4; k++) {
        out[2 * k] = l[k];
        out[2 * k + 1] = h[k];
    }
}
#else
#define GN_TOTALS 0
static inline void gn_lanes_totals(const void *v, double *out) { (void)v; (void)out; }
#endif

/* ---- the loops, once per storage type ----------------------------------------------- */

#define GN_DEFINE_KERNELS(ST, CT, SUF, VT, W, VFMA, SELECT)                               \
                                                                                          \
static inline VT gn_splat_##SUF(CT v) { return (VT){0} + v; }                              \
                                                                                          \
/* x - m, rounded once either way. For 2-byte storage it is fma(m, -1, x) where FMA is    \
 * built in: conversions from storage share the add pipes, FMA has others (AMD Zen 5:     \
 * float16 moments 1.4x faster in L1). */                                                \
static inline VT gn_center_##SUF(VT x, VT m)                                              \
{                                                                                         \
    return sizeof(ST) == 2 && GN_HAS_FMA ? VFMA(m, (VT){0} - 1, x) : x - m;               \
}                                                                                         \
                                                                                          \
/* W elements of p, less m. */                                                            \
static inline VT gn_vload_minus_##SUF(const ST *p, VT m)                                  \
{                                                                                         \
    return gn_center_##SUF(gn_vload_##SUF(p), m);                                         \
}                                                                                         \
                                                                                          \
/* W elements of a compute-type array (and n < W of them, zero-padded). */                \
static inline VT gn_vload_c_##SUF(const CT *p) { VT v; memcpy(&v, p, sizeof v); return v; }\
                                                                                          \
static inline VT gn_vload_cpart_##SUF(const CT *p, ptrdiff_t n)                            \
{                                                                                         \
    CT tmp[W];                                                                            \
    GN_MASKED_LOAD(CT, VT, p, n, tmp, gn_vload_c_##SUF);                                  \
    memset(tmp, 0, sizeof tmp);                                                           \
    memcpy(tmp, p, (size_t)n * sizeof(CT));                                               \
    return gn_vload_c_##SUF(tmp);                                                         \
}                                                                                         \
                                                                                          \
/* 0 < n < W elements of p as a vector, zero-padded (and the way back). */                \
static inline VT gn_vload_part_##SUF(const ST *p, ptrdiff_t n)                             \
{                                                                                         \
    ST tmp[W];                                                                            \
    GN_MASKED_LOAD(ST, VT, p, n, tmp, gn_vload_##SUF);                                    \
    memset(tmp, 0, sizeof tmp);                                                           \
    memcpy(tmp, p, (size_t)n * sizeof(ST));                                               \
    return gn_vload_##SUF(tmp);                                                           \
}                                                                                         \
                                                                                          \
static inline void gn_vstore_part_##SUF(ST *p, VT v, ptrdiff_t n)                          \
{                                                                                         \
    ST tmp[W];                                                                            \
    GN_MASKED_STORE(ST, p, v, n, tmp, gn_vstore_##SUF);                                   \
    gn_vstore_##SUF(tmp, v);                                                              \
    memcpy(p, tmp, (size_t)n * sizeof(ST));                                               \
}                                                                                         \
                                                                                          \
/* Elements before p reaches the alignment of a stored vector (at most n). Element-wise   \
 * loops cover them with one unaligned vector at p, whose other lanes the aligned stores  \
 * after it write again with the same values (every lane computes alike): aligned stores  \
 * avoid split cache lines (NumPy's buffers sit at 16 mod 64). */                         \
static inline ptrdiff_t gn_head_##SUF(const ST *p, ptrdiff_t n)                            \
{                                                                                         \
    const uintptr_t bytes = W * sizeof(ST);                                               \
    ptrdiff_t k = (ptrdiff_t)(((bytes - ((uintptr_t)p & (bytes - 1))) & (bytes - 1))      \
                              / sizeof(ST));                                              \
    return k < n ? k : n;                                                                 \
}                                                                                         \
                                                                                          \
/* The W lanes of a as gn_fold adds them, then in float64 plus tail. */                   \
static inline double gn_lanes_total_##SUF(VT a, double tail)                              \
{                                                                                         \
    return (double)_Generic(a, gn_vf32: gn_fold_f32, gn_vf64: gn_fold_f64)(a) + tail;     \
}                                                                                         \
                                                                                          \
/* (a0 + a1) + (a2 + a3), then its lanes as gn_lanes_total. */                            \
static inline double gn_total_##SUF(VT a0, VT a1, VT a2, VT a3, double tail)              \
{                                                                                         \
    return gn_lanes_total_##SUF((a0 + a1) + (a2 + a3), tail);                             \
}                                                                                         \
                                                                                          \
/* act(p): relu max(p, 0) (NaN stays NaN); silu p * sigmoid(p) = p / (1 + exp(-p)). */   \
static inline VT gn_act_##SUF(VT p, int act)                                              \
{                                                                                         \
    if (act == GN_ACT_RELU)                                                               \
        return SELECT(p < 0, (VT){0}, p);                                                 \
    if (act == GN_ACT_SILU)                                                               \
        return gn_vsilu_##SUF(p);                                                         \
    return p;                                                                             \
}                                                                                         \
                                                                                          \
/* g * act'(p): relu' = [p > 0]; silu' = s (1 + p (1 - s)) with s = sigmoid(p). */       \
static inline VT gn_act_grad_##SUF(VT g, VT p, int act)                                   \
{                                                                                         \
    if (act == GN_ACT_RELU)                                                               \
        return SELECT(p > 0, g, (VT){0});                                                 \
    if (act == GN_ACT_SILU)                                                               \
        return g * gn_vsilu_grad_##SUF(p);                                                \
    return g;                                                                             \
}                                                                                         \
                                                                                          \
/* Moments of x[0:n] in one pass around a shift K, the mean of the first GN_PILOT         \
 * elements: d = x - K;  mean = K + sum(d) / n;  M2 = sum(d^2) - sum(d)^2 / n.            \
 * By Cauchy-Schwarz (K - mean)^2 <= M2 / GN_PILOT, so the cancellation in M2 costs at    \
 * most a factor 1 + n / GN_PILOT in relative error, whatever the data: no E[x^2]-E[x]^2  \
 * blow-up when |mean| >> std. */                                                         \
static inline void gn_chunk_moments_##SUF(const ST *x, ptrdiff_t n, double *mean,         \
                                          double *m2)                                     \
{                                                                                         \
    const ptrdiff_t pilot = n < GN_PILOT ? n : GN_PILOT;                                  \
    VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                                            \
    VT q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};                                            \
    VT d, vk;                                                                             \
    ptrdiff_t i;                                                                          \
    double k, sum_d;                                                                      \
    CT K;                                                                                 \
    d = (VT){0};                                                                          \
    for (i = 0; i + W <= pilot; i += W)                                                   \
        d += gn_vload_##SUF(x + i);                                                       \
    if (i < pilot)                                                                        \
        d += gn_vload_part_##SUF(x + i, pilot - i);                                       \
    k = gn_total_##SUF(d, (VT){0}, (VT){0}, (VT){0}, 0);                                  \
    K = (CT)(k / (double)pilot);                                                          \
    vk = gn_splat_##SUF(K);                                                               \
    for (i = 0; i + 4 * W <= n; i += 4 * W) {                                             \
        d = gn_vload_minus_##SUF(x + i, vk);         s0 += d; q0 = VFMA(d, d, q0);        \
        d = gn_vload_minus_##SUF(x + i + W, vk);     s1 += d; q1 = VFMA(d, d, q1);        \
        d = gn_vload_minus_##SUF(x + i + 2 * W, vk); s2 += d; q2 = VFMA(d, d, q2);        \
        d = gn_vload_minus_##SUF(x + i + 3 * W, vk); s3 += d; q3 = VFMA(d, d, q3);        \
    }                                                                                     \
    for (; i + W <= n; i += W) {                                                          \
        d = gn_vload_minus_##SUF(x + i, vk);         s0 += d; q0 = VFMA(d, d, q0);        \
    }                                                                                     \
    if (i < n) {               /* padded lanes would add (0 - K): mask them out */        \
        VT lane = {0}, dt;                                                                \
        int j;                                                                            \
        for (j = 0; j < W; j++)                                                           \
            lane[j] = j < n - i;                                                          \
        dt = gn_center_##SUF(gn_vload_part_##SUF(x + i, n - i), vk) * lane;               \
        s1 += dt;                                                                         \
        q1 = VFMA(dt, dt, q1);                                                            \
    }                                                                                     \
    sum_d = gn_total_##SUF(s0, s1, s2, s3, 0);                                            \
    *mean = (double)K + sum_d / (double)n;                                                \
    *m2 = gn_total_##SUF(q0, q1, q2, q3, 0) - sum_d * sum_d / (double)n;                  \
}                                                                                         \
                                                                                          \
/* s = x + r over n contiguous elements (stored, so rounded to ST). */                    \
static inline void gn_add_##SUF(const ST *x, const ST *r, ST *s, ptrdiff_t n)             \
{                                                                                         \
    ptrdiff_t i;                                                                          \
    for (i = 0; i + W <= n; i += W)                                                       \
        gn_vstore_##SUF(s + i, gn_vload_##SUF(x + i) + gn_vload_##SUF(r + i));            \
    if (i < n)                                                                            \
        gn_vstore_part_##SUF(s + i, gn_vload_part_##SUF(x + i, n - i)                     \
                             + gn_vload_part_##SUF(r + i, n - i), n - i);                 \
}                                                                                         \
                                                                                          \
/* y = act((x - m) * a + b) over n > 0 contiguous elements; y may be x. With n >= W,      \
 * whole vectors only: aligned ones from the first aligned element, and the first and     \
 * last W elements, computed before any store (in place, the loop may overwrite them)     \
 * and stored after it, over lanes it wrote with the same values. Unless streamed, the    \
 * half-width vectors of 2-byte storage start at y, unaligned: on AMD Zen 5 the split     \
 * ones cost less than an extra first vector (channels of 49 to 64 elements 1.06-1.14x    \
 * faster, long ones the same). So do those with SiLU over up to 16 whole vectors: the    \
 * loop then covers every element, and SiLU's arithmetic outweighs split lines (channels  \
 * of 64 elements: SiLU forward 1.17-1.18x at 1 and 2 threads; 256: 1.04-1.08x). Longer   \
 * channels save too little: 784 or 1024 elements ran 0.93-0.94x at 2 threads, all        \
 * stores split. */                                                                       \
static inline VT gn_affine_vec_##SUF(VT x, VT vm, VT va, VT vb, int act)                  \
{                                                                                         \
    return gn_act_##SUF(VFMA(gn_center_##SUF(x, vm), va, vb), act);                       \
}                                                                                         \
                                                                                          \
/* v stored at p, as a non-temporal store if stream (p aligned). */                       \
static inline void gn_vput_##SUF(ST *p, VT v, int stream)                                 \
{                                                                                         \
    if (stream)                                                                           \
        gn_vstream_##SUF(p, v);                                                           \
    else                                                                                  \
        gn_vstore_##SUF(p, v);                                                            \
}                                                                                         \
                                                                                          \
/* gn_affine's whole vectors from y + head on, up to n; returns where they stopped.       \
 * stream: as non-temporal stores (y + head aligned), fenced by the caller. */            \
static inline __attribute__((always_inline)) ptrdiff_t gn_affine_loop_##SUF(              \
    const ST *x, ST *y, ptrdiff_t head, ptrdiff_t n, VT vm, VT va, VT vb, int act,        \
    ptrdiff_t ahead, int stream)                                                          \
{                                                                                         \
    ptrdiff_t i;                                                                          \
    for (i = head; i + W <= n; i += W) {                                                  \
        const VT v = gn_affine_vec_##SUF(gn_vload_##SUF(x + i), vm, va, vb, act);         \
        if (ahead)                                                                        \
            __builtin_prefetch(x + i + ahead, 0, 2);                                      \
        gn_vput_##SUF(y + i, v, stream);                                                  \
    }                                                                                     \
    return i;                                                                             \
}                                                                                         \
                                                                                          \
/* ahead (elements, 0 for none): the lines that far past those read are asked for as the  \
 * loop goes (the next pair's, so that their fetch overlaps this pair's arithmetic; see   \
 * PREFETCH_BYTES in _kernels.pxi). stream: the aligned vectors as non-temporal stores    \
 * (see STREAM_BYTES there), fenced by the caller; 2-byte storage and SiLU then go        \
 * aligned too. */                                                                        \
static inline void gn_affine_##SUF(const ST *x, ST *y, ptrdiff_t n, CT m, CT a, CT b,     \
                                   int act, ptrdiff_t ahead, int stream)                  \
{                                                                                         \
    const VT vm = gn_splat_##SUF(m), va = gn_splat_##SUF(a), vb = gn_splat_##SUF(b);      \
    const int whole = !stream && act == GN_ACT_SILU && n % W == 0 && n <= 16 * W;         \
    const ptrdiff_t head = (sizeof(ST) == 2 && !stream) || whole ? 0                      \
                                                                 : gn_head_##SUF(y, n);   \
    ptrdiff_t i;                                                                          \
    VT first = {0}, last = {0};                                                           \
    if (n < W) {                                                                          \
        gn_vstore_part_##SUF(y, gn_affine_vec_##SUF(gn_vload_part_##SUF(x, n), vm, va,    \
                                                    vb, act), n);                         \
        return;                                                                           \
    }                                                                                     \
    if (!whole) {                                                                         \
        first = gn_affine_vec_##SUF(gn_vload_##SUF(x), vm, va, vb, act);                  \
        last = gn_affine_vec_##SUF(gn_vload_##SUF(x + n - W), vm, va, vb, act);           \
    }                                                                                     \
    if (stream)                                                                           \
        i = gn_affine_loop_##SUF(x, y, head, n, vm, va, vb, act, ahead, 1);               \
    else if (act == GN_ACT_NONE)                                                          \
        i = gn_affine_loop_##SUF(x, y, head, n, vm, va, vb, GN_ACT_NONE, ahead, 0);       \
    else                                                                                  \
        i = gn_affine_loop_##SUF(x, y, head, n, vm, va, vb, act, ahead, 0);               \
    if (head > 0)                                                                         \
        gn_vstore_##SUF(y, first);                                                        \
    if (i < n)                                                                            \
        gn_vstore_##SUF(y + n - W, last);                                                 \
}                                                                                         \
                                                                                          \
/* The gradient reaching the affine: g = dy * act'((x - m) * a + b) (g = dy without). */  \
static inline VT gn_pre_grad_##SUF(VT dy, VT xc, VT va, VT vb, int act)                   \
{                                                                                         \
    return act == GN_ACT_NONE ? dy : gn_act_grad_##SUF(dy, VFMA(xc, va, vb), act);        \
}                                                                                         \
                                                                                          \
/* sums = [sum(g), sum(g * (x - m))] over n contiguous elements, each as the vector        \
 * (a0 + a1) + (a2 + a3) of its accumulators (gn_lanes_total finishes it). The last n % W  \
 * elements (when n >= W) come from the vector ending at n, its lanes already summed      \
 * selected out: no copying through the stack. Inlined into one copy per activation      \
 * below, so the copy without one keeps its 8 accumulators in registers. */               \
static inline __attribute__((always_inline)) void gn_grad_sums_loop_##SUF(                \
    const ST *dy, const ST *x, ptrdiff_t n, VT vm, VT va, VT vb, int act, ST *gs,         \
    VT *sums)                                                                             \
{                                                                                         \
    VT a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                            \
    VT b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};                                            \
    VT g, xc, lane;                                                                       \
    ptrdiff_t i;                                                                          \
    int j;                                                                                \
    for (i = 0; i + 4 * W <= n; i += 4 * W) {                                             \
        xc = gn_vload_minus_##SUF(x + i, vm);                                             \
        g = gn_pre_grad_##SUF(gn_vload_##SUF(dy + i), xc, va, vb, act);                   \
        GN_KEEP(g);                                                                       \
        if (gs != NULL) gn_vstore_##SUF(gs + i, g);                                       \
        a0 += g; b0 = VFMA(g, xc, b0);                                                    \
        xc = gn_vload_minus_##SUF(x + i + W, vm);                                         \
        g = gn_pre_grad_##SUF(gn_vload_##SUF(dy + i + W), xc, va, vb, act);               \
        GN_KEEP(g);                                                                       \
        if (gs != NULL) gn_vstore_##SUF(gs + i + W, g);                                   \
        a1 += g; b1 = VFMA(g, xc, b1);                                                    \
        xc = gn_vload_minus_##SUF(x + i + 2 * W, vm);                                     \
        g = gn_pre_grad_##SUF(gn_vload_##SUF(dy + i + 2 * W), xc, va, vb, act);           \
        GN_KEEP(g);                                                                       \
        if (gs != NULL) gn_vstore_##SUF(gs + i + 2 * W, g);                               \
        a2 += g; b2 = VFMA(g, xc, b2);                                                    \
        xc = gn_vload_minus_##SUF(x + i + 3 * W, vm);                                     \
        g = gn_pre_grad_##SUF(gn_vload_##SUF(dy + i + 3 * W), xc, va, vb, act);           \
        GN_KEEP(g);                                                                       \
        if (gs != NULL) gn_vstore_##SUF(gs + i + 3 * W, g);                               \
        a3 += g; b3 = VFMA(g, xc, b3);                                                    \
    }                                                                                     \
    for (; i + W <= n; i += W) {                                                          \
        xc = gn_vload_minus_##SUF(x + i, vm);                                             \
        g = gn_pre_grad_##SUF(gn_vload_##SUF(dy + i), xc, va, vb, act);                   \
        GN_KEEP(g);                                                                       \
        if (gs != NULL) gn_vstore_##SUF(gs + i, g);                                       \
        a0 += g; b0 = VFMA(g, xc, b0);                                                    \
    }                                                                                     \
    if (i < n && n >= W) {                                                                \
        for (j = 0; j < W; j++)                                                           \
            lane[j] = (CT)j;                                                              \
        xc = gn_vload_minus_##SUF(x + n - W, vm);                                         \
        g = gn_pre_grad_##SUF(gn_vload_##SUF(dy + n - W), xc, va, vb, act);               \
        if (gs != NULL) gn_vstore_##SUF(gs + n - W, g);                                   \
        xc = SELECT(lane >= (CT)(W - (n - i)), xc, (VT){0});                              \
        g = SELECT(lane >= (CT)(W - (n - i)), g, (VT){0});                                \
        a1 += g; b1 = VFMA(g, xc, b1);                                                    \
    } else if (i < n) {              /* padded dy is 0, so padded lanes add 0 */          \
        xc = gn_center_##SUF(gn_vload_part_##SUF(x + i, n - i), vm);                      \
        g = gn_pre_grad_##SUF(gn_vload_part_##SUF(dy + i, n - i), xc, va, vb, act);       \
        if (gs != NULL)                                                                   \
            gn_vstore_part_##SUF(gs + i, g, n - i);                                       \
        a1 += g; b1 = VFMA(g, xc, b1);                                                    \
    }                                                                                     \
    sums[0] = (a0 + a1) + (a2 + a3);                                                      \
    sums[1] = (b0 + b1) + (b2 + b3);                                                      \
}                                                                                         \
                                                                                          \
/* gn_grad_sums_loop with a copy of its own for no activation. */                        \
static inline __attribute__((always_inline)) void gn_grad_sums_act_##SUF(                 \
    const ST *dy, const ST *x, ptrdiff_t n, VT vm, VT va, VT vb, int act, ST *gs,         \
    VT *sums)                                                                             \
{                                                                                         \
    if (act == GN_ACT_NONE)                                                               \
        gn_grad_sums_loop_##SUF(dy, x, n, vm, va, vb, GN_ACT_NONE, NULL, sums);           \
    else                                                                                  \
        gn_grad_sums_loop_##SUF(dy, x, n, vm, va, vb, act, gs, sums);                     \
}                                                                                         \
                                                                                          \
static inline void gn_grad_sums_##SUF(const ST *dy, const ST *x, ptrdiff_t n, CT m, CT a,  \
                                      CT b, int act, ST *gs, double *out)                 \
{                                                                                         \
    VT sums[2];                                                                           \
    gn_grad_sums_act_##SUF(dy, x, n, gn_splat_##SUF(m), gn_splat_##SUF(a),                \
                           gn_splat_##SUF(b), act, gs, sums);                             \
    out[0] = gn_lanes_total_##SUF(sums[0], 0);                                            \
    out[1] = gn_lanes_total_##SUF(sums[1], 0);                                            \
}                                                                                         \
                                                                                          \
/* dx = a * g + (c1 * (x - m) + c0), g as in gn_grad_sums (with the same a and b). */     \
static inline VT gn_grad_x_vec_##SUF(VT dy, VT x, VT vm, VT va, VT vb, VT v1, VT v0,       \
                                     int act)                                             \
{                                                                                         \
    VT xc = gn_center_##SUF(x, vm);                                                       \
    return VFMA(va, gn_pre_grad_##SUF(dy, xc, va, vb, act), VFMA(v1, xc, v0));            \
}                                                                                         \
                                                                                          \
/* With n >= W, only whole vectors: one unaligned at the start, aligned ones from the     \
 * first aligned element, one ending at n. Overlapping lanes are written twice with the   \
 * same value (every lane computes alike), so no partial vector goes through the stack;   \
 * the first and last are computed before any store, so dy may be dx (g kept there by     \
 * the sums). stream: the aligned ones as non-temporal stores, fenced by the caller. */   \
static inline __attribute__((always_inline)) void gn_grad_x_loop_##SUF(                   \
    const ST *dy, const ST *x, ST *dx, ptrdiff_t n, VT vm, VT va, VT vb, VT v1, VT v0,    \
    int act, int stream)                                                                  \
{                                                                                         \
    const ptrdiff_t head = n < W ? 0 : gn_head_##SUF(dx, n);                              \
    ptrdiff_t i;                                                                          \
    VT first, last;                                                                       \
    if (n < W) {                                                                          \
        gn_vstore_part_##SUF(dx, gn_grad_x_vec_##SUF(gn_vload_part_##SUF(dy, n),          \
            gn_vload_part_##SUF(x, n), vm, va, vb, v1, v0, act), n);                      \
        return;                                                                           \
    }                                                                                     \
    first = gn_grad_x_vec_##SUF(gn_vload_##SUF(dy), gn_vload_##SUF(x), vm, va, vb, v1, v0,\
                                act);                                                     \
    last = gn_grad_x_vec_##SUF(gn_vload_##SUF(dy + n - W), gn_vload_##SUF(x + n - W), vm, \
                               va, vb, v1, v0, act);                                      \
    if (stream) {                                                                         \
        for (i = head; i + W <= n; i += W)                                                \
            gn_vstream_##SUF(dx + i, gn_grad_x_vec_##SUF(gn_vload_##SUF(dy + i),          \
                gn_vload_##SUF(x + i), vm, va, vb, v1, v0, act));                         \
    } else {                                                                              \
        for (i = head; i + W <= n; i += W)                                                \
            gn_vstore_##SUF(dx + i, gn_grad_x_vec_##SUF(gn_vload_##SUF(dy + i),           \
                gn_vload_##SUF(x + i), vm, va, vb, v1, v0, act));                         \
    }                                                                                     \
    if (head > 0)                                                                         \
        gn_vstore_##SUF(dx, first);                                                       \
    if (i < n)                                                                            \
        gn_vstore_##SUF(dx + n - W, last);                                                \
}                                                                                         \
                                                                                          \
static inline void gn_grad_x_##SUF(const ST *dy, const ST *x, ST *dx, ptrdiff_t n, CT m,  \
                                   CT a, CT b, CT c1, CT c0, int act, int stream)         \
{                                                                                         \
    const VT vm = gn_splat_##SUF(m), va = gn_splat_##SUF(a), vb = gn_splat_##SUF(b),      \
             v1 = gn_splat_##SUF(c1), v0 = gn_splat_##SUF(c0);                            \
    if (act == GN_ACT_NONE)                                                               \
        gn_grad_x_loop_##SUF(dy, x, dx, n, vm, va, vb, v1, v0, GN_ACT_NONE, stream);      \
    else                                                                                  \
        gn_grad_x_loop_##SUF(dy, x, dx, n, vm, va, vb, v1, v0, act, stream);              \
    if (stream)                                                                           \
        gn_stream_fence();                                                                \
}                                                                                         \
                                                                                          \
/* One pair's Cg channels (channels-first): channel k at dy + k * dys, x + k * xs,         \
 * dx + k * dxs, with a_k = w_k * r rounded to CT as in the forward pass (w NULL: 1) and   \
 * b_k = bias_k (NULL: 0). Sums: each channel is cut into spans of `span` elements, spans \
 * into chunks of `chunk`; the chunks' gn_grad_sums are added in order in float64 per     \
 * span, the spans' sums in order per channel, so a caller summing spans in parallel gets \
 * the same bits. With an activation g costs an exp and a division per element: gs (not   \
 * NULL, storage of the compute type) keeps each g as it is summed, channel k at          \
 * gs + k * gss, and gn_pair_grad_x given dx as dy, with no activation, reads it back     \
 * instead of computing it again (the same values, so the same bits). */                  \
static inline CT gn_scale_##SUF(const CT *w, ptrdiff_t k, double r)                       \
{                                                                                         \
    return (CT)((w == NULL ? 1.0 : (double)w[k]) * r);                                    \
}                                                                                         \
                                                                                          \
/* The sums of n elements of channel k, with its a_k and b_k. */                          \
static inline __attribute__((always_inline)) void gn_channel_sums_##SUF(                  \
    const ST *dy, const ST *x, ptrdiff_t n, VT vm, const CT *w, const CT *bias,           \
    ptrdiff_t k, double r, int act, ST *gs, VT *sums)                                     \
{                                                                                         \
    gn_grad_sums_act_##SUF(dy, x, n, vm, gn_splat_##SUF(gn_scale_##SUF(w, k, r)),         \
                           gn_splat_##SUF(bias == NULL ? (CT)0 : bias[k]), act, gs, sums);\
}                                                                                         \
                                                                                          \
static inline __attribute__((always_inline)) void gn_pair_grad_sums_body_##SUF(          \
    const ST *dy, const ST *x, ptrdiff_t Cg, ptrdiff_t S, ptrdiff_t dys, ptrdiff_t xs,    \
    ptrdiff_t chunk, ptrdiff_t span, CT m, double r, const CT *w, const CT *bias, int act,\
    ST *gs, ptrdiff_t gss, double *db, double *ds)                                        \
{                                                                                         \
    const VT vm = gn_splat_##SUF(m);                                                      \
    VT sums[2];                                                                           \
    double sa, sb, ta, tb;                                                                \
    ptrdiff_t k = 0, j, end;                                                              \
    if (S <= chunk) {          /* one chunk: its sums are the channel's, bit for bit */   \
        if (GN_TOTALS && W == GN_W32 && sizeof(CT) == 4)                                  \
            for (; k + W <= Cg; k += W) {                                                 \
                VT a[W], b[W];                                                            \
                for (j = 0; j < W; j++) {                                                 \
                    gn_channel_sums_##SUF(dy + (k + j) * dys, x + (k + j) * xs, S, vm, w, \
                                          bias, k + j, r, act,                            \
                                          gs == NULL ? NULL : gs + (k + j) * gss, sums);  \
                    a[j] = sums[0];                                                       \
                    b[j] = sums[1];                                                       \
                }                                                                         \
                gn_lanes_totals((const void *)a, db + k);                                 \
                gn_lanes_totals((const void *)b, ds + k);                                 \
            }                                                                             \
        for (; k < Cg; k++) {                                                             \
            gn_channel_sums_##SUF(dy + k * dys, x + k * xs, S, vm, w, bias, k, r, act,    \
                                  gs == NULL ? NULL : gs + k * gss, sums);                \
            db[k] = gn_lanes_total_##SUF(sums[0], 0);                                     \
            ds[k] = gn_lanes_total_##SUF(sums[1], 0);                                     \
        }                                                                                 \
        return;                                                                           \
    }                                                                                     \
    for (k = 0; k < Cg; k++) {                                                            \
        sa = 0;                                                                           \
        sb = 0;                                                                           \
        for (j = 0; j < S; ) {                                                            \
            ta = 0;                                                                       \
            tb = 0;                                                                       \
            end = S - j < span ? S : j + span;                                            \
            for (; j < end; j += chunk) {                                                 \
                gn_channel_sums_##SUF(dy + k * dys + j, x + k * xs + j,                   \
                                      end - j < chunk ? end - j : chunk, vm, w, bias, k,  \
                                      r, act, gs == NULL ? NULL : gs + k * gss + j, sums);\
                ta = ta + gn_lanes_total_##SUF(sums[0], 0);                               \
                tb = tb + gn_lanes_total_##SUF(sums[1], 0);                               \
            }                                                                             \
            sa = sa + ta;                                                                 \
            sb = sb + tb;                                                                 \
        }                                                                                 \
        db[k] = sa;                                                                       \
        ds[k] = sb;                                                                       \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* gn_pair_grad_sums_body with a copy of its own for no activation: a runtime activation \
 * in the channel loop made every channel of that copy branch and grow (AMD Zen 5,       \
 * channels of 64 elements: sums 1.1x faster). */                                         \
static void gn_pair_grad_sums_##SUF(const ST *dy, const ST *x, ptrdiff_t Cg, ptrdiff_t S, \
                                    ptrdiff_t dys, ptrdiff_t xs, ptrdiff_t chunk,         \
                                    ptrdiff_t span, CT m, double r, const CT *w,          \
                                    const CT *bias, int act, ST *gs, ptrdiff_t gss,       \
                                    double *db, double *ds)                               \
{                                                                                         \
    if (act == GN_ACT_NONE)                                                               \
        gn_pair_grad_sums_body_##SUF(dy, x, Cg, S, dys, xs, chunk, span, m, r, w, bias,   \
                                     GN_ACT_NONE, NULL, gss, db, ds);                     \
    else                                                                                  \
        gn_pair_grad_sums_body_##SUF(dy, x, Cg, S, dys, xs, chunk, span, m, r, w, bias,   \
                                     act, gs, gss, db, ds);                               \
}                                                                                         \
                                                                                          \
static inline __attribute__((always_inline)) void gn_pair_grad_x_body_##SUF(             \
    const ST *dy, const ST *x, ST *dx, ptrdiff_t Cg, ptrdiff_t S, ptrdiff_t dys,          \
    ptrdiff_t xs, ptrdiff_t dxs, CT m, double r, const CT *w, const CT *bias, CT c1,      \
    CT c0, int act, int stream)                                                           \
{                                                                                         \
    const VT vm = gn_splat_##SUF(m), v1 = gn_splat_##SUF(c1), v0 = gn_splat_##SUF(c0);    \
    ptrdiff_t k;                                                                          \
    for (k = 0; k < Cg; k++)                                                              \
        gn_grad_x_loop_##SUF(dy + k * dys, x + k * xs, dx + k * dxs, S, vm,               \
                             gn_splat_##SUF(gn_scale_##SUF(w, k, r)),                     \
                             gn_splat_##SUF(bias == NULL ? (CT)0 : bias[k]), v1, v0, act, \
                             stream);                                                     \
    if (stream)                                                                           \
        gn_stream_fence();                                                                \
}                                                                                         \
                                                                                          \
/* gn_pair_grad_x_body with copies of its own for no activation, with and without        \
 * non-temporal stores (as gn_pair_grad_sums). */                                         \
static void gn_pair_grad_x_##SUF(const ST *dy, const ST *x, ST *dx, ptrdiff_t Cg,         \
                                 ptrdiff_t S, ptrdiff_t dys, ptrdiff_t xs, ptrdiff_t dxs, \
                                 CT m, double r, const CT *w, const CT *bias, CT c1,      \
                                 CT c0, int act, int stream)                              \
{                                                                                         \
    if (act == GN_ACT_NONE && !stream)                                                    \
        gn_pair_grad_x_body_##SUF(dy, x, dx, Cg, S, dys, xs, dxs, m, r, w, bias, c1, c0,  \
                                  GN_ACT_NONE, 0);                                        \
    else if (act == GN_ACT_NONE)                                                          \
        gn_pair_grad_x_body_##SUF(dy, x, dx, Cg, S, dys, xs, dxs, m, r, w, bias, c1, c0,  \
                                  GN_ACT_NONE, 1);                                        \
    else                                                                                  \
        gn_pair_grad_x_body_##SUF(dy, x, dx, Cg, S, dys, xs, dxs, m, r, w, bias, c1, c0,  \
                                  act, stream);                                           \
}                                                                                         \
                                                                                          \
/* y = silu(y) over n contiguous elements, in place: whole vectors from y, then the last  \
 * n % W as a partial one, so that each element goes through silu once. */                \
static inline void gn_silu_in_place_##SUF(ST *y, ptrdiff_t n)                             \
{                                                                                         \
    ptrdiff_t i;                                                                          \
    for (i = 0; i + W <= n; i += W)                                                       \
        gn_vstore_##SUF(y + i, gn_vsilu_##SUF(gn_vload_##SUF(y + i)));                    \
    if (i < n)                                                                            \
        gn_vstore_part_##SUF(y + i, gn_vsilu_##SUF(gn_vload_part_##SUF(y + i, n - i)),    \
                             n - i);                                                      \
}                                                                                         \
                                                                                          \
/* gn_affine over Cg channels of S elements, channel k at x + k * xs and y + k * ys, with \
 * a_k and b_k as in gn_pair_grad_sums, asking for the lines `ahead` past each. SiLU over \
 * channels shorter than 4 vectors and not whole ones (gn_affine spends a vector more on  \
 * each: 4 for the 3.06 of 49 elements) goes in two steps where y holds the compute type  \
 * and its channels are contiguous: the affine per channel, then SiLU over the pair's     \
 * outputs as one run, from the same values, so with the same bits (AMD Zen 5, SiLU       \
 * forward of 1 x 2048 x 7 x 7: 1.14x; 1 x 256 x 3 x 3: 1.12x). stream: as gn_affine. */  \
static void gn_pair_affine_##SUF(const ST *x, ST *y, ptrdiff_t Cg, ptrdiff_t S,           \
                                 ptrdiff_t xs, ptrdiff_t ys, CT m, double r, const CT *w, \
                                 const CT *bias, int act, ptrdiff_t ahead, int stream)    \
{                                                                                         \
    const int two_steps = act == GN_ACT_SILU && sizeof(ST) == sizeof(CT) && ys == S       \
                          && S % W != 0 && S < 4 * W;                                     \
    const int each = two_steps ? GN_ACT_NONE : act;                                       \
    ptrdiff_t k;                                                                          \
    if (stream)                                                                           \
        for (k = 0; k < Cg; k++)                                                          \
            gn_affine_##SUF(x + k * xs, y + k * ys, S, m, gn_scale_##SUF(w, k, r),        \
                            bias == NULL ? (CT)0 : bias[k], each, ahead, 1);              \
    else if (ahead == 0)          /* a copy without the prefetch */                       \
        for (k = 0; k < Cg; k++)                                                          \
            gn_affine_##SUF(x + k * xs, y + k * ys, S, m, gn_scale_##SUF(w, k, r),        \
                            bias == NULL ? (CT)0 : bias[k], each, 0, 0);                  \
    else                                                                                  \
        for (k = 0; k < Cg; k++)                                                          \
            gn_affine_##SUF(x + k * xs, y + k * ys, S, m, gn_scale_##SUF(w, k, r),        \
                            bias == NULL ? (CT)0 : bias[k], each, ahead, 0);              \
    if (stream)                                                                           \
        gn_stream_fence();                                                                \
    if (two_steps)                                                                        \
        gn_silu_in_place_##SUF(y, Cg * S);                                                \
}                                                                                         \
                                                                                          \
/* Channels-last. x is (rows, C) with row stride `stride` (elements) and unit channel     \
 * stride. Per channel c, one pass around K_c, the mean of the first GN_PILOT_ROWS rows   \
 * (same bound as gn_chunk_moments, with GN_PILOT_ROWS): mean[c], m2[c]. Channels go in   \
 * blocks of GN_ROW_VECS or 4 vectors held in registers, then one (possibly               \
 * zero-padded) vector. Blocks ask for the lines of the next block, or (ahead > 0) of the \
 * same block `ahead` elements on (gn_prefetch_lines). */                                 \
static inline void gn_lanes_out_##SUF(VT k, VT s, VT q, ptrdiff_t width, ptrdiff_t rows,  \
                                      double *mean, double *m2)                           \
{                                                                                         \
    CT ks[W], ss[W], qs[W];                                                               \
    ptrdiff_t j;                                                                          \
    if (width == W) {                                                                     \
        _Generic(k, gn_vf32: gn_moments_lanes_f32, gn_vf64: gn_moments_lanes_f64)(        \
            k, s, q, (double)rows, mean, m2);                                             \
        return;                                                                           \
    }                                                                                     \
    memcpy(ks, &k, sizeof ks);                                                            \
    memcpy(ss, &s, sizeof ss);                                                            \
    memcpy(qs, &q, sizeof qs);                                                            \
    for (j = 0; j < width; j++) {                                                         \
        mean[j] = (double)ks[j] + (double)ss[j] / (double)rows;                           \
        m2[j] = (double)qs[j] - (double)ss[j] * (double)ss[j] / (double)rows;             \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* The moments of the B vectors of channels at x (B a constant: the accumulators stay in  \
 * registers), asking for the lines `ahead` elements on, or (0) of the next block. */     \
static inline __attribute__((always_inline)) void gn_rows_block_moments_##SUF(            \
    const ST *x, ptrdiff_t rows, ptrdiff_t pilot, ptrdiff_t stride, ptrdiff_t ahead,      \
    const int B, double *mean, double *m2)                                                \
{                                                                                         \
    const ptrdiff_t next = ahead > 0 ? ahead : B * W;                                     \
    VT k[GN_ROW_VECS], s[GN_ROW_VECS], q[GN_ROW_VECS], d;                                 \
    const CT inv = (CT)1 / (CT)pilot;                                                     \
    const ST *p = x;                                                                      \
    ptrdiff_t r;                                                                          \
    int j;                                                                                \
    GN_UNROLL for (j = 0; j < B; j++)                                                     \
        k[j] = s[j] = q[j] = (VT){0};                                                     \
    for (r = 0; r < pilot; r++, p += stride)                                              \
        GN_UNROLL for (j = 0; j < B; j++)                                                 \
            k[j] += gn_vload_##SUF(p + j * W);                                            \
    GN_UNROLL for (j = 0; j < B; j++)                                                     \
        k[j] *= inv;                                                                      \
    p = x;                                                                                \
    for (r = 0; r < rows; r++, p += stride) {                                             \
        gn_prefetch_lines(p + next, B * W * sizeof(ST));                                  \
        GN_UNROLL for (j = 0; j < B; j++) {                                               \
            d = gn_vload_minus_##SUF(p + j * W, k[j]);                                    \
            s[j] += d;                                                                    \
            q[j] = VFMA(d, d, q[j]);                                                      \
        }                                                                                 \
    }                                                                                     \
    GN_UNROLL for (j = 0; j < B; j++)                                                     \
        gn_lanes_out_##SUF(k[j], s[j], q[j], W, rows, mean + j * W, m2 + j * W);          \
}                                                                                         \
                                                                                          \
static inline void gn_rows_moments_##SUF(const ST *x, ptrdiff_t rows, ptrdiff_t C,        \
                                         ptrdiff_t stride, ptrdiff_t ahead, double *mean, \
                                         double *m2)                                      \
{                                                                                         \
    const ptrdiff_t pilot = rows < GN_PILOT_ROWS ? rows : GN_PILOT_ROWS;                  \
    const CT inv = (CT)1 / (CT)pilot;                                                     \
    ptrdiff_t c = 0, r, width;                                                            \
    if (GN_ROW_VECS > 4 && stride * sizeof(ST) % GN_ALIASING_BYTES == 0)                  \
        for (; c + GN_ROW_VECS * W <= C; c += GN_ROW_VECS * W)                            \
            gn_rows_block_moments_##SUF(x + c, rows, pilot, stride, ahead, GN_ROW_VECS,   \
                                        mean + c, m2 + c);                                \
    for (; c + 4 * W <= C; c += 4 * W)                                                    \
        gn_rows_block_moments_##SUF(x + c, rows, pilot, stride, ahead, 4, mean + c,       \
                                    m2 + c);                                              \
    for (; c < C; c += width) {                                                           \
        VT k = {0}, s = {0}, q = {0}, d;                                                  \
        const ST *p = x + c;                                                              \
        width = C - c < W ? C - c : W;                                                    \
        for (r = 0; r < pilot; r++, p += stride)                                          \
            k += width == W ? gn_vload_##SUF(p) : gn_vload_part_##SUF(p, width);          \
        k *= inv;                                                                         \
        p = x + c;                                                                        \
        for (r = 0; r < rows; r++, p += stride) {                                         \
            d = gn_center_##SUF(width == W ? gn_vload_##SUF(p)                            \
                                           : gn_vload_part_##SUF(p, width), k);           \
            s += d;                                                                       \
            q = VFMA(d, d, q);                                                            \
        }                                                                                 \
        gn_lanes_out_##SUF(k, s, q, width, rows, mean + c, m2 + c);                       \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* The channels before x reaches vector alignment, when every row of C channels, stride   \
 * elements apart, starts alike (else 0): rows take them as one partial vector, so        \
 * that the full vectors after it load and store whole cache lines (NumPy's buffers sit   \
 * at 16 mod 64; lanes compute alike, so the bits do not depend on the alignment). */     \
static inline ptrdiff_t gn_rows_head_##SUF(const ST *x, ptrdiff_t stride, ptrdiff_t C)    \
{                                                                                         \
    return stride % W == 0 && C >= GN_HEAD_CHANNELS ? gn_head_##SUF(x, C) : 0;            \
}                                                                                         \
                                                                                          \
/* y = act((x - m) * a + b) over n < W channels of one row. */                            \
static inline void gn_rows_affine_part_##SUF(const ST *x, ST *y, ptrdiff_t n, const CT *m,\
                                             const CT *a, const CT *b, int act)           \
{                                                                                         \
    gn_vstore_part_##SUF(y, gn_affine_vec_##SUF(gn_vload_part_##SUF(x, n),                \
        gn_vload_cpart_##SUF(m, n), gn_vload_cpart_##SUF(a, n),                           \
        gn_vload_cpart_##SUF(b, n), act), n);                                             \
}                                                                                         \
                                                                                          \
/* y[r, c] = act((x[r, c] - m[c]) * a[c] + b[c]) over a (rows, C) block, each row as a    \
 * partial vector of `head` channels, full vectors and a partial one. */                  \
static inline __attribute__((always_inline)) void gn_rows_affine_loop_##SUF(              \
    const ST *x, ST *y, ptrdiff_t rows, ptrdiff_t C, ptrdiff_t xs, ptrdiff_t ys,          \
    const CT *m, const CT *a, const CT *b, int act, ptrdiff_t head, ptrdiff_t ahead)      \
{                                                                                         \
    ptrdiff_t r, c;                                                                       \
    for (r = 0; r < rows; r++) {                                                          \
        const ST *xr = x + r * xs;                                                        \
        ST *yr = y + r * ys;                                                              \
        if (ahead)                                                                        \
            gn_prefetch_lines_low(xr + ahead, (size_t)C * sizeof(ST));                    \
        if (head > 0)                                                                     \
            gn_rows_affine_part_##SUF(xr, yr, head, m, a, b, act);                        \
        for (c = head; c + W <= C; c += W)                                                \
            gn_vstore_##SUF(yr + c, gn_affine_vec_##SUF(gn_vload_##SUF(xr + c),           \
                gn_vload_c_##SUF(m + c), gn_vload_c_##SUF(a + c),                         \
                gn_vload_c_##SUF(b + c), act));                                           \
        if (c < C)                                                                        \
            gn_rows_affine_part_##SUF(xr + c, yr + c, C - c, m + c, a + c, b + c, act);   \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* The W values p[C - W + head], ..., p[C - 1], p[0], ..., p[head - 1] (0 <= head < W):   \
 * the coefficients of a vector that crosses from one row of C channels into the next. */ \
static inline VT gn_vload_wrap_##SUF(const CT *p, ptrdiff_t C, ptrdiff_t head)            \
{                                                                                         \
    CT t[W];                                                                              \
    memcpy(t, p + C - W + head, (size_t)(W - head) * sizeof(CT));                         \
    memcpy(t + W - head, p, (size_t)head * sizeof(CT));                                   \
    return gn_vload_c_##SUF(t);                                                           \
}                                                                                         \
                                                                                          \
/* Rows of C channels with no gap between them (C a multiple of W) as one run, in whole   \
 * vectors from y + head on, head < W (the elements before x, or y when streaming,        \
 * reaches vector alignment): each row's last vector takes the next row's first head      \
 * elements, with coefficient vectors built once (channels C - W + head to C - 1, then 0  \
 * to head - 1). Only the block's first head and last W - head elements go as partial     \
 * vectors. */                                                                            \
static inline __attribute__((always_inline)) void gn_run_affine_loop_##SUF(               \
    const ST *x, ST *y, ptrdiff_t rows, ptrdiff_t C, const CT *m, const CT *a,            \
    const CT *b, int act, ptrdiff_t head, ptrdiff_t ahead, int stream)                    \
{                                                                                         \
    const VT wm = gn_vload_wrap_##SUF(m, C, head), wa = gn_vload_wrap_##SUF(a, C, head);  \
    const VT wb = gn_vload_wrap_##SUF(b, C, head);                                        \
    ptrdiff_t r, c;                                                                       \
    if (head > 0)                                                                         \
        gn_rows_affine_part_##SUF(x, y, head, m, a, b, act);                              \
    for (r = 0; r < rows; r++) {                                                          \
        const ST *xr = x + r * C;                                                         \
        ST *yr = y + r * C;                                                               \
        if (ahead)                                                                        \
            gn_prefetch_lines_low(xr + ahead, (size_t)C * sizeof(ST));                    \
        for (c = head; c + W <= C; c += W)                                                \
            gn_vput_##SUF(yr + c, gn_affine_vec_##SUF(gn_vload_##SUF(xr + c),             \
                              gn_vload_c_##SUF(m + c), gn_vload_c_##SUF(a + c),           \
                              gn_vload_c_##SUF(b + c), act), stream);                     \
        if (head == 0)                                                                    \
            continue;                                                                     \
        if (r + 1 == rows) {                                                              \
            gn_rows_affine_part_##SUF(xr + c, yr + c, C - c, m + c, a + c, b + c, act);   \
            break;                                                                        \
        }                                                                                 \
        gn_vput_##SUF(yr + c,                                                             \
                      gn_affine_vec_##SUF(gn_vload_##SUF(xr + c), wm, wa, wb, act),       \
                      stream);                                                            \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* ahead (elements, 0 for none): each row asks for its lines that far on into L2 (the     \
 * next sample's, whose moments' pass then finds them there). Rows with no gap between    \
 * them go as one run (gn_run_affine_loop), its vectors at x's alignment, or with stream  \
 * at y's, as non-temporal stores (see STREAM_BYTES in _kernels.pxi; the caller aligns    \
 * the coefficients likewise): no partial vectors per row (AMD Zen 5, float32 at 1        \
 * thread: 1 x 64 x 32 x 32 1.28x, with SiLU 1.38x; 8 x 256 x 56 x 56, streamed, 1.11x    \
 * and 1.26x; other tensors in L3 1.00-1.04x). Other rows each go as a head               \
 * (gn_rows_head; not with SiLU, whose arithmetic outweighs split lines: 0.99x as fast    \
 * with one), full vectors and a partial one. */                                          \
static inline void gn_rows_affine_##SUF(const ST *x, ST *y, ptrdiff_t rows, ptrdiff_t C,  \
                                        ptrdiff_t xs, ptrdiff_t ys, const CT *m,          \
                                        const CT *a, const CT *b, int act,                \
                                        ptrdiff_t ahead, int stream)                      \
{                                                                                         \
    const int run = gn_rows_run(C, xs, ys, W);                                            \
    if (run && stream) {                                                                  \
        gn_run_affine_loop_##SUF(x, y, rows, C, m, a, b, act, gn_head_##SUF(y, W), ahead, \
                                 1);                                                      \
        gn_stream_fence();                                                                \
    } else if (run && act == GN_ACT_NONE) {                                               \
        gn_run_affine_loop_##SUF(x, y, rows, C, m, a, b, GN_ACT_NONE,                     \
                                 gn_head_##SUF(x, W), ahead, 0);                          \
    } else if (run) {                                                                     \
        gn_run_affine_loop_##SUF(x, y, rows, C, m, a, b, act, gn_head_##SUF(x, W), ahead, \
                                 0);                                                      \
    } else {                                                                              \
        gn_rows_affine_loop_##SUF(x, y, rows, C, xs, ys, m, a, b, act,                    \
                                  act == GN_ACT_SILU ? 0 : gn_rows_head_##SUF(x, xs, C),  \
                                  ahead);                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* Per channel over a (rows, C) block: db[c] = sum(g), ds[c] = sum(g * (x - m[c])), with  \
 * g = dy * act'((x - m[c]) * a[c] + b[c]); each channel's lane accumulates the rows in    \
 * order. Channels go in blocks of 4 vectors (4 independent sums, whole cache lines per    \
 * row), then one (possibly zero-padded) vector at a time. gs (not NULL): each g is       \
 * kept there too, rows gss apart, for a grad_x pass to read back (as in                  \
 * gn_pair_grad_sums). */                                                                 \
static inline void gn_lanes_sums_##SUF(VT sa, VT sb, ptrdiff_t width, double *db,          \
                                       double *ds)                                        \
{                                                                                         \
    CT as[W], bs[W];                                                                      \
    ptrdiff_t j;                                                                          \
    memcpy(as, &sa, sizeof as);                                                           \
    memcpy(bs, &sb, sizeof bs);                                                           \
    for (j = 0; j < width; j++) {                                                         \
        db[j] = (double)as[j];                                                            \
        ds[j] = (double)bs[j];                                                            \
    }                                                                                     \
}                                                                                         \
                                                                                          \
static inline __attribute__((always_inline)) void gn_rows_grad_sums_loop_##SUF(           \
    const ST *dy, const ST *x, ptrdiff_t rows, ptrdiff_t C, ptrdiff_t ds_, ptrdiff_t xs,  \
    const CT *m, const CT *a, const CT *b, int act, ST *gs, ptrdiff_t gss, double *db,    \
    double *ds)                                                                           \
{                                                                                         \
    ptrdiff_t c = 0, r, width;                                                            \
    for (; c + 4 * W <= C; c += 4 * W) {                                                  \
        const VT vm0 = gn_vload_c_##SUF(m + c), vm1 = gn_vload_c_##SUF(m + c + W);        \
        const VT vm2 = gn_vload_c_##SUF(m + c + 2 * W);                                   \
        const VT vm3 = gn_vload_c_##SUF(m + c + 3 * W);                                   \
        VT sa0 = {0}, sa1 = {0}, sa2 = {0}, sa3 = {0}, sb0 = {0}, sb1 = {0}, sb2 = {0};   \
        VT sb3 = {0}, xc, g;                                                              \
        const ST *px = x + c, *pd = dy + c;                                               \
        ST *pg = gs == NULL ? NULL : gs + c;                                              \
        for (r = 0; r < rows; r++, px += xs, pd += ds_,                                   \
             pg = pg == NULL ? NULL : pg + gss) {                                         \
            xc = gn_vload_minus_##SUF(px, vm0);                                           \
            g = gn_pre_grad_##SUF(gn_vload_##SUF(pd), xc, gn_vload_c_##SUF(a + c),        \
                                  gn_vload_c_##SUF(b + c), act);                          \
            GN_KEEP(g);                                                                   \
            if (pg != NULL) gn_vstore_##SUF(pg, g);                                       \
            sa0 += g; sb0 = VFMA(g, xc, sb0);                                             \
            xc = gn_vload_minus_##SUF(px + W, vm1);                                       \
            g = gn_pre_grad_##SUF(gn_vload_##SUF(pd + W), xc, gn_vload_c_##SUF(a + c + W),\
                                  gn_vload_c_##SUF(b + c + W), act);                      \
            GN_KEEP(g);                                                                   \
            if (pg != NULL) gn_vstore_##SUF(pg + W, g);                                   \
            sa1 += g; sb1 = VFMA(g, xc, sb1);                                             \
            xc = gn_vload_minus_##SUF(px + 2 * W, vm2);                                   \
            g = gn_pre_grad_##SUF(gn_vload_##SUF(pd + 2 * W), xc,                         \
                                  gn_vload_c_##SUF(a + c + 2 * W),                        \
                                  gn_vload_c_##SUF(b + c + 2 * W), act);                  \
            GN_KEEP(g);                                                                   \
            if (pg != NULL) gn_vstore_##SUF(pg + 2 * W, g);                               \
            sa2 += g; sb2 = VFMA(g, xc, sb2);                                             \
            xc = gn_vload_minus_##SUF(px + 3 * W, vm3);                                   \
            g = gn_pre_grad_##SUF(gn_vload_##SUF(pd + 3 * W), xc,                         \
                                  gn_vload_c_##SUF(a + c + 3 * W),                        \
                                  gn_vload_c_##SUF(b + c + 3 * W), act);                  \
            GN_KEEP(g);                                                                   \
            if (pg != NULL) gn_vstore_##SUF(pg + 3 * W, g);                               \
            sa3 += g; sb3 = VFMA(g, xc, sb3);                                             \
        }                                                                                 \
        gn_lanes_sums_##SUF(sa0, sb0, W, db + c, ds + c);                                 \
        gn_lanes_sums_##SUF(sa1, sb1, W, db + c + W, ds + c + W);                         \
        gn_lanes_sums_##SUF(sa2, sb2, W, db + c + 2 * W, ds + c + 2 * W);                 \
        gn_lanes_sums_##SUF(sa3, sb3, W, db + c + 3 * W, ds + c + 3 * W);                 \
    }                                                                                     \
    for (; c < C; c += W) {                                                               \
        VT sa = {0}, sb = {0}, xc, g, vm, va, vb;                                         \
        const ST *px = x + c, *pd = dy + c;                                               \
        ST *pg = gs == NULL ? NULL : gs + c;                                              \
        width = C - c < W ? C - c : W;                                                    \
        vm = gn_vload_cpart_##SUF(m + c, width);                                          \
        va = gn_vload_cpart_##SUF(a + c, width);                                          \
        vb = gn_vload_cpart_##SUF(b + c, width);                                          \
        if (width == W)                                                                   \
            for (r = 0; r < rows; r++, px += xs, pd += ds_,                               \
                 pg = pg == NULL ? NULL : pg + gss) {                                     \
                xc = gn_vload_minus_##SUF(px, vm);                                        \
                g = gn_pre_grad_##SUF(gn_vload_##SUF(pd), xc, va, vb, act);               \
                if (pg != NULL)                                                           \
                    gn_vstore_##SUF(pg, g);                                               \
                sa += g;                                                                  \
                sb = VFMA(g, xc, sb);                                                     \
            }                                                                             \
        else                                                                              \
            for (r = 0; r < rows; r++, px += xs, pd += ds_,                               \
                 pg = pg == NULL ? NULL : pg + gss) {                                     \
                xc = gn_center_##SUF(gn_vload_part_##SUF(px, width), vm);                 \
                g = gn_pre_grad_##SUF(gn_vload_part_##SUF(pd, width), xc, va, vb, act);   \
                if (pg != NULL)                                                           \
                    gn_vstore_part_##SUF(pg, g, width);                                   \
                sa += g;                                                                  \
                sb = VFMA(g, xc, sb);                                                     \
            }                                                                             \
        gn_lanes_sums_##SUF(sa, sb, width, db + c, ds + c);                               \
    }                                                                                     \
}                                                                                         \
                                                                                          \
static inline void gn_rows_grad_sums_##SUF(const ST *dy, const ST *x, ptrdiff_t rows,     \
                                           ptrdiff_t C, ptrdiff_t ds_, ptrdiff_t xs,      \
                                           const CT *m, const CT *a, const CT *b, int act,\
                                           ST *gs, ptrdiff_t gss, double *db,             \
                                           double *ds)                                    \
{                                                                                         \
    if (act == GN_ACT_NONE)                                                               \
        gn_rows_grad_sums_loop_##SUF(dy, x, rows, C, ds_, xs, m, a, b, GN_ACT_NONE, NULL, \
                                     0, db, ds);                                          \
    else                                                                                  \
        gn_rows_grad_sums_loop_##SUF(dy, x, rows, C, ds_, xs, m, a, b, act, gs, gss, db,  \
                                     ds);                                                 \
}                                                                                         \
                                                                                          \
/* dx[r, c] = a[c] * g + (c1[c] * (x - m[c]) + c0[c]) over a (rows, C) block, in tiles of \
 * about GN_TILE_BYTES per array (2 to 16 rows): per tile, channels in blocks of 2 vectors \
 * whose coefficients stay in registers down the tile's rows, then one (possibly partial) \
 * vector at a time. */                                                                   \
static inline __attribute__((always_inline)) VT gn_rows_dx_##SUF(VT dy, VT x, VT vm,      \
    VT va, VT vb, VT v1, VT v0, int act)                                                  \
{                                                                                         \
    VT xc = gn_center_##SUF(x, vm);                                                       \
    return VFMA(va, gn_pre_grad_##SUF(dy, xc, va, vb, act), VFMA(v1, xc, v0));            \
}                                                                                         \
                                                                                          \
static inline __attribute__((always_inline)) void gn_rows_grad_x_loop_##SUF(              \
    const ST *dy, const ST *x, ST *dx, ptrdiff_t rows, ptrdiff_t C, ptrdiff_t ds_,        \
    ptrdiff_t xs, ptrdiff_t dxs, const CT *m, const CT *a, const CT *b, const CT *c1,     \
    const CT *c0, int act)                                                                \
{                                                                                         \
    ptrdiff_t r0, r, c, w, end, tile = GN_TILE_BYTES / (ptrdiff_t)sizeof(ST) / (C + 1);  \
    tile = tile < 2 ? 2 : tile > 16 ? 16 : tile;                                          \
    for (r0 = 0; r0 < rows; r0 += tile) {                                                 \
        end = rows - r0 < tile ? rows : r0 + tile;                                        \
        for (c = 0; c + 2 * W <= C; c += 2 * W) {                                         \
            const VT vm0 = gn_vload_c_##SUF(m + c), vm1 = gn_vload_c_##SUF(m + c + W);    \
            const VT va0 = gn_vload_c_##SUF(a + c), va1 = gn_vload_c_##SUF(a + c + W);    \
            const VT vb0 = gn_vload_c_##SUF(b + c), vb1 = gn_vload_c_##SUF(b + c + W);    \
            const VT v10 = gn_vload_c_##SUF(c1 + c), v11 = gn_vload_c_##SUF(c1 + c + W);  \
            const VT v00 = gn_vload_c_##SUF(c0 + c), v01 = gn_vload_c_##SUF(c0 + c + W);  \
            for (r = r0; r < end; r++) {                                                  \
                gn_vstore_##SUF(dx + r * dxs + c, gn_rows_dx_##SUF(                       \
                    gn_vload_##SUF(dy + r * ds_ + c), gn_vload_##SUF(x + r * xs + c),     \
                    vm0, va0, vb0, v10, v00, act));                                       \
                gn_vstore_##SUF(dx + r * dxs + c + W, gn_rows_dx_##SUF(                   \
                    gn_vload_##SUF(dy + r * ds_ + c + W),                                 \
                    gn_vload_##SUF(x + r * xs + c + W),                                   \
                    vm1, va1, vb1, v11, v01, act));                                       \
            }                                                                             \
        }                                                                                 \
        for (; c < C; c += W) {                                                           \
            w = C - c >= W ? W : C - c;                                                   \
            for (r = r0; r < end; r++)                                                    \
                if (w == W)                                                               \
                    gn_vstore_##SUF(dx + r * dxs + c, gn_rows_dx_##SUF(                   \
                        gn_vload_##SUF(dy + r * ds_ + c), gn_vload_##SUF(x + r * xs + c), \
                        gn_vload_c_##SUF(m + c), gn_vload_c_##SUF(a + c),                 \
                        gn_vload_c_##SUF(b + c), gn_vload_c_##SUF(c1 + c),                \
                        gn_vload_c_##SUF(c0 + c), act));                                  \
                else                                                                      \
                    gn_vstore_part_##SUF(dx + r * dxs + c, gn_rows_dx_##SUF(              \
                        gn_vload_part_##SUF(dy + r * ds_ + c, w),                         \
                        gn_vload_part_##SUF(x + r * xs + c, w),                           \
                        gn_vload_cpart_##SUF(m + c, w), gn_vload_cpart_##SUF(a + c, w),   \
                        gn_vload_cpart_##SUF(b + c, w), gn_vload_cpart_##SUF(c1 + c, w),  \
                        gn_vload_cpart_##SUF(c0 + c, w), act), w);                        \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
static inline void gn_rows_grad_x_##SUF(const ST *dy, const ST *x, ST *dx, ptrdiff_t rows,\
                                        ptrdiff_t C, ptrdiff_t ds_, ptrdiff_t xs,         \
                                        ptrdiff_t dxs, const CT *m, const CT *a,          \
                                        const CT *b, const CT *c1, const CT *c0, int act) \
{                                                                                         \
    if (act == GN_ACT_NONE)                                                               \
        gn_rows_grad_x_loop_##SUF(dy, x, dx, rows, C, ds_, xs, dxs, m, a, b, c1, c0,      \
                                  GN_ACT_NONE);                                           \
    else                                                                                  \
        gn_rows_grad_x_loop_##SUF(dy, x, dx, rows, C, ds_, xs, dxs, m, a, b, c1, c0, act);\
}


/* Elements averaged for the shift of one-pass moments, and rows for channels-last. */
#define GN_PILOT 32
#define GN_PILOT_ROWS 8
/* Channels below which channels-last rows are not peeled to alignment (gn_rows_head). */
#define GN_HEAD_CHANNELS 64
/* Bytes per array of a channels-last grad_x tile: its lines of x, grad_out and grad_x
 * stay in L1 while the channel blocks sweep it (2 rows per tile for 2048 float32 channels
 * ran 2x faster than 16). */
#define GN_TILE_BYTES 8192

GN_DEFINE_KERNELS(float, float, f32, gn_vf32, GN_W32, GN_VFMA_f32, gn_select_f32)
GN_DEFINE_KERNELS(double, double, f64, gn_vf64, GN_W64, GN_VFMA_f64, gn_select_f64)
GN_DEFINE_KERNELS(uint16_t, float, f16, gn_vf32, GN_W32, GN_VFMA_f32, gn_select_f32)
GN_DEFINE_KERNELS(uint16_t, float, bf16, gn_vf32, GN_W32, GN_VFMA_f32, gn_select_f32)

#endif
