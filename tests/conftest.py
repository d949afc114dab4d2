"""Shared generators and checks for the gncpu tests.

The tests follow one rule: the fast functions (``gncpu.group_norm`` and
``gncpu.group_norm_backward``) must equal the slow float64 twins in ``gncpu._reference``
to within the precision the kernels promise, over deterministically generated, nasty inputs
(odd sizes, chunk boundaries, every memory layout). Every test draws its data from the
``rng`` fixture, seeded from the test's own id, so a failure reproduces exactly.

Helpers are imported by the test modules with ``from conftest import ...``.
"""
import glob
import importlib
import os
import re
import zlib

import numpy as np
import pytest

import gncpu
from gncpu import _reference as ref

FLOATS = (np.float32, np.float64)

# Normwise relative error bounds, max|fast - ref| / max|ref|, keyed by the output's dtype.
FORWARD_TOL = {np.float16: 1e-3, np.float32: 2e-5, np.float64: 1e-12}
BACKWARD_TOL = {np.float32: 4e-4, np.float64: 1e-12}

# (shape, num_groups): odd and distinct sizes, G in {1, a divisor, C}, channels per group odd
# and even, 0 to 4 spatial dims, and sizes past 2048 elements per channel so that the
# kernels' chunk boundaries are crossed. No group has exactly 2 elements: there xhat = +-1
# up to eps, and grad_x is O(eps / var) by cancellation of O(1) terms, so no implementation
# (the float64 reference included) meets a normwise relative bound on it.
CASES = [
    ((1, 1), 1),  # one element per group: variance 0
    ((3, 6), 2),  # (N, C) only, 3 channels per group
    ((2, 5, 1), 5),  # spatial size 1, G = C
    ((4, 4, 7), 2),
    ((5, 9, 17), 3),  # 3 channels per group
    ((3, 10, 33), 1),  # G = 1
    ((2, 12, 3, 65), 4),
    ((1, 15, 7, 3), 15),  # G = C
    ((2, 8, 3, 7, 5), 2),  # 3 spatial dims, 4 channels per group
    ((3, 4, 3, 1, 5, 2), 2),  # 4 spatial dims
    ((2, 6, 2053), 3),  # > 2048 per channel
    ((1, 4, 45, 47), 1),  # 2115 per channel, G = 1
    ((3, 2, 2049), 2),  # G = C with > 2048 elements per group
]


def case_id(case):
    shape, num_groups = case
    return "x".join(map(str, shape)) + f"-G{num_groups}"


CASE_IDS = [case_id(c) for c in CASES]

# Memory layouts every function must accept; see ``with_layout``.
LAYOUTS = ("C", "F", "strided", "negative", "permuted", "channels_last", "readonly",
           "byteswapped", "unaligned")


def random_case(rng, max_size=200_000):
    """A random (shape, num_groups): N in 1..5, C = G * k, 0 to 3 spatial dims of odd and
    small sizes, or sometimes one spatial dim past 2048; no group of exactly 2 elements."""
    num_groups = int(rng.choice([1, 2, 3, 4, 5]))
    channels = num_groups * int(rng.choice([1, 2, 3, 4, 7]))
    if rng.random() < 0.15:
        spatial = (int(rng.integers(2049, 5000)),)
    else:
        spatial = tuple(int(s) for s in rng.choice([1, 2, 3, 5, 7, 17, 33, 65],
                                                   size=rng.integers(0, 4)))
    while channels * int(np.prod(spatial, dtype=np.int64)) * 5 > max_size:
        spatial = spatial[:-1]
    if channels // num_groups * int(np.prod(spatial, dtype=np.int64)) == 2:
        spatial = spatial + (3,)
    return (int(rng.integers(1, 6)), channels) + spatial, num_groups


# Set GNCPU_TEST_SEED to draw different (still reproducible) data in every test.
SEED_SALT = os.environ.get("GNCPU_TEST_SEED", "")


def seeded_rng(key):
    """A generator seeded from a string (and $GNCPU_TEST_SEED)."""
    return np.random.default_rng(zlib.crc32(f"{SEED_SALT}{key}".encode()))


