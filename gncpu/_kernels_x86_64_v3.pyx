SIMD = "x86-64-v3 (AVX2, FMA, F16C)"
include "_kernels.pxi"
