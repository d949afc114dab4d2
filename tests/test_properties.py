"""Property-based tests (hypothesis) of gncpu.group_norm and gncpu.group_norm_backward.

Hypothesis draws the case: the shape (N = 0, one-element groups, up to 4096 channels, up
to 60 000 spatial positions, 0 to 3 spatial dims), the group count (or group size), the
dtype (float32, float64, float16, and bfloat16 when ml_dtypes is installed), the memory
layout of every array argument, the channel axis, eps from 0 to 1e3, the data's magnitude
(1e-30 to 1e30), its offset (up to 1e8 standard deviations) and distribution, NaN/Inf
sprinkled in, weight, bias and activation. The arrays themselves come from a NumPy
generator seeded by a drawn integer, so an example is cheap and reproduces exactly.

Properties:

- where the float64 reference is finite, the result matches it within a bound that
  follows from the dtype's rounding, per (sample, group) (``forward_bound``,
  ``check_backward``); groups whose moments the float32 accumulators cannot hold are
  left out (``accurate_groups``; the strict xfail tests at the end show what they get);
- a NaN or Inf spoils only its own (sample, group);
- bitwise: a sample alone equals its row of the batch, and 1, 2 and 5 threads agree;
- no input is modified;
- bad arguments raise ValueError or TypeError naming the offending value, and no
  combination of arguments raises anything else.

Profiles, chosen by the environment variable GNCPU_HYPOTHESIS_PROFILE:

- ``ci`` (default): derandomized (every run draws the same examples), no example
  database, about a minute on two cores;
- ``long``: 20 times the examples, freshly random on every run (a failure prints the
  example and a ``@reproduce_failure`` blob)::

      GNCPU_HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties.py \\
          --hypothesis-show-statistics

``--hypothesis-show-statistics`` reports how many examples each test ran.
"""
import os
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import assume, event, given, settings, strategies as st

import gncpu
from gncpu import _reference as ref
from conftest import FORWARD_TOL, LAYOUTS, assert_bitwise, raises_naming, with_layout
from test_invariance import assert_unchanged, snapshot

try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None

CI_EXAMPLES = 300
settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, derandomize=True,
                          database=None, print_blob=True)
settings.register_profile("long", max_examples=20 * CI_EXAMPLES, deadline=None,
                          database=None, print_blob=True)
PROFILE = settings.get_profile(os.environ.get("GNCPU_HYPOTHESIS_PROFILE", "ci"))


def budget(factor):
    """The profile's settings with ``factor`` times its examples (cheap tests run more)."""
    return settings(PROFILE, max_examples=int(factor * PROFILE.max_examples))


BFLOAT16 = None if ml_dtypes is None else np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(dtype):
    """Whether dtype is ml_dtypes' bfloat16. Never without ml_dtypes: NumPy reads None as
    float64, so ``dtype == None`` holds for float64."""
    return BFLOAT16 is not None and dtype == BFLOAT16


DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
DTYPES += [] if BFLOAT16 is None else [BFLOAT16]

# Bounds relative to the error scales of forward_bound and check_backward (sizes of the terms
# that make a result, not of the result): for what is computed and kept in the compute
# precision (statistics, grad_weight, grad_bias), and for what is stored in x's dtype
# (y, grad_x; float16 and bfloat16 are rounded to 11 and 8 bits).
COMPUTE_TOL = {np.dtype(np.float64): FORWARD_TOL[np.float64],
               np.dtype(np.float32): FORWARD_TOL[np.float32]}
OUTPUT_TOL = {np.dtype(np.float64): FORWARD_TOL[np.float64],
              np.dtype(np.float32): FORWARD_TOL[np.float32],
              np.dtype(np.float16): FORWARD_TOL[np.float16]}
if BFLOAT16 is not None:
    OUTPUT_TOL[BFLOAT16] = 8e-3

MAX_ELEMENTS = 200_000
THREAD_COUNTS = (1, 2, 5)


def finfo(dtype):
    return ml_dtypes.finfo(dtype) if is_bfloat16(dtype) else np.finfo(dtype)