@pytest.fixture
def rng(request):
    """A generator seeded from the test's module and name (with its parameters): fresh data
    per test, the same data on every run from any directory."""
    return seeded_rng(f"{request.node.module.__name__}::{request.node.name}")


def random_array(rng, shape, dtype=np.float64):
    """Random data of ``shape`` with per-channel offsets and scales (never zeros or a ramp).

    Integer dtypes get small random integers, bool a random mask.
    """
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        low = 0 if dtype.kind == "u" else -50
        return rng.integers(low, 50, size=shape).astype(dtype)
    per_channel = (1, shape[1]) + (1,) * (len(shape) - 2) if len(shape) >= 2 else ()
    scale = rng.uniform(0.5, 3.0, per_channel)
    offset = rng.uniform(-2.0, 2.0, per_channel)
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


def random_affine(rng, num_channels, dtype=np.float64):
    """Random (weight, bias) of shape (C,): weights of both signs away from 0, biases N(0, 1)."""
    weight = rng.uniform(0.5, 1.5, num_channels) * rng.choice([-1.0, 1.0], num_channels)
    bias = rng.standard_normal(num_channels)
    return weight.astype(dtype), bias.astype(dtype)


def _gap_value(dtype):
    """What the gaps of a strided buffer hold: NaN for floats, an extreme value otherwise."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.nan
    if dtype.kind in "iu":
        return np.iinfo(dtype).max
    return True


def with_layout(x, layout):
    """An array equal to ``x`` in value whose memory is laid out as ``layout`` names.

    C: C-contiguous copy. F: Fortran order. strided: a view with steps 2 along the channels
    and 3 along the last axis into a buffer whose gaps hold NaN (so reading a gap shows).
    negative: negative strides along every axis. permuted: the axes stored in the order
    (1, 2, ..., 0) and transposed back. channels_last: stored as (N, *spatial, C), i.e. NHWC
    memory behind the (N, C, H, W) view. readonly: a C copy with writeable=False.
    byteswapped: the non-native byte order (``x.astype('>f4')`` on little-endian).
    unaligned: a C copy one byte into a buffer, so at an address that is no multiple of
    its item size (NumPy's flags.aligned is False).
    """
    x = np.asarray(x)
    if layout == "C":
        return np.ascontiguousarray(x).copy()
    if layout == "F":
        return np.asfortranarray(x).copy(order="F")
    if layout == "strided":
        steps = [1] * x.ndim
        if x.ndim:
            steps[-1] = 3
        if x.ndim >= 2:
            steps[1] = 2
        buf = np.full([n * k for n, k in zip(x.shape, steps)], _gap_value(x.dtype), x.dtype)
        view = buf[tuple(slice(None, None, k) for k in steps)]
        view[...] = x
        return view
    if layout == "negative":
        flip = (slice(None, None, -1),) * x.ndim
        return x[flip].copy()[flip]
    if layout in ("permuted", "channels_last"):
        axes = list(range(x.ndim))
        if layout == "permuted":
            order = axes[1:] + axes[:1]
        else:
            order = axes[:1] + axes[2:] + axes[1:2]
        return np.ascontiguousarray(x.transpose(order)).transpose(np.argsort(order))
    if layout == "readonly":
        out = x.copy()
        out.flags.writeable = False
        return out
    if layout == "byteswapped":
        return x.astype(x.dtype.newbyteorder("S"))
    if layout == "unaligned":
        buf = np.empty(x.nbytes + 1, np.uint8)
        out = np.frombuffer(buf.data, x.dtype, x.size, offset=1).reshape(x.shape)
        out[...] = x
        return out
    raise ValueError(layout)


def result_dtypes(x_dtype):
    """(output dtype, statistics dtype) the contract promises for an input dtype."""
    kind = np.dtype(x_dtype).type
    if kind is np.float32:
        return np.float32, np.float32
    if kind is np.float16:
        return np.float16, np.float32
    return np.float64, np.float64  # float64, and integers and bool like numpy.mean


def compiled_kernel_modules():
    """Names of every compiled variant of the kernels (baseline, x86-64-v3, ...)."""
    folder = os.path.dirname(gncpu.__file__)
    return sorted({os.path.basename(p).split(".")[0]
                   for p in glob.glob(os.path.join(folder, "_kernels_*"))
                   if p.endswith((".so", ".pyd"))})


def import_kernel_module(name):
    """Import one compiled variant, skipping one this CPU cannot run."""
    baseline = importlib.import_module("gncpu._kernels_baseline")
    for level in ("x86_64_v3", "x86_64_v4"):
        if name.endswith(level) and not getattr(baseline, f"cpu_has_{level}")():
            pytest.skip(f"this CPU cannot run the {level} kernels")
    return importlib.import_module(f"gncpu.{name}")


def rel_err(actual, expected, scale=None):
    """Normwise relative error max|actual - expected| / max|expected| in float64.

    ``scale`` replaces max|expected| where given. Absolute when the scale is 0, 0 for empty
    arrays, NaN when ``actual`` has a non-finite value where ``expected`` is finite (so
    ``rel_err(...) < tol`` fails).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.size == 0:
        return 0.0
    err = np.max(np.abs(actual - expected))
    if not np.isfinite(err):
        return np.nan
    if scale is None:
        scale = np.max(np.abs(expected))
    return err / scale if scale > 0 else err


def assert_close(actual, expected, tol, name="array", scale=None):
    err = rel_err(actual, expected, scale)
    assert err < tol, f"{name}: normwise relative error {err:.3g} not below {tol:.3g}"


def assert_stats_close(mean, rstd, mean_ref, rstd_ref, tol, keep=None):
    """mean and rstd within ``tol`` of the reference, where ``keep`` (default everywhere).

    rstd is compared normwise. The mean's error is taken relative to the larger of max|mean|
    and the largest standard deviation 1/rstd: a mean near 0 next to a spread of 1 is only
    known to ~1e-7 absolutely in float32, which is all that y needs (the mean's error moves
    xhat by error/std), and that is what the kernels can promise.
    """
    keep = np.ones(np.shape(mean_ref), bool) if keep is None else keep
    mean, rstd = np.asarray(mean)[keep], np.asarray(rstd)[keep]
    mean_ref, rstd_ref = np.asarray(mean_ref)[keep], np.asarray(rstd_ref)[keep]
    for name, stat in (("mean", mean), ("rstd", rstd)):
        assert np.isfinite(stat).all(), f"{name}: a value that must be finite is not"
    scale = max(np.max(np.abs(mean_ref), initial=0.0), np.max(1 / rstd_ref, initial=0.0))
    assert_close(mean, mean_ref, tol, "mean", scale=scale)
    assert_close(rstd, rstd_ref, tol, "rstd")


def assert_bitwise(actual, expected, name="array"):
    """Same dtype, same shape, same bytes (so -0.0 != 0.0 and NaN payloads count)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    if actual.tobytes() != expected.tobytes():
        differ = np.flatnonzero(actual.ravel() != expected.ravel())
        raise AssertionError(
            f"{name}: not bitwise equal at {differ.size} of {actual.size} elements, "
            f"first flat index {differ[:5]}, max abs diff "
            f"{np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))):.3g}"
        )


def group_masks(shape, num_groups, pairs):
    """Masks that are False on the listed (sample, group) pairs and True elsewhere.

    Returns (a mask of x's shape, a mask of the stats' shape (N, G)).
    """
    per_group = shape[1] // num_groups
    elements = np.ones(shape, bool)
    stats = np.ones((shape[0], num_groups), bool)
    for n, g in pairs:
        elements[n, g * per_group:(g + 1) * per_group] = False
        stats[n, g] = False
    return elements, stats


def assert_close_where(actual, expected, keep, tol, name="array"):
    """Where ``keep``: ``actual`` is finite and within ``tol`` of ``expected``."""
    assert np.isfinite(actual[keep]).all(), f"{name}: a value that must be finite is not"
    assert_close(actual[keep], expected[keep], tol, name)


def raises_naming(exc_type, *tokens, func, **kwargs):
    """Call ``func(**kwargs)``, expect ``exc_type`` whose message contains every token.

    A token that is a number must appear as a whole number (``5`` does not match ``15``);
    other tokens are plain substrings. Returns the message.
    """
    with pytest.raises(exc_type) as info:
        func(**kwargs)
    message = str(info.value)
    for token in tokens:
        token = str(token)
        if re.fullmatch(r"-?[\d.]+(e-?\d+)?", token):
            found = re.search(rf"(?<![\w.]){re.escape(token)}(?![\w.])", message)
        else:
            found = token in message
        assert found, f"{exc_type.__name__} message {message!r} does not name {token!r}"
    return message


def fast_forward(x, num_groups, weight=None, bias=None, eps=1e-5, *, func=None,
                 by_group_size=False, **kwargs):
    """gncpu.group_norm(..., return_stats=True), by num_groups or by the equivalent group_size."""
    func = gncpu.group_norm if func is None else func
    if by_group_size:
        group_size = np.shape(x)[1] // num_groups
        return func(x, None, weight, bias, eps, group_size=group_size, return_stats=True,
                    **kwargs)
    return func(x, num_groups, weight, bias, eps, return_stats=True, **kwargs)


def check_forward(x, num_groups, weight=None, bias=None, eps=1e-5, **kwargs):
    """Run the fast forward, check shapes, dtypes and values against the reference.

    Returns the fast (y, mean, rstd).
    """
    y, mean, rstd = fast_forward(x, num_groups, weight, bias, eps, **kwargs)
    values = np.asarray(x)
    y_ref, mean_ref, rstd_ref = ref.group_norm(values, num_groups, weight, bias, eps)
    out_type, stats_type = result_dtypes(values.dtype)
    stats_shape = (values.shape[0], num_groups)
    assert isinstance(y, np.ndarray) and y.shape == values.shape
    assert y.dtype.type is out_type, f"y dtype {y.dtype} for input {values.dtype}"
    for name, stat in (("mean", mean), ("rstd", rstd)):
        assert stat.shape == stats_shape, f"{name} shape {stat.shape} != {stats_shape}"
        assert stat.dtype.type is stats_type, f"{name} dtype {stat.dtype}"
    assert_close(y, y_ref, FORWARD_TOL[out_type], "y")
    assert_stats_close(mean, rstd, mean_ref, rstd_ref, FORWARD_TOL[stats_type])
    return y, mean, rstd


def check_backward(grad_out, x, num_groups, weight=None, eps=1e-5, *, stats_layout="C",
                   func=None, forward=None, by_group_size=False, **kwargs):
    """Run the fast forward (for the stats) and backward; check against the reference.

    The reference backward gets the reference's float64 statistics, so the whole chain
    forward -> backward is checked. Returns the fast (grad_x, grad_weight, grad_bias).
    """
    func = gncpu.group_norm_backward if func is None else func
    _, mean, rstd = fast_forward(x, num_groups, weight, None, eps, func=forward)
    mean, rstd = with_layout(mean, stats_layout), with_layout(rstd, stats_layout)
    if by_group_size:
        group_size = np.shape(x)[1] // num_groups
        grads = func(grad_out, x, mean, rstd, None, weight, group_size=group_size, **kwargs)
    else:
        grads = func(grad_out, x, mean, rstd, num_groups, weight, **kwargs)
    grad_x, grad_weight, grad_bias = grads
    values = np.asarray(x)
    _, mean_ref, rstd_ref = ref.group_norm(values, num_groups, eps=eps)
    grads_ref = ref.group_norm_backward(grad_out, values, mean_ref, rstd_ref, num_groups, weight)
    out_type, _ = result_dtypes(values.dtype)
    channels = values.shape[1]
    assert grad_x.shape == values.shape and grad_x.dtype.type is out_type, grad_x.dtype
    for name, grad in (("grad_weight", grad_weight), ("grad_bias", grad_bias)):
        assert grad.shape == (channels,), f"{name} shape {grad.shape}"
        assert grad.dtype.kind == "f", f"{name} dtype {grad.dtype}"
    tol = BACKWARD_TOL[out_type]
    for name, fast, slow in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads_ref):
        assert_close(fast, slow, tol, name)
    return grad_x, grad_weight, grad_bias
