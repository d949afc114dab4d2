SIMD = "baseline"
include "_kernels.pxi"
