"""gncpu: fast, deterministic Group Normalization on the CPU.

The kernels are compiled three times on x86-64 (baseline, x86-64-v3 with AVX2/FMA/F16C and
x86-64-v4 with AVX-512); both passes run the widest one this CPU can run.
"""
import importlib

from . import _kernels_baseline

_LEVELS = (("_kernels_x86_64_v4", _kernels_baseline.cpu_has_x86_64_v4),
           ("_kernels_x86_64_v3", _kernels_baseline.cpu_has_x86_64_v3))


def _widest_kernels():
    """The first of _LEVELS (module name, CPU check) that this CPU runs and that was built."""
    for name, runs in _LEVELS:
        if runs():
            try:
                return importlib.import_module(f".{name}", __name__)
            except ImportError:  # a build without that module
                pass
    return _kernels_baseline


_kernels = _widest_kernels()

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