def compute_dtype(dtype):
    """The arithmetic the kernels use for a storage dtype."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


# ---------------------------------------------------------------------------------------
# Strategies


class Case(NamedTuple):
    shape: tuple  # (N, C, *spatial), channels first; channel_axis=-1 moves C last
    num_groups: int
    by_group_size: bool
    dtype: np.dtype
    layout: str  # of x, see conftest.with_layout
    grad_layout: str
    stats_layout: str
    channel_axis: int
    eps: float
    log_scale: float  # the data's spread is 10 ** log_scale
    offset: float  # the groups' mean, in units of the spread (signed)
    distribution: str
    specials: tuple  # ((fraction of x's size, value), ...): NaN/Inf written into x
    grad_specials: tuple  # the same for grad_out
    weight: str  # None, "random", "ones", "zeros"
    bias: bool
    param_dtype: np.dtype
    activation: object
    log_grad_scale: float
    seed: int


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def shapes(draw):
    """(shape, num_groups): small shapes (one-element groups, sizes around the kernels'
    chunk of 2048 and row chunk of 64), many channels (up to 4096, tiny spatial size), or
    a long spatial axis (up to 60 000) with few channels; at most MAX_ELEMENTS elements."""
    kind = draw(st.sampled_from(["small", "many_channels", "long_spatial"]))
    if kind == "small":
        num_groups = draw(st.integers(1, 6))
        channels = num_groups * draw(st.integers(1, 8))
        sizes = st.integers(1, 9) | st.sampled_from([31, 32, 33, 63, 64, 65, 2047, 2048, 2049])
        spatial = tuple(draw(st.lists(sizes, max_size=3)))
    elif kind == "many_channels":
        channels = draw(st.sampled_from([4096, 2048, 1000, 768]) | st.integers(256, 4096))
        num_groups = draw(st.sampled_from(divisors(channels)))
        spatial = draw(st.sampled_from([(), (1,), (3,), (1, 1), (5, 7), (2, 3, 4)]))
    else:
        num_groups = draw(st.integers(1, 3))
        channels = num_groups * draw(st.integers(1, 3))
        if draw(st.booleans()):
            spatial = (draw(st.integers(10_000, 60_000)),)
        else:
            spatial = (draw(st.integers(100, 250)), draw(st.integers(100, 250)))
    while channels * int(np.prod(spatial)) > MAX_ELEMENTS:  # halve, never down to 0
        spatial = spatial[:-1] + ((spatial[-1] // 2,) if spatial[-1] > 1 else ())
    n = min(draw(st.integers(0, 4)), MAX_ELEMENTS // (channels * int(np.prod(spatial))))
    return (n, channels) + spatial, num_groups


def specials():
    return st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                              st.sampled_from([np.nan, np.inf, -np.inf])), max_size=3)


@st.composite
def cases(draw):
    """A valid call of group_norm (and of group_norm_backward with its statistics)."""
    shape, num_groups = draw(shapes())
    dtype = draw(st.sampled_from(DTYPES))
    channel_axis = draw(st.sampled_from([1, -1]))
    # Left out: byte-swapped bfloat16 (test_fixed_bug_byteswapped_bfloat16), and a
    # channels-last C = 1 with a negative stride (test_fixed_bug_channels_last_stride).
    layouts = [name for name in LAYOUTS
               if not (is_bfloat16(dtype) and name == "byteswapped")
               and not (channel_axis == -1 and shape[1] == 1 and name == "negative")]
    layout = draw(st.sampled_from(layouts))
    grad_layout = draw(st.sampled_from(layouts))
    stats_layout = draw(st.sampled_from(LAYOUTS))
    if dtype == np.float16:  # its range: 6e-8 (subnormal) to 65504
        log_scale = draw(st.floats(-7, 4))
    else:
        log_scale = draw(st.floats(-30, 30) | st.floats(-3, 3))
    offset = draw(st.just(0.0) | st.floats(-1e8, 1e8))
    eps = draw(st.sampled_from([0.0, 1e-5, 5e-324]) | st.floats(-45, 3).map(lambda e: 10.0 ** e))
    return Case(
        shape=shape, num_groups=num_groups, by_group_size=draw(st.booleans()), dtype=dtype,
        layout=layout, grad_layout=grad_layout, stats_layout=stats_layout,
        channel_axis=channel_axis, eps=eps, log_scale=log_scale,
        offset=offset,
        distribution=draw(st.sampled_from(["normal", "uniform", "cauchy", "few", "ramp",
                                           "constant"])),
        specials=tuple(draw(specials())),
        grad_specials=tuple(draw(specials())),
        weight=draw(st.sampled_from([None, "random", "ones", "zeros"])),
        bias=draw(st.booleans()),
        param_dtype=draw(st.sampled_from([dtype, np.dtype(np.float64)])),
        activation=draw(st.sampled_from([None, "relu", "silu"])),
        log_grad_scale=draw(st.floats(-2, 2)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


# ---------------------------------------------------------------------------------------
# Building the arrays of a case


def spread(rng, case):
    """Values of mean ~0 and spread ~1 in the case's distribution, with per-channel scales
    and shifts unless the groups are constant."""
    shape = case.shape
    if case.distribution == "normal":
        z = rng.standard_normal(shape)
    elif case.distribution == "uniform":
        z = rng.uniform(-1, 1, shape)
    elif case.distribution == "cauchy":  # heavy tails: outliers
        z = np.clip(rng.standard_cauchy(shape), -1e6, 1e6)
    elif case.distribution == "few":  # three values: groups often (nearly) constant
        z = rng.integers(-1, 2, shape).astype(np.float64)
    elif case.distribution == "ramp":  # sorted: a chunk's first elements are not typical
        z = np.linspace(-1, 1, int(np.prod(shape))).reshape(shape)
    else:
        return np.zeros(shape)
    per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    return z * rng.uniform(0.5, 2, per_channel) + rng.uniform(-2, 2, per_channel)


def sprinkled(values, points):
    """values with the (fraction of the size, value) points written in."""
    flat = values.reshape(-1)
    for fraction, value in points:
        if flat.size:
            flat[int(fraction * flat.size)] = value
    return values


def to_dtype(values, dtype):
    """values in dtype, clipped so that none overflows."""
    limit = float(finfo(dtype).max) / 4
    return np.clip(values, -limit, limit).astype(dtype)


class Arrays(NamedTuple):
    x: np.ndarray  # channels first, C-contiguous, in the case's dtype
    grad_out: np.ndarray
    weight: object
    bias: object


def arrays(case):
    rng = np.random.default_rng(case.seed)
    scale = 10.0 ** case.log_scale
    values = to_dtype((case.offset + spread(rng, case)) * scale, case.dtype)
    grad = to_dtype(rng.standard_normal(case.shape) * 10.0 ** case.log_grad_scale, case.dtype)
    channels = case.shape[1]
    weight = None
    if case.weight == "random":
        weight = 10.0 ** rng.uniform(-2, 2, channels) * rng.choice([-1.0, 1.0], channels)
    elif case.weight is not None:
        weight = np.full(channels, 1.0 if case.weight == "ones" else 0.0)
    bias = 10.0 ** rng.uniform(-2, 2) * rng.standard_normal(channels) if case.bias else None
    weight, bias = (None if p is None else p.astype(case.param_dtype) for p in (weight, bias))
    return Arrays(sprinkled(values, case.specials), sprinkled(grad, case.grad_specials),
                  weight, bias)


def as_argument(a, case, layout):
    """A channels-first array as the function receives it: moved to channels-last for
    channel_axis=-1, then stored in ``layout``."""
    return with_layout(a if case.channel_axis == 1 else np.moveaxis(a, 1, -1), layout)


def channels_first(a, case):
    return np.asarray(a) if case.channel_axis == 1 else np.moveaxis(np.asarray(a), -1, 1)


def groups_kwargs(case):
    if case.by_group_size:
        return {"num_groups": None, "group_size": case.shape[1] // case.num_groups}
    return {"num_groups": case.num_groups}


def run_forward(case, x, weight, bias, **kwargs):
    return gncpu.group_norm(x, weight=weight, bias=bias, eps=case.eps,
                            channel_axis=case.channel_axis, activation=case.activation,
                            return_stats=True, **groups_kwargs(case), **kwargs)


def run_backward(case, grad_out, x, mean, rstd, weight, bias, **kwargs):
    return gncpu.group_norm_backward(grad_out, x, mean, rstd, weight=weight, bias=bias,
                                     activation=case.activation,
                                     channel_axis=case.channel_axis,
                                     **groups_kwargs(case), **kwargs)


def run_both(case, data, **kwargs):
    """(y, mean, rstd, grad_x, grad_weight, grad_bias) of the case's arguments ``data``."""
    y, mean, rstd = run_forward(case, data["x"], data.get("weight"), data.get("bias"),
                                **kwargs)
    stats = with_layout(mean, case.stats_layout), with_layout(rstd, case.stats_layout)
    grads = run_backward(case, data["grad_out"], data["x"], *stats, data.get("weight"),
                         data.get("bias"), **kwargs)
    return (y, mean, rstd) + tuple(grads)


