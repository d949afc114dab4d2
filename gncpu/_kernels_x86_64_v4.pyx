SIMD = "x86-64-v4 (AVX-512 F/BW/DQ/VL, FMA, F16C)"
include "_kernels.pxi"
