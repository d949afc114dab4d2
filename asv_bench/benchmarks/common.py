"""Inputs shared by the benchmarks: the shape suite, the parameter grids and random data.

The shapes are those of ``python -m gncpu bench`` (``gncpu.bench.SUITE``), imported from the
gncpu under test, so the asv suite and the command-line table measure the same workloads.
The default grid is small enough for a 2-core machine; ``GNCPU_ASV_FULL=1`` selects the
full grid (it must be set alike for discovery and for the run, as asv stores the grid).
"""
import os

import numpy as np

from gncpu import build_info, group_norm, group_norm_backward
from gncpu.bench import QUICK, SUITE

FULL = os.environ.get("GNCPU_ASV_FULL") == "1"
SEED = 0
SHAPES = {label: (shape, groups) for label, shape, groups in SUITE}
DTYPES = ["float32", "float64", "float16"]
OPS = ["forward", "backward"]
# Bounds the float64 temporary of random_array: 2**20 elements, 8 MiB.
CHUNK = 1 << 20


def grid(default, full):
    """``full`` under ``GNCPU_ASV_FULL=1``, else ``default``."""
    return full if FULL else default


THREADS = grid([1, 2], sorted({1, 2, build_info()["max_threads"]}))
SPATIAL_LABELS = [label for label, shape, _ in SUITE if len(shape) in (4, 5)]


def random_array(rng, shape, dtype):
    """Standard normal values in a new array, drawn chunk by chunk.

    Every page is written (no lazily zeroed memory reaches a timed call), and no float64
    copy of the whole array ever exists, so ``peakmem_`` figures see the inputs alone.
    """
    x = np.empty(shape, dtype)
    flat = x.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start:start + CHUNK]
        chunk[...] = rng.standard_normal(chunk.size)
    return x


def group_stats(x, groups, eps=1e-5, channel_axis=1):
    """(mean, rstd) of shape (N, G) for an (N, C, *spatial) array (or (N, *spatial, C) with
    ``channel_axis=-1``), as the backward takes them.

    Computed one sample at a time in float64, so setup allocates no copy of the whole ``x``;
    float64 for float64 input, else float32, like ``group_norm(..., return_stats=True)``.
    """
    n = x.shape[0]
    stats_dtype = np.float64 if x.dtype == np.float64 else np.float32
    mean = np.empty((n, groups), stats_dtype)
    rstd = np.empty((n, groups), stats_dtype)
    for i in range(n):
        grouped = np.moveaxis(x[i], channel_axis - 1 if channel_axis > 0 else -1, 0)
        grouped = grouped.astype(np.float64).reshape(groups, -1)
        mean[i] = grouped.mean(axis=1)
        rstd[i] = 1.0 / np.sqrt(grouped.var(axis=1) + eps)
    return mean, rstd


def channels_last(a):
    """A C-contiguous (N, *spatial, C) copy of an (N, C, *spatial) array."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


class Inputs:
    """Fresh random inputs (fixed seed) for one shape of the suite.

    Attributes: ``x`` (N, C, *spatial), or (N, *spatial, C) with ``layout="nhwc"`` (made in
    that layout, no copy), ``weight`` and ``bias`` (C,), ``groups``; with ``backward=True``,
    ``grad_out`` (shape of ``x``) and ``mean``, ``rstd`` (N, G), else None.
    """

    def __init__(self, label, dtype, backward=False, layout="nchw"):
        shape, self.groups = SHAPES[label]
        axis = -1 if layout == "nhwc" else 1
        if layout == "nhwc":
            shape = (shape[0],) + tuple(shape[2:]) + (shape[1],)
        rng = np.random.default_rng(SEED)
        self.x = random_array(rng, shape, dtype)
        self.weight = random_array(rng, shape[axis], dtype)
        self.bias = random_array(rng, shape[axis], dtype)
        self.grad_out = self.mean = self.rstd = None
        if backward:
            self.grad_out = random_array(rng, shape, dtype)
            self.mean, self.rstd = group_stats(self.x, self.groups, channel_axis=axis)


def gncpu_call(label, dtype, threads, op, layout="nchw", activation=None):
    """A zero-argument callable running one gncpu forward or backward on fresh inputs.

    The forward writes into a preallocated ``out=`` (the kernel is timed, not the
    allocator), as ``python -m gncpu bench`` does. ``layout="nhwc"`` passes the same values
    channels-last with ``channel_axis=-1``. Keywords at their defaults are left out, so
    the call also runs on commits older than those options.
    """
    data = Inputs(label, dtype, backward=op == "backward")
    x, grad_out = data.x, data.grad_out
    options = {"num_threads": threads}
    if layout == "nhwc":
        x = channels_last(x)
        grad_out = None if grad_out is None else channels_last(grad_out)
        options["channel_axis"] = -1
    if activation is not None:
        options["activation"] = activation
    if op == "forward":
        out = x.copy()
        return lambda: group_norm(x, data.groups, data.weight, data.bias, out=out, **options)
    if activation is not None:
        options["bias"] = data.bias
    return lambda: group_norm_backward(grad_out, x, data.mean, data.rstd, data.groups,
                                       data.weight, **options)