def arguments(case, arr):
    """The case's array arguments, each in its layout (absent parameters left out)."""
    data = {"x": as_argument(arr.x, case, case.layout),
            "grad_out": as_argument(arr.grad_out, case, case.grad_layout)}
    for name in ("weight", "bias"):
        if getattr(arr, name) is not None:
            data[name] = with_layout(getattr(arr, name), case.layout)
    return data


# ---------------------------------------------------------------------------------------
# What the reference says, and how close the kernels must come


def grouped(a, num_groups):
    """A channels-first array viewed as (N, G, elements of a group)."""
    n, channels = a.shape[:2]
    return a.reshape(n, num_groups, channels // num_groups * int(np.prod(a.shape[2:])))


def per_channel(v, shape, default):
    """A (C,) parameter (or ``default``) broadcast against channels-first ``shape``."""
    v = np.full(shape[1], default) if v is None else np.asarray(v, np.float64)
    return np.broadcast_to(v.reshape((1, -1) + (1,) * (len(shape) - 2)), shape)


def accurate_groups(x64, num_groups, eps, dtype):
    """(finite, accurate) masks of shape (N, G), and each group's largest deviation
    max|x - mean|, in float64.

    accurate: the group is finite, and

    - the kernels' moment accumulators in the compute precision (a chunk's sums of squared
      deviations, 64 per vector lane, and a sum of 32 values for the shift) can hold it, and
      var + eps is large enough for the squares' underflow not to matter (2^-50 of it): in
      float32 a deviation up to 2^59 (5.8e17), var + eps from 2^-99 (1.6e-30), |x| up to
      5e36. Outside, results differ from the reference (the xfail tests at the end);
    - the reference can be trusted: its two-pass variance takes the squares around a mean
      rounded by up to ~64 u |mean|, which adds the square of that error; it must be under
      2^-30 of var + eps (a constant group of 1e21 has variance 1.7e10 there, not 0).

    The variance here is the corrected two-pass one, free of that error to first order.
    """
    info = np.finfo(compute_dtype(dtype))
    xg = grouped(x64, num_groups)
    with np.errstate(all="ignore"):
        finite = np.isfinite(xg).all(axis=2)
        mean = xg.mean(axis=2)
        deviation = xg - mean[..., None]
        largest = np.abs(deviation).max(axis=2, initial=0.0)
        var = np.maximum((deviation ** 2).mean(axis=2) - deviation.mean(axis=2) ** 2, 0.0)
        magnitude = np.abs(xg).max(axis=2, initial=0.0)
        trusted = (64 * np.finfo(np.float64).eps * mean) ** 2 <= 2.0 ** -30 * (var + eps)
    accurate = (finite & trusted & (largest <= np.sqrt(float(info.max) / 256) / 2)
                & (var + eps >= float(info.smallest_subnormal) * 2.0 ** 50)
                & (magnitude <= float(info.max) / 64))
    return finite, accurate, largest


def group_max(v, num_groups, default):
    """max |v| over each group's channels, shape (G,)."""
    if v is None:
        return np.full(num_groups, default)
    return np.abs(np.asarray(v, np.float64)).reshape(num_groups, -1).max(axis=1)


def forward_bound(weight, bias, num_groups, mean, rstd, largest):
    """Each group's error scale, shape (N, G): max|w| rstd (|mean| + max|x - mean|) + max|b|.

    y = act((x - mean) * rstd * w + b) is computed in the compute precision from a mean
    rounded to it: an error of a few units of rounding in rstd, in x - mean and in the
    mean itself (which matters when |mean| >> std), each scaled by |w| rstd, plus the
    rounding of the result, of size |y| <= this scale.
    """
    return (group_max(weight, num_groups, 1.0) * rstd * (np.abs(mean) + largest)
            + group_max(bias, num_groups, 0.0))


def first_failure(fails, *columns):
    """A message naming the first failing index and each column's value there."""
    index = tuple(int(i) for i in np.argwhere(fails)[0])
    at = [np.broadcast_to(np.asarray(col, np.float64), fails.shape)[index] for _, col in columns]
    values = ", ".join(f"{name}={value:.6g}" for (name, _), value in zip(columns, at))
    return f"{int(fails.sum())} failures, first at {index}: {values}"


def assert_within(actual, expected, bound, keep, name):
    """|actual - expected| <= bound where keep (a non-finite actual fails)."""
    with np.errstate(invalid="ignore"):
        error = np.abs(np.asarray(actual, np.float64) - expected)
        fails = keep & ~(error <= bound)
    assert not fails.any(), f"{name}: " + first_failure(
        fails, ("actual", actual), ("expected", expected), ("bound", bound))


def check_forward(case, arr, y, mean, rstd):
    """Dtypes and shapes, confinement of NaN/Inf, and closeness to the reference."""
    num_groups, dtype = case.num_groups, case.dtype
    out_tol, stats_tol = OUTPUT_TOL[dtype], COMPUTE_TOL[compute_dtype(dtype)]
    stats_dtype = np.float64 if dtype == np.float64 else np.float32
    y = channels_first(y, case)
    assert y.dtype == dtype and y.shape == case.shape, (y.dtype, y.shape)
    for stat in (mean, rstd):
        assert stat.dtype == stats_dtype and stat.shape == (case.shape[0], num_groups)
    x64 = arr.x.astype(np.float64)
    weight, bias = arr.weight, arr.bias
    with np.errstate(all="ignore"):
        y_ref, mean_ref, rstd_ref = ref.group_norm(x64, num_groups, weight, bias, case.eps)
        y_ref = ref.activate(y_ref, case.activation)
    finite, accurate, largest = accurate_groups(x64, num_groups, case.eps, dtype)
    y64 = grouped(y.astype(np.float64), num_groups)
    dirty = ~finite
    assert not np.isfinite(y64[dirty]).any(), "a finite output in a group with NaN/Inf"
    assert not (np.isfinite(mean[dirty]) & np.isfinite(rstd[dirty])).any(), (
        "finite statistics for a group with NaN/Inf")
    for what, where in (("checked", accurate), ("with NaN/Inf", dirty),
                        ("out of the accumulators' range", finite & ~accurate)):
        if where.any():
            event(f"{dtype.name}: a group {what}")
    y_ref = grouped(y_ref, num_groups)
    with np.errstate(all="ignore"):
        bound = forward_bound(weight, bias, num_groups, mean_ref, rstd_ref, largest)
        representable = np.abs(y_ref) <= float(finfo(dtype).max) / 2
        bound_mean = stats_tol * (np.abs(mean_ref) + largest)
        # Chunk means are merged as float64 values near the group's mean: their rounding
        # moves the variance by ~u |mean| / std of itself (float64 with |mean| >> std).
        bound_rstd = stats_tol * rstd_ref * (1 + np.abs(mean_ref) * rstd_ref)
    tiny = float(finfo(dtype).smallest_subnormal)  # the output's resolution near 0
    assert_within(y64, y_ref, out_tol * bound[..., None] + tiny,
                  accurate[..., None] & representable,
                  "y (sample, group, element)")
    assert_within(mean, mean_ref, bound_mean, accurate, "mean")
    assert_within(rstd, rstd_ref, bound_rstd, accurate, "rstd")
    return accurate


def check_backward(case, arr, mean, rstd, grads, accurate):
    """The gradients equal the reference's, given the same (fast) statistics, on the groups
    the forward pass gets right and whose grad_out is finite; on other groups' channels
    grad_weight and grad_bias are not checked.

    The bounds, per (sample, group): rstd max|grad_out w| (2 + max|xhat|^2) for grad_x (its
    three terms' sizes), and per channel sum|grad_out xhat| and sum|grad_out| for
    grad_weight and grad_bias. With relu, a group where the kernels' pre-activation may
    round to the other side of 0 is not checked.
    """
    num_groups, dtype = case.num_groups, case.dtype
    out_tol, sum_tol = OUTPUT_TOL[dtype], COMPUTE_TOL[compute_dtype(dtype)]
    shape = case.shape
    grad_x, grad_weight, grad_bias = grads
    grad_x = channels_first(grad_x, case)
    assert grad_x.dtype == dtype and grad_x.shape == shape
    for grad in (grad_weight, grad_bias):
        assert grad.dtype.kind == "f" and grad.shape == (shape[1],)
    x64, dy = arr.x.astype(np.float64), arr.grad_out.astype(np.float64)
    m, r = mean.astype(np.float64)[..., None], rstd.astype(np.float64)[..., None]
    w = per_channel(arr.weight, shape, 1.0)
    b = per_channel(arr.bias, shape, 0.0)
    with np.errstate(all="ignore"):
        xhat = ((grouped(x64, num_groups) - m) * r).reshape(shape)
        t = xhat * w + b
        g = dy * ref.activation_slope(t, case.activation)
        grads_ref = ref.group_norm_backward(g, x64, mean, rstd, num_groups, arr.weight)
        keep = accurate & np.isfinite(grouped(dy, num_groups)).all(axis=2)
        if case.activation == "relu":
            margin = 16 * np.finfo(compute_dtype(dtype)).eps * (np.abs(xhat * w) + np.abs(b))
            unsure = (np.abs(t) < margin) & (t != 0)
            keep &= ~grouped(unsure, num_groups).any(axis=2)
        dyw = grouped(np.abs(dy * w), num_groups).max(axis=2, initial=0.0)
        xmax = grouped(np.abs(xhat), num_groups).max(axis=2, initial=0.0)
        bound_x = out_tol * r[..., 0] * dyw * (2 + xmax ** 2)
        reduce_axes = (0,) + tuple(range(2, len(shape)))
        bound_w = sum_tol * np.abs(dy * xhat).sum(axis=reduce_axes)
        bound_b = sum_tol * np.abs(dy).sum(axis=reduce_axes)
    grad_max = float(finfo(dtype).max) / 2
    ref_x = grouped(grads_ref[0], num_groups)
    tiny = float(finfo(dtype).smallest_subnormal)
    assert_within(grouped(grad_x.astype(np.float64), num_groups), ref_x,
                  bound_x[..., None] + tiny, keep[..., None] & (np.abs(ref_x) <= grad_max),
                  "grad_x (sample, group, element)")
    channels = np.repeat(keep.all(axis=0), shape[1] // num_groups)
    assert_within(grad_weight, grads_ref[1], bound_w, channels, "grad_weight")
    assert_within(grad_bias, grads_ref[2], bound_b, channels, "grad_bias")


# ---------------------------------------------------------------------------------------
# Properties of valid calls


@budget(1)
@given(cases())
def test_forward_matches_reference_and_confines_nonfinite(case):
    arr = arrays(case)
    data = arguments(case, arr)
    before = snapshot(data)
    y, mean, rstd = run_forward(case, data["x"], data.get("weight"), data.get("bias"))
    assert_unchanged(data, before)
    check_forward(case, arr, y, mean, rstd)


@budget(1)
@given(cases())
def test_backward_matches_reference_and_confines_nonfinite(case):
    arr = arrays(case)
    data = arguments(case, arr)
    y, mean, rstd = run_forward(case, data["x"], data.get("weight"), data.get("bias"))
    accurate = check_forward(case, arr, y, mean, rstd)
    before = snapshot(data)
    stats = {"mean": with_layout(mean, case.stats_layout),
             "rstd": with_layout(rstd, case.stats_layout)}
    stats_before = snapshot(stats)
    grads = run_backward(case, data["grad_out"], data["x"], stats["mean"], stats["rstd"],
                         data.get("weight"), data.get("bias"))
    assert_unchanged(data, before)
    assert_unchanged(stats, stats_before)
    check_backward(case, arr, mean, rstd, grads, accurate)


NAMES = ("y", "mean", "rstd", "grad_x", "grad_weight", "grad_bias")


def assert_same_bits(actual, expected, name):
    """assert_bitwise, except that any two NaNs count as equal: which NaN an operation on
    two NaNs returns depends on the output's alignment (test_known_bug_nan_bits)."""
    actual, expected = np.array(actual), np.array(expected)
    nan = np.isnan(actual)
    assert np.array_equal(nan, np.isnan(expected)), f"{name}: NaN in different places"
    actual[nan] = expected[nan] = np.nan
    assert_bitwise(actual, expected, name)


@budget(1)
@given(cases(), st.data())
def test_sample_alone_equals_its_row_of_the_batch(case, data):
    """Bitwise (up to NaN payloads), forward and backward, with 1 or 2 threads."""
    assume(case.shape[0] > 0)
    arr = arrays(case)
    args = arguments(case, arr)
    i = data.draw(st.integers(0, case.shape[0] - 1), label="sample")
    threads = data.draw(st.sampled_from(THREAD_COUNTS[:2]), label="num_threads")
    batch = run_both(case, args, num_threads=threads)
    row = slice(i, i + 1)
    alone = dict(args, x=args["x"][row], grad_out=args["grad_out"][row])
    for name, a, b in zip(NAMES[:4], run_both(case, alone, num_threads=threads), batch):
        assert_same_bits(a, b[row], f"{name} of sample {i} alone")


@budget(1)
@given(cases())
def test_thread_count_does_not_change_any_bit(case):
    """1, 2 and 5 threads: bitwise equal (up to NaN payloads), forward and backward."""
    args = arguments(case, arrays(case))
    if np.prod(case.shape) >= 2 * 32768:  # gncpu's smallest work for two threads
        event("large enough for several threads")
    serial = run_both(case, args, num_threads=1)
    for threads in THREAD_COUNTS[1:]:
        for name, a, b in zip(NAMES, run_both(case, args, num_threads=threads), serial):
            assert_same_bits(a, b, f"{name} with num_threads={threads}")


# ---------------------------------------------------------------------------------------
# Invalid arguments

SMALL = (2, 12, 5)  # C = 12: groups of 1, 2, 3, 4, 6, 12 channels
SMALL_G = 3


def small_x():
    return np.random.default_rng(0).standard_normal(SMALL).astype(np.float32)


def small_stats(x):
    _, mean, rstd = gncpu.group_norm(x, SMALL_G, return_stats=True)
    return mean, rstd


def wrong_shapes(good):
    """Shapes of the same kind as ``good`` that differ from it."""
    dims = st.integers(0, 14)
    return st.lists(dims, min_size=0, max_size=len(good) + 1).map(tuple).filter(
        lambda s: s != good)


# Unknown activations (an ASCII alphabet: st.text's default would build a Unicode table).
ACTIVATION_NAMES = (st.sampled_from(["gelu", "RELU", "Silu", "relu ", "", 1, 0.5, b"relu"])
                    | st.text("aeilrsu_ ", max_size=6).filter(lambda s: s not in ("relu", "silu")))


@st.composite
def bad_forward_calls(draw):
    """(kwargs of group_norm, exception type, tokens its message must contain)."""
    x = small_x()
    channels = SMALL[1]
    kwargs = {"x": x, "num_groups": SMALL_G}
    what = draw(st.sampled_from(["num_groups", "group_size", "groups_not_int", "both",
                                 "weight", "bias", "eps", "eps_type", "out_shape",
                                 "out_dtype", "out_readonly", "out_type", "channel_axis",
                                 "activation", "num_threads", "threads_not_int", "ndim",
                                 "dtype", "residual"]))
    if what == "num_groups":
        k = draw(st.integers(-2**100, 2**100).filter(lambda k: k <= 0 or channels % k))
        return dict(kwargs, num_groups=k), ValueError, ("num_groups", k)
    if what == "group_size":
        k = draw(st.integers(-2**100, 2**100).filter(lambda k: k <= 0 or channels % k))
        return dict(kwargs, num_groups=None, group_size=k), ValueError, ("group_size", k)
    if what == "groups_not_int":
        k = draw(st.sampled_from([2.5, 3.0, "3", True, np.float32(3), [3]]))
        return dict(kwargs, num_groups=k), TypeError, ("num_groups",)
    if what == "both":
        return dict(kwargs, group_size=4), ValueError, ("num_groups", "group_size")
    if what in ("weight", "bias"):
        shape = draw(wrong_shapes((channels,)))
        return dict(kwargs, **{what: np.ones(shape, np.float32)}), ValueError, (what, shape)
    if what == "eps":
        eps = draw(st.floats(max_value=-5e-324) | st.sampled_from([np.nan, np.inf, -np.inf]))
        return dict(kwargs, eps=eps), ValueError, ("eps", repr(eps))
    if what == "eps_type":
        eps = draw(st.sampled_from(["1e-5", None, 1j, np.ones(2)]))
        return dict(kwargs, eps=eps), TypeError, ("eps",)
    if what == "out_shape":
        shape = draw(wrong_shapes(SMALL))
        return dict(kwargs, out=np.empty(shape, np.float32)), ValueError, ("out", shape)
    if what == "out_dtype":
        dtype = np.dtype(draw(st.sampled_from([np.float64, np.float16, np.int32, np.bool_])))
        return dict(kwargs, out=np.empty(SMALL, dtype)), ValueError, ("out", dtype.name)
    if what == "out_readonly":
        out = np.empty(SMALL, np.float32)
        out.flags.writeable = False
        return dict(kwargs, out=out), ValueError, ("out", "read-only")
    if what == "out_type":
        return dict(kwargs, out=x.tolist()), TypeError, ("out",)
    if what == "channel_axis":
        axis = draw(st.integers(-2**100, 2**100).filter(lambda k: k not in (1, 2, -1, -2)))
        return dict(kwargs, channel_axis=axis), ValueError, ("channel_axis", axis)
    if what == "activation":
        name = draw(ACTIVATION_NAMES)
        return dict(kwargs, activation=name), ValueError, ("activation", repr(name))
    if what == "num_threads":
        threads = draw(st.integers(-2**100, 0) | st.integers(2**63, 2**100))
        return dict(kwargs, num_threads=threads), ValueError, ("num_threads", threads)
    if what == "threads_not_int":
        threads = draw(st.sampled_from([1.5, 2.0, "2", True]))
        return dict(kwargs, num_threads=threads), TypeError, ("num_threads",)
    if what == "ndim":
        shape = draw(st.sampled_from([(), (12,), (0,)]))
        return dict(kwargs, x=np.ones(shape, np.float32)), ValueError, (str(shape),)
    if what == "dtype":
        dtype = np.dtype(draw(st.sampled_from([np.complex64, np.complex128, object, "U1",
                                               "S1", "M8[s]", "m8[s]"])))
        return dict(kwargs, x=np.zeros(SMALL, dtype)), TypeError, (str(dtype),)
    shape = draw(wrong_shapes(SMALL))
    return dict(kwargs, residual=np.ones(shape, np.float32)), ValueError, ("residual", shape)


@st.composite
def bad_backward_calls(draw):
    x = small_x()
    mean, rstd = small_stats(x)
    kwargs = {"grad_out": np.ones_like(x), "x": x, "mean": mean, "rstd": rstd,
              "num_groups": SMALL_G}
    what = draw(st.sampled_from(["grad_out", "mean", "rstd", "weight", "bias", "num_groups",
                                 "activation"]))
    if what == "grad_out":
        shape = draw(wrong_shapes(SMALL))
        return dict(kwargs, grad_out=np.ones(shape, np.float32)), ValueError, (what, shape)
    if what in ("mean", "rstd"):
        shape = draw(wrong_shapes(mean.shape))
        return dict(kwargs, **{what: np.ones(shape, np.float32)}), ValueError, (what, shape)
    if what in ("weight", "bias"):
        shape = draw(wrong_shapes((SMALL[1],)))
        return dict(kwargs, **{what: np.ones(shape, np.float32)}), ValueError, (what, shape)
    if what == "num_groups":
        k = draw(st.integers(-2**100, 2**100).filter(lambda k: k <= 0 or SMALL[1] % k))
        return dict(kwargs, num_groups=k), ValueError, ("num_groups", k)
    name = draw(ACTIVATION_NAMES)
    return dict(kwargs, activation=name), ValueError, ("activation", repr(name))


@budget(5)
@given(bad_forward_calls())
def test_bad_forward_argument_is_named(call):
    kwargs, exc_type, tokens = call
    raises_naming(exc_type, *tokens, func=gncpu.group_norm, **kwargs)


@budget(3)
@given(bad_backward_calls())
def test_bad_backward_argument_is_named(call):
    kwargs, exc_type, tokens = call
    raises_naming(exc_type, *tokens, func=gncpu.group_norm_backward, **kwargs)


# Pools of valid and invalid argument values, combined at random. Integers include some
# beyond int64 (test_fixed_bug_huge_integer_arguments); no spatial size is 0
# (test_fixed_bug_spatial_size_zero).
POOL_SHAPES = [(2, 4, 3), (0, 4, 3), (2, 0, 3), (2, 4), (1, 6, 2, 2), (4,), (), (3, 1)]
POOL_DTYPES = [np.float32, np.float64, np.float16, np.int32, np.bool_, np.complex64, object]
POOL_INTS = [None, 1, 2, 3, 4, 0, -1, 2**62, 2**64, -2**63 - 1, 2.5, True, "2", np.int64(2)]
POOL_EPS = [1e-5, 0.0, -1.0, np.nan, np.inf, "x", None, 1e300, 10**400, np.float32(1e-3)]
POOL_AXES = [1, -1, 0, 2, -2, 3, 2**64, 1.0, "1", None]
POOL_ACTIVATIONS = [None, "relu", "silu", "gelu", 1]


@st.composite
def any_array(draw, like_shape=None):
    shape = draw(st.sampled_from(POOL_SHAPES + ([like_shape] * 3 if like_shape else [])))
    dtype = draw(st.sampled_from(POOL_DTYPES))
    a = np.ones(shape, dtype)
    kind = draw(st.sampled_from(["array", "list", "readonly", "none"]))
    if kind == "list":
        return a.tolist()
    if kind == "readonly":
        a.flags.writeable = False
    return None if kind == "none" else a


@budget(5)
@given(st.data())
def test_any_arguments_raise_only_documented_errors(data):
    """group_norm and group_norm_backward on arguments drawn from pools mixing valid and
    invalid values: they succeed or raise ValueError or TypeError, nothing else."""
    draw = data.draw
    x = draw(any_array(), label="x")
    shape = np.shape(x)
    common = {"num_groups": draw(st.sampled_from(POOL_INTS), label="num_groups"),
              "group_size": draw(st.sampled_from(POOL_INTS), label="group_size"),
              "weight": draw(any_array((shape[1],) if len(shape) > 1 else None), label="w"),
              "bias": draw(any_array((shape[1],) if len(shape) > 1 else None), label="b"),
              "channel_axis": draw(st.sampled_from(POOL_AXES), label="channel_axis"),
              "activation": draw(st.sampled_from(POOL_ACTIVATIONS), label="activation"),
              "num_threads": draw(st.sampled_from(POOL_INTS), label="num_threads")}
    if draw(st.booleans(), label="backward"):
        stats_shape = draw(st.sampled_from([(2, 2), (2, 1), (0, 2), (2,)]), label="stats")
        call = (gncpu.group_norm_backward, dict(
            common, x=x, grad_out=draw(any_array(shape), label="grad_out"),
            mean=np.zeros(stats_shape), rstd=np.ones(stats_shape)))
    else:
        call = (gncpu.group_norm, dict(
            common, x=x, eps=draw(st.sampled_from(POOL_EPS), label="eps"),
            out=draw(any_array(shape), label="out"),
            residual=draw(any_array(shape), label="residual"),
            return_stats=draw(st.booleans(), label="return_stats")))
    func, kwargs = call
    try:
        func(**kwargs)
    except (ValueError, TypeError):
        pass


# ---------------------------------------------------------------------------------------
# Known bugs and limits, found by the properties above and left out of their strategies.
# Strict xfail: each starts failing (XPASS) once fixed, and its exclusion above can go.


def test_fixed_bug_spatial_size_zero():
    """Empty groups: y is empty, mean and rstd NaN (as finish_stats writes them)."""
    code = ("import numpy as np, gncpu; "
            "y, m, r = gncpu.group_norm(np.zeros((2, 4, 0), np.float32), 2, return_stats=True); "
            "assert y.shape == (2, 4, 0) and m.shape == r.shape == (2, 2); "
            "assert np.isnan(m).all() and np.isnan(r).all()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-300:]}"


def test_fixed_bug_channels_last_stride():
    base = np.arange(20.0)
    x = base[10:3:-1].reshape(1, 7, 1)  # (N, S, C): the misreads stay inside base
    expected = gncpu.group_norm(np.ascontiguousarray(x), 1, channel_axis=-1)
    np.testing.assert_array_equal(gncpu.group_norm(x, 1, channel_axis=-1), expected)
    buf = np.zeros(64)
    out = buf[40:33:-1].reshape(1, 7, 1)  # the miswrites too
    gncpu.group_norm(np.ascontiguousarray(x), 1, channel_axis=-1, out=out)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.skipif(BFLOAT16 is None, reason="needs ml_dtypes")
def test_fixed_bug_byteswapped_bfloat16():
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(BFLOAT16)
    swapped = x.astype(BFLOAT16.newbyteorder("S"))
    y = gncpu.group_norm(swapped, 2)
    np.testing.assert_array_equal(np.asarray(y, np.float32),
                                  np.asarray(gncpu.group_norm(x, 2), np.float32))


@pytest.mark.parametrize("value", [2**63, 2**64, -2**63 - 1, -2**64])
@pytest.mark.parametrize("name", ["num_groups", "group_size", "channel_axis", "num_threads"])
def test_fixed_bug_huge_integer_arguments(name, value):
    """Integers beyond int64 raised OverflowError without naming the argument."""
    kwargs = {"num_groups": 2, name: value}
    if name == "group_size":
        kwargs["num_groups"] = None
    valid = {"num_groups": "valid values for C=4: 1, 2, 4",
             "group_size": "valid values for C=4: 1, 2, 4",
             "channel_axis": "use 1 (channels first",
             "num_threads": "at least 1" if value < 0 else f"use 1 to {2**63 - 1}"}[name]
    raises_naming(ValueError, f"{name}={value}", valid, func=gncpu.group_norm,
                  x=np.ones((2, 4, 3), np.float32), **kwargs)


@pytest.mark.parametrize("eps, shown", [(10**400, "1.00e+400"), (-10**400, "-1.00e+400")])
def test_fixed_bug_huge_integer_eps(eps, shown):
    """An int eps beyond float64 raised OverflowError without naming eps."""
    raises_naming(ValueError, f"eps={shown}", "finite and non-negative", func=gncpu.group_norm,
                  x=np.ones((2, 4, 3), np.float32), num_groups=2, eps=eps)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("log_scale, eps", [(19, 1e-5), (30, 0.0), (-22, 0.0), (-30, 0.0)],
                         ids=["1e19", "1e30", "1e-22-eps0", "1e-30-eps0"])
@pytest.mark.xfail(strict=True, reason="float32 accumulators of squared deviations overflow "
                   "from a spread of ~1e19 (rstd = 0, y = bias) and underflow below ~1e-19 "
                   "(with eps=0 rstd is off, then NaN: the variance comes out negative), "
                   "although the reference's answer is finite and representable in float32")
def test_known_limit_float32_moments(dtype, log_scale, eps):
    if dtype == "bfloat16" and BFLOAT16 is None:
        pytest.skip("needs ml_dtypes")
    x64 = np.random.default_rng(0).standard_normal((1, 2, 100)) * 10.0 ** log_scale
    x = x64.astype(BFLOAT16 if dtype == "bfloat16" else np.float32)
    y, mean, rstd = gncpu.group_norm(x, 1, eps=eps, return_stats=True)
    y_ref, _, rstd_ref = ref.group_norm(x.astype(np.float64), 1, eps=eps)
    np.testing.assert_allclose(rstd, rstd_ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=1e-2, atol=1e-2)


def at_offset(shape, dtype, k):
    """An array whose data starts k elements past a 32-byte boundary."""
    n = int(np.prod(shape))
    buf = np.empty(n + 64, dtype)
    start = (-buf.ctypes.data // buf.itemsize) % (32 // buf.itemsize) + k
    return buf[start:start + n].reshape(shape)


@pytest.mark.xfail(strict=False, reason="where two NaN operands meet, which one (and so which "
                   "sign) comes out depends on the output's alignment: the head vector peeled "
                   "for aligned stores is compiled with other operand orders")
def test_known_bug_nan_bits():
    x = np.array([[[1.0, 2.0], [np.nan, -np.nan]]])
    outs = [at_offset(x.shape, x.dtype, k) for k in range(4)]
    for out in outs:
        gncpu.group_norm(x, 1, out=out)
    for k, out in enumerate(outs[1:], 1):
        assert_bitwise(out, outs[0], f"out at element offset {k}")
