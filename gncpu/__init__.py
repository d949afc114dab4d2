"""gncpu: fast, deterministic Group Normalization on the CPU.

The kernels are compiled twice on x86-64 (baseline and x86-64-v3 with AVX2/FMA/F16C); the
fastest one this CPU can run is imported here.
"""
from . import _kernels_baseline

if _kernels_baseline.cpu_has_x86_64_v3():
    try:
        from . import _kernels_x86_64_v3 as _kernels
    except ImportError:  # a build without the x86-64-v3 module
        _kernels = _kernels_baseline
else:
    _kernels = _kernels_baseline

build_info = _kernels.build_info
group_norm = _kernels.group_norm
group_norm_backward = _kernels.group_norm_backward
from .layer import GroupNorm  # noqa: E402

__all__ = ["group_norm", "group_norm_backward", "GroupNorm", "build_info", "show_config"]
__version__ = "0.1.0"


def show_config():
    """Print how gncpu was built and what it will use: OpenMP, threads, SIMD path."""
    for key, value in build_info().items():
        print(f"{key:12s} {value}")
