/* What the build and the CPU offer, for gncpu's kernels.
 *
 * OpenMP is optional: without it every gn_* query answers as a serial build would, and
 * Cython's prange loops compile to plain loops.  CPU feature detection lets the package
 * import the x86-64-v3 (AVX2 + FMA + F16C) and x86-64-v4 (AVX-512) builds of the kernels
 * only where they can run.
 */
#ifndef GNCPU_PLATFORM_H
#define GNCPU_PLATFORM_H

#ifdef _OPENMP
#include <omp.h>
static inline int gn_openmp_enabled(void) { return 1; }
static inline int gn_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int gn_openmp_enabled(void) { return 0; }
static inline int gn_max_threads(void) { return 1; }
#endif

/* a * b + c. With a hardware FMA (x86-64-v3, every AArch64 CPU) it is one fused
 * instruction, rounded once; elsewhere a multiply then an add. Written out rather than
 * left to the compiler's contraction, so every copy of a kernel rounds the same way. */
#if defined(__FMA__) || defined(__aarch64__)
static inline float gn_fmaf(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
static inline double gn_fma(double a, double b, double c) { return __builtin_fma(a, b, c); }
#else
static inline float gn_fmaf(float a, float b, float c) { return a * b + c; }
static inline double gn_fma(double a, double b, double c) { return a * b + c; }
#endif

/* 1 when this CPU runs x86-64-v3 code (AVX2, FMA, F16C, with OS support for YMM state). */
static inline int gn_cpu_has_x86_64_v3(void)
{
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

/* 1 when this CPU runs x86-64-v4 code (x86-64-v3 and AVX-512 F, BW, DQ, VL, with OS support
 * for ZMM state, which __builtin_cpu_supports checks). */
static inline int gn_cpu_has_x86_64_v4(void)
{
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    return gn_cpu_has_x86_64_v3() && __builtin_cpu_supports("avx512f")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

#endif
