"""A short workload over every kernel path, for memory checkers (tools/valgrind.sh).

Runs forward and backward with every compiled build of the kernels (baseline, x86-64-v3
and x86-64-v4 where this CPU, as the checker shows it, has them), every storage dtype (and int16, which is
converted), channels-first and channels-last, contiguous, padded and strided inputs, no
activation, ReLU and SiLU, a residual with and without ``residual_out``, ``out=`` (in place
too), 1 and 2 threads (2 only on the shape large enough for it), and shapes that take the
per-pair, per-sample and split (chunks in parallel) paths. Results are checked
loosely against the float64 reference, so a path that silently computed nothing fails too.

Usage: python tools/workload.py   (exit status 0 when every result checks out)
"""
import glob
import importlib
import os
import sys

import numpy as np

import gncpu
from gncpu import _reference as ref

try:
    import ml_dtypes
    DTYPES = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int16)
except ImportError:
    DTYPES = (np.float32, np.float64, np.float16, np.int16)

# (shape, G): per-pair and per-sample paths; > 2048 per channel (several chunks) and > 64
# rows (several row chunks); one sample of 2 * 32768 elements, which 2 threads split.
SHAPES = [((3, 6, 5), 3), ((2, 4, 2053), 2), ((2, 6, 9, 11), 1), ((1, 4, 16384), 2)]
ACTIVATIONS = (None, "relu", "silu")


def kernel_modules():
    """Every compiled build of the kernels that this CPU runs."""
    folder = os.path.dirname(gncpu.__file__)
    names = sorted({os.path.basename(p).split(".")[0]
                    for p in glob.glob(os.path.join(folder, "_kernels_*.so"))})
    baseline = importlib.import_module("gncpu._kernels_baseline")
    runs = {"_kernels_x86_64_v3": baseline.cpu_has_x86_64_v3,
            "_kernels_x86_64_v4": baseline.cpu_has_x86_64_v4}
    modules = []
    for name in names:
        if name in runs and not runs[name]():
            continue
        try:
            modules.append(importlib.import_module(f"gncpu.{name}"))
        except ImportError:  # a build left out (tools/valgrind.sh replaces x86-64-v4)
            pass
    return modules


def act(t, activation):
    if activation == "relu":
        return np.maximum(t, 0)
    if activation == "silu":
        return t / (1 + np.exp(-t))
    return t


def layout(x, kind, channels_last):
    """x (N, C, *S) as the kernels will see it: channels-last (N, *S, C) storage or not;
    C-contiguous, "padded" (rows of channels, or channels, a gap apart: read in place) or
    "strided" (every other element along the unit axis: copied before the kernels run)."""
    if channels_last:
        x = np.moveaxis(x, 1, -1)
    if kind == "C":
        return np.ascontiguousarray(x)
    axis = -1 if kind == "strided" or channels_last else 1
    shape = list(x.shape)
    shape[axis] *= 2
    buf = np.full(shape, 0 if x.dtype.kind in "iu" else np.nan, x.dtype)
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, 2) if kind == "strided" or not channels_last \
        else slice(0, x.shape[axis])
    view = buf[tuple(index)]
    view[...] = x
    return view


def check(actual, expected, tol, what):
    actual = np.asarray(actual, dtype=np.float64)
    err = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30)
    if not err < tol:
        raise AssertionError(f"{what}: relative error {err:.3g}")


def run(module, shape, num_groups, dtype, kind, last, activation, threads, rng):
    x64 = rng.standard_normal(shape) * 2 + 1
    r64 = rng.standard_normal(shape)
    dy64 = rng.standard_normal(shape)
    w = rng.uniform(0.5, 1.5, shape[1]).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    x, r, dy = (layout(a.astype(dtype), kind, last) for a in (x64, r64, dy64))
    axis = -1 if last else 1
    tol = 1e-5 if np.dtype(dtype) in (np.float32, np.float64, np.int16) else 3e-2
    what = f"{module.__name__} {shape} {np.dtype(dtype).name} {kind} last={last} {activation}"

    def as_nchw(a):
        return np.moveaxis(np.asarray(a, dtype=np.float64), -1, 1) if last else \
            np.asarray(a, dtype=np.float64)

    y, mean, rstd = module.group_norm(x, num_groups, w, b, channel_axis=axis,
                                      activation=activation, return_stats=True,
                                      num_threads=threads)
    y_ref, _, _ = ref.group_norm(as_nchw(x), num_groups, w, b)
    check(as_nchw(y), act(y_ref, activation), tol, "y " + what)

    s = np.empty_like(y)
    out = np.empty_like(y)
    module.group_norm(x, num_groups, w, b, channel_axis=axis, activation=activation,
                      residual=r, residual_out=s, out=out, num_threads=threads)
    y_ref, _, _ = ref.group_norm(as_nchw(s), num_groups, w, b)
    check(as_nchw(out), act(y_ref, activation), tol, "residual " + what)
    module.group_norm(s, num_groups, w, b, channel_axis=axis, out=s, num_threads=threads)
    check(as_nchw(s), y_ref, tol, "in place " + what)

    grads = module.group_norm_backward(dy, x, mean, rstd, num_groups, w, bias=b,
                                       activation=activation, channel_axis=axis,
                                       num_threads=threads)
    if activation is None and np.dtype(dtype).itemsize >= 4:
        _, mean_ref, rstd_ref = ref.group_norm(as_nchw(x), num_groups)
        grads_ref = ref.group_norm_backward(as_nchw(dy), as_nchw(x), mean_ref, rstd_ref,
                                            num_groups, w)
        check(as_nchw(grads[0]), grads_ref[0], 1e-3, "grad_x " + what)
        check(grads[1], grads_ref[1], 1e-3, "grad_weight " + what)
        check(grads[2], grads_ref[2], 1e-3, "grad_bias " + what)
    elif not all(np.isfinite(np.asarray(g, dtype=np.float64)).all() for g in grads):
        raise AssertionError("backward not finite: " + what)


def main():
    rng = np.random.default_rng(0)
    calls = 0
    modules = kernel_modules()
    for module in modules:
        for shape, num_groups in SHAPES:
            for dtype in DTYPES:
                for kind in ("C", "padded", "strided"):
                    for last in (False, True):
                        for activation in ACTIVATIONS:
                            for threads in (1, 2) if shape == SHAPES[-1][0] else (1,):
                                run(module, shape, num_groups, dtype, kind, last, activation,
                                    threads, rng)
                                calls += 4
    print(f"workload: {calls} calls over {[m.__name__ for m in modules]}, all results check out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
