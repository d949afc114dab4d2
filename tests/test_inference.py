"""Inference features (issue 4): channels-last arrays, the fused relu/silu activation, the
fused residual add, float16 and bfloat16 storage, ``out=``, and calls from many Python
threads at once.

The float64 reference in ``gncpu._reference`` knows none of these options, so the tests
compose it: the residual is added in x's dtype (as gncpu documents), the channels are moved
to axis 1, the reference normalizes, and the activation is applied in float64; the backward
of the composition is the reference backward fed ``grad_out * act'(pre)`` (the chain rule),
itself checked against central finite differences.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import gncpu
from gncpu import _reference as ref
from conftest import (BACKWARD_TOL, FORWARD_TOL, assert_bitwise, assert_close,
                      assert_close_where, assert_stats_close, compiled_kernel_modules,
                      group_masks, import_kernel_module, random_affine, random_array,
                      raises_naming, with_layout)
from test_backward import TINY, TINY_IDS, numeric_gradients
from test_invariance import assert_unchanged, snapshot

DTYPES = ("float32", "float64", "float16", "bfloat16")
DTYPE_IDS = ("f32", "f64", "f16", "bf16")

# Normwise relative error bounds keyed by the data's dtype. bfloat16 keeps 8 significant
# bits: rounding the output alone costs up to 2^-8 of max|y|.
FWD_TOL = {"float64": FORWARD_TOL[np.float64], "float32": FORWARD_TOL[np.float32],
           "float16": FORWARD_TOL[np.float16], "bfloat16": 8e-3}
BWD_TOL = {"float64": BACKWARD_TOL[np.float64], "float32": BACKWARD_TOL[np.float32],
           "float16": 2e-3, "bfloat16": 1e-2}

# Where |pre-activation| is below this, float32 rounding may put the fast kernels on the
# other side of relu's kink than the float64 reference; there the reference takes the
# fast forward's decision (y > 0), and the derivatives must agree everywhere else.
RELU_TIE = 1e-4

# (shape as (N, C, *spatial), num_groups): odd channels per group, G = 1 and G = C, N = 1
# and N > 1, 64-row chunks crossed channels-last and 2048-element chunks channels-first.
CASES = [
    ((1, 3, 7), 1),  # N = 1, G = 1, 3 channels per group
    ((3, 6), 2),  # no spatial axis: channel_axis=-1 is axis 1
    ((2, 6, 65), 2),  # 65 rows: one full 64-row chunk and one of 1
    ((3, 5, 11, 13), 5),  # G = C, 143 rows
    ((2, 9, 2053), 3),  # > 2048 per channel, 3 channels per group
    ((1, 4, 45, 47), 1),  # 2115 rows, G = 1
    ((2, 15, 3, 5, 7), 5),  # 3 spatial dims
]
CASE_IDS = ["x".join(map(str, s)) + f"-G{g}" for s, g in CASES]

AXES = (1, -1)
AXIS_IDS = ("nchw", "nhwc")
ACTIVATIONS = (None, "relu", "silu")


def dtype_of(name):
    """The dtype called ``name``; bfloat16 comes from ml_dtypes (skip without it)."""
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def stats_dtype(dtype):
    return np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)


def arrange(x, channel_axis, layout="C"):
    """An (N, C, *spatial) array as a caller with ``channel_axis`` passes it, in ``layout``.

    Besides the layouts of ``with_layout``: padded, the last axis cut from a buffer 3
    wider whose gaps hold NaN (rows of a channels-last array with a stride of C + 3);
    transposed, a channels-last view of channels-first memory (``np.moveaxis`` of an
    NCHW array).
    """
    x = np.asarray(x)
    if channel_axis != 1 and layout == "transposed":
        return np.moveaxis(np.ascontiguousarray(x), 1, -1)
    if channel_axis != 1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    if layout == "padded":
        buf = np.full(x.shape[:-1] + (x.shape[-1] + 3,), np.nan, x.dtype)
        view = buf[..., :x.shape[-1]]
        view[...] = x
        return view
    return with_layout(x, layout)


def reference_forward(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1,
                      activation=None, residual=None):
    """The float64 reference composed with the options it lacks. Returns (y, mean, rstd)."""
    x = np.asarray(x)
    if residual is not None:
        x = x + np.asarray(residual).astype(x.dtype)  # rounded to x's dtype, as documented
    pre, mean, rstd = ref.group_norm(np.moveaxis(x, channel_axis, 1), num_groups, weight,
                                     bias, eps)
    return np.moveaxis(ref.activate(pre, activation), 1, channel_axis), mean, rstd


def reference_backward(grad_out, x, num_groups, weight=None, bias=None, eps=1e-5, *,
                       channel_axis=1, activation=None, positive=None):
    """Gradients of sum(grad_out * reference_forward(...)) by the chain rule: the reference
    backward of the affine output gets g = grad_out * act'(pre). ``positive`` (the fast
    forward's y > 0) settles relu's ties, see RELU_TIE."""
    x = np.moveaxis(np.asarray(x, np.float64), channel_axis, 1)
    grad_out = np.moveaxis(np.asarray(grad_out, np.float64), channel_axis, 1)
    pre, mean, rstd = ref.group_norm(x, num_groups, weight, bias, eps)
    slope = ref.activation_slope(pre, activation)
    if positive is not None:
        tie = np.abs(pre) < RELU_TIE
        slope[tie] = np.moveaxis(np.asarray(positive), channel_axis, 1)[tie]
    grad_x, grad_weight, grad_bias = ref.group_norm_backward(grad_out * slope, x, mean, rstd,
                                                             num_groups, weight)
    return np.moveaxis(grad_x, 1, channel_axis), grad_weight, grad_bias


def check_composed(x, grad_out, num_groups, weight=None, bias=None, eps=1e-5, *,
                   channel_axis=1, activation=None, module=gncpu):
    """Fast forward and backward (``module``'s) with the options, checked (dtypes, shapes,
    values) against the composed reference. Returns the fast (y, mean, rstd, grad_x,
    grad_weight, grad_bias).
    """
    options = dict(channel_axis=channel_axis, activation=activation)
    y, mean, rstd = module.group_norm(x, num_groups, weight, bias, eps, return_stats=True,
                                     **options)
    native = x.dtype.newbyteorder("=")
    name = native.name
    channels = x.shape[channel_axis]
    assert y.dtype == native and y.shape == x.shape, (y.dtype, y.shape)
    for stat in (mean, rstd):
        assert stat.dtype == stats_dtype(x.dtype) and stat.shape == (x.shape[0], num_groups)
    y_ref, mean_ref, rstd_ref = reference_forward(x, num_groups, weight, bias, eps, **options)
    assert_close(y, y_ref, FWD_TOL[name], "y")
    assert_stats_close(mean, rstd, mean_ref, rstd_ref, FORWARD_TOL[stats_dtype(x.dtype).type])
    grads = module.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight, bias=bias,
                                       **options)
    positive = np.asarray(y) > 0 if activation == "relu" else None
    grads_ref = reference_backward(grad_out, x, num_groups, weight, bias, eps,
                                   positive=positive, **options)
    assert grads[0].dtype == native and grads[0].shape == x.shape, grads[0].dtype
    for grad in grads[1:]:
        assert grad.dtype == stats_dtype(x.dtype) and grad.shape == (channels,), grad.dtype
    for label, fast, slow in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads_ref):
        assert_close(fast, slow, BWD_TOL[name], label)
    return (y, mean, rstd) + tuple(grads)


def run_all(x, grad_out, num_groups, weight, bias, residual=None, **options):
    """Forward (residual_out receiving the sum when there is a residual) and the backward
    of the composed function, with the same options: {name: array}."""
    results = {}
    extra = {}
    if residual is not None:
        results["sum"] = np.empty_like(x)
        extra = dict(residual=residual, residual_out=results["sum"])
    results["y"], results["mean"], results["rstd"] = gncpu.group_norm(
        x, num_groups, weight, bias, return_stats=True, **extra, **options)
    normalized = x if residual is None else results["sum"]
    grads = gncpu.group_norm_backward(grad_out, normalized, results["mean"], results["rstd"],
                                      num_groups, weight, bias=bias, **options)
    results.update(zip(("grad_x", "grad_weight", "grad_bias"), grads))
    return results


# ---------------------------------------------------------------------------------------
# Channels-last and activations against the reference.


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_composed_reference(rng, case, dtype, channel_axis, activation):
    """Channels-last results also equal (within rounding, not bitwise) those of the same
    data passed channels-first."""
    shape, num_groups = case
    dtype = dtype_of(dtype)
    x_first = random_array(rng, shape, dtype)
    grad_first = random_array(rng, shape, dtype)
    weight, bias = random_affine(rng, shape[1], dtype)
    x, grad_out = arrange(x_first, channel_axis), arrange(grad_first, channel_axis)
    fast = check_composed(x, grad_out, num_groups, weight, bias, channel_axis=channel_axis,
                          activation=activation)
    if channel_axis == 1:
        return
    first = gncpu.group_norm(x_first, num_groups, weight, bias, activation=activation,
                             return_stats=True)
    assert_close(fast[0], arrange(first[0], -1), FWD_TOL[dtype.name], "y vs channels-first")
    assert_stats_close(fast[1], fast[2], first[1], first[2],
                       FORWARD_TOL[stats_dtype(dtype).type])
    if activation == "relu" and not np.array_equal(fast[0] > 0, arrange(first[0] > 0, -1)):
        return  # a tie at relu's kink: the two subgradients differ legitimately there
    grads_first = gncpu.group_norm_backward(grad_first, x_first, first[1], first[2],
                                            num_groups, weight, bias=bias,
                                            activation=activation)
    grads_first = (arrange(grads_first[0], -1),) + grads_first[1:]
    for label, a, b in zip(("grad_x", "grad_weight", "grad_bias"), fast[3:], grads_first):
        assert_close(a, b, BWD_TOL[dtype.name], f"{label} vs channels-first")


@pytest.mark.parametrize("layout", ["padded", "transposed", "F", "strided", "negative",
                                    "readonly", "byteswapped", "unaligned"])
@pytest.mark.parametrize("dtype", ["float32", "float16"], ids=["f32", "f16"])
@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=[CASE_IDS[2], CASE_IDS[4]])
def test_channels_last_any_memory_layout(rng, case, dtype, layout):
    """Channels-last x and grad_out with row padding, channels-first memory, strides..."""
    shape, num_groups = case
    x = arrange(random_array(rng, shape, dtype), -1, layout)
    grad_out = arrange(random_array(rng, shape, dtype), -1, layout)
    weight, bias = random_affine(rng, shape[1], np.float32)
    check_composed(x, grad_out, num_groups, weight, bias, channel_axis=-1, activation="silu")


@pytest.mark.parametrize("module_name", compiled_kernel_modules())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=[CASE_IDS[2], CASE_IDS[4]])
def test_every_compiled_variant_matches_reference(rng, case, dtype, module_name):
    """Each shipped kernel variant (their 16-bit conversions differ), channels-last and
    channels-first, with an activation, and with a residual."""
    module = import_kernel_module(module_name)
    shape, num_groups = case
    dtype = dtype_of(dtype)
    weight, bias = random_affine(rng, shape[1], np.float32)
    for channel_axis, activation in ((-1, "silu"), (1, "relu")):
        x, grad_out, residual = (arrange(random_array(rng, shape, dtype), channel_axis)
                                 for _ in range(3))
        check_composed(x, grad_out, num_groups, weight, bias, channel_axis=channel_axis,
                       activation=activation, module=module)
        y = module.group_norm(x, num_groups, weight, bias, residual=residual,
                              channel_axis=channel_axis, activation=activation)
        y_ref = reference_forward(x, num_groups, weight, bias, residual=residual,
                                  channel_axis=channel_axis, activation=activation)[0]
        assert_close(y, y_ref, FWD_TOL[dtype.name], "y with a residual")


@pytest.mark.parametrize("spellings", [(-1, 3), (1, -3)], ids=["last", "first"])
def test_channel_axis_spellings_are_equivalent(rng, spellings):
    """channel_axis=-1 and ndim - 1 are the same axis, as are 1 and 1 - ndim: same bits."""
    x = random_array(rng, (2, 5, 7, 6), np.float32)
    grad_out = random_array(rng, x.shape, np.float32)
    weight, bias = random_affine(rng, x.shape[spellings[0]], np.float32)
    a, b = (run_all(x, grad_out, 1, weight, bias, channel_axis=axis, activation="silu")
            for axis in spellings)
    for name in a:
        assert_bitwise(b[name], a[name], name)


def test_channel_axis_minus_one_of_a_2d_array_is_axis_1(rng):
    x = random_array(rng, (3, 6), np.float32)
    weight, bias = random_affine(rng, 6, np.float32)
    a = run_all(x, x[::-1].copy(), 2, weight, bias, channel_axis=-1, activation="relu")
    b = run_all(x, x[::-1].copy(), 2, weight, bias, channel_axis=1, activation="relu")
    for name in a:
        assert_bitwise(a[name], b[name], name)


@pytest.mark.parametrize("shape, channel_axis", [((2, 5, 7, 6), 0), ((2, 5, 7, 6), 2),
                                                 ((2, 5, 7, 6), 4), ((2, 5, 7, 6), -4),
                                                 ((2, 5, 7, 6), -5), ((3, 6), 0),
                                                 ((3, 6), 2), ((3, 6), -2)])
def test_channel_axis_out_of_range(shape, channel_axis):
    x = np.ones(shape, np.float32)
    _, mean, rstd = gncpu.group_norm(x, 1, return_stats=True)
    raises_naming(ValueError, f"channel_axis={channel_axis}", func=gncpu.group_norm, x=x,
                  num_groups=1, channel_axis=channel_axis)
    raises_naming(ValueError, f"channel_axis={channel_axis}", func=gncpu.group_norm_backward,
                  grad_out=x, x=x, mean=mean, rstd=rstd, num_groups=1,
                  channel_axis=channel_axis)


@pytest.mark.parametrize("channel_axis", [True, 1.0])
def test_channel_axis_must_be_an_integer(channel_axis):
    raises_naming(TypeError, "channel_axis", func=gncpu.group_norm,
                  x=np.ones((2, 4, 3), np.float32), num_groups=2, channel_axis=channel_axis)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
def test_empty_groups(dtype, channel_axis):
    """No spatial element: nothing to write (half-precision partial vectors once wrote
    before grad_x), statistics NaN, and the parameter gradients empty sums."""
    dtype = dtype_of(dtype)
    shape = (2, 4, 0) if channel_axis == 1 else (2, 0, 4)
    x = np.empty(shape, dtype)
    weight = np.linspace(0.5, 2.0, 4).astype(np.float32)
    y, mean, rstd = gncpu.group_norm(x, 2, weight, weight, channel_axis=channel_axis,
                                     activation="silu", return_stats=True)
    assert y.shape == shape and y.dtype == dtype and np.isnan(mean).all()
    mean, rstd = np.zeros_like(mean), np.ones_like(rstd)
    grad_x, grad_weight, grad_bias = gncpu.group_norm_backward(
        x, x, mean, rstd, 2, weight, bias=weight, channel_axis=channel_axis, activation="silu")
    assert grad_x.shape == shape and grad_x.dtype == dtype
    assert np.array_equal(grad_weight, np.zeros(4)) and np.array_equal(grad_bias, np.zeros(4))


@pytest.mark.parametrize("activation", ["gelu", "ReLU", "", "none", 1])
def test_unknown_activation(rng, activation):
    x = random_array(rng, (2, 4, 5), np.float32)
    _, mean, rstd = gncpu.group_norm(x, 2, return_stats=True)
    token = f"activation={activation!r}"
    raises_naming(ValueError, token, func=gncpu.group_norm, x=x, num_groups=2,
                  activation=activation)
    raises_naming(ValueError, token, func=gncpu.group_norm_backward, grad_out=x, x=x,
                  mean=mean, rstd=rstd, num_groups=2, activation=activation)
    raises_naming(ValueError, token, func=gncpu.GroupNorm, num_groups=2, num_channels=4,
                  activation=activation)


# ---------------------------------------------------------------------------------------
# Derivatives of the composed function: chain rule and finite differences in float64.


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
@pytest.mark.parametrize("case", TINY, ids=TINY_IDS)
def test_composed_gradients_match_finite_differences(rng, case, channel_axis, activation):
    """The reference chain rule and the fast float64 backward both equal central differences
    of the composed reference, and of the fast forward."""
    shape, num_groups = case
    x, grad_out = (arrange(random_array(rng, shape), channel_axis) for _ in range(2))
    weight, bias = random_affine(rng, shape[1])
    options = dict(channel_axis=channel_axis, activation=activation)
    if activation == "relu":
        pre = reference_forward(x, num_groups, weight, bias, channel_axis=channel_axis)[0]
        assert np.min(np.abs(pre)) > 1e-4, "a pre-activation at relu's kink: pick other data"
    numeric = numeric_gradients(
        lambda x_, w_, b_: reference_forward(x_, num_groups, w_, b_, **options)[0],
        grad_out, x, weight, bias)
    numeric_fast = numeric_gradients(
        lambda x_, w_, b_: gncpu.group_norm(x_, num_groups, w_, b_, **options),
        grad_out, x, weight, bias)
    chain = reference_backward(grad_out, x, num_groups, weight, bias, **options)
    _, mean, rstd = gncpu.group_norm(x, num_groups, weight, bias, return_stats=True,
                                     **options)
    fast = gncpu.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight, bias=bias,
                                     **options)
    for label, c, f, n, nf in zip(("grad_x", "grad_weight", "grad_bias"), chain, fast,
                                  numeric, numeric_fast):
        assert_close(c, n, 1e-7, f"reference {label} vs finite differences")
        assert_close(f, n, 1e-6, f"{label} vs finite differences of the reference")
        assert_close(f, nf, 1e-6, f"{label} vs finite differences of gncpu")


@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"], ids=["f32", "f64"])
def test_relu_edge_points(rng, dtype, channel_axis):
    """relu at 0 (a constant group with bias 0), below 0, and at NaN.

    Sample 1, group 1 is constant with biases 0 and -0.5: its outputs are exactly 0, its
    gradient reaching the affine is 0 (relu'(0) = 0, as in torch), so its grad_x is 0.
    Sample 0, group 2 is constant with bias 0.75: outputs exactly 0.75. A NaN in sample 2,
    group 3 makes that group's outputs NaN (relu keeps NaN); everything else matches the
    reference.
    """
    shape, num_groups = (3, 8, 7), 4
    x = random_array(rng, shape, dtype)
    grad_out = random_array(rng, shape, dtype)
    weight, bias = random_affine(rng, 8, dtype)
    bias[2], bias[3], bias[4] = 0.0, -0.5, 0.75
    x[1, 2:4] = 3.25
    x[0, 4:6] = -1.5
    x_clean = x.copy()
    x[2, 6, 3] = np.nan
    x, x_clean, grad_out = (arrange(a, channel_axis) for a in (x, x_clean, grad_out))
    options = dict(channel_axis=channel_axis, activation="relu")
    y, mean, rstd = gncpu.group_norm(x, num_groups, weight, bias, return_stats=True,
                                     **options)
    y_first = y if channel_axis == 1 else np.moveaxis(y, -1, 1)
    assert np.array_equal(y_first[1, 2:4], np.zeros((2, 7))), y_first[1, 2:4]
    assert np.array_equal(y_first[0, 4], np.full(7, 0.75, dtype)), y_first[0, 4]
    assert np.array_equal(y_first[0, 5], np.full(7, max(bias[5], 0), dtype)), y_first[0, 5]
    assert np.isnan(y_first[2, 6:8]).all(), "relu keeps NaN in the NaN's group"
    assert (y_first[~np.isnan(y_first)] >= 0).all(), "relu output below 0"
    keep, _ = group_masks(shape, num_groups, [(2, 3)])
    keep = keep if channel_axis == 1 else np.moveaxis(keep, 1, -1)
    y_ref = reference_forward(x_clean, num_groups, weight, bias, **options)[0]
    assert_close_where(y, y_ref, keep, FWD_TOL[dtype], "y")

    grad_x, grad_weight, grad_bias = gncpu.group_norm_backward(
        grad_out, x, mean, rstd, num_groups, weight, bias=bias, **options)
    grad_first = grad_x if channel_axis == 1 else np.moveaxis(grad_x, -1, 1)
    assert not grad_first[1, 2:4].any(), "relu'(pre <= 0) = 0 over the whole group"
    grads_ref = reference_backward(grad_out, x, num_groups, weight, bias, positive=y > 0,
                                   **options)
    channels = np.ones(8, bool)
    channels[6:8] = False
    assert_close_where(grad_x, grads_ref[0], keep, BWD_TOL[dtype], "grad_x")
    assert_close_where(grad_weight, grads_ref[1], channels, BWD_TOL[dtype], "grad_weight")
    assert_close(grad_bias, grads_ref[2], BWD_TOL[dtype], "grad_bias")  # relu'(NaN) = 0


# ---------------------------------------------------------------------------------------
# Residual: x + residual normalized, the sum written to residual_out.


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[4]],
                         ids=[CASE_IDS[0], CASE_IDS[2], CASE_IDS[3], CASE_IDS[4]])
def test_residual(rng, case, dtype, channel_axis, activation):
    """residual_out holds exactly x + residual in x's dtype; y normalizes that sum (close to
    group_norm of the sum); y is the same with or without residual_out."""
    shape, num_groups = case
    dtype = dtype_of(dtype)
    x, residual = (arrange(random_array(rng, shape, dtype), channel_axis) for _ in range(2))
    weight, bias = random_affine(rng, shape[1], dtype)
    options = dict(channel_axis=channel_axis, activation=activation)
    total = np.full_like(x, np.nan)
    y, mean, rstd = gncpu.group_norm(x, num_groups, weight, bias, residual=residual,
                                     residual_out=total, return_stats=True, **options)
    assert_bitwise(total, x + residual, "residual_out")
    y_ref, mean_ref, rstd_ref = reference_forward(x, num_groups, weight, bias,
                                                  residual=residual, **options)
    assert y.dtype == x.dtype
    assert_close(y, y_ref, FWD_TOL[dtype.name], "y")
    assert_stats_close(mean, rstd, mean_ref, rstd_ref, FORWARD_TOL[stats_dtype(dtype).type])
    y_of_sum = gncpu.group_norm(x + residual, num_groups, weight, bias, **options)
    assert_close(y, y_of_sum, FWD_TOL[dtype.name], "y vs group_norm(x + residual)")
    alone = gncpu.group_norm(x, num_groups, weight, bias, residual=residual, **options)
    assert_bitwise(alone, y, "y without residual_out")


ALIASES = {  # (out, residual_out) as names of the call's arrays
    "out=x": ("x", None),
    "out=residual": ("residual", None),
    "residual_out=x": (None, "x"),
    "residual_out=residual": (None, "residual"),
    "out=x,residual_out=residual": ("x", "residual"),
    "out=residual,residual_out=x": ("residual", "x"),
}


@pytest.mark.parametrize("alias", list(ALIASES))
@pytest.mark.parametrize("layout", ["C", "F", "padded"])
@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", ["float32", "float16"], ids=["f32", "f16"])
def test_residual_outputs_may_alias_inputs(rng, dtype, channel_axis, layout, alias):
    """out and residual_out may each be x or residual itself (element-wise in place): the
    results are those of fresh arrays, and out is returned."""
    shape, num_groups = (2, 6, 67), 3
    arrays = {name: arrange(random_array(rng, shape, dtype), channel_axis, layout)
              for name in ("x", "residual")}
    weight, bias = random_affine(rng, 6, np.float32)
    options = dict(channel_axis=channel_axis, activation="silu")
    expected_sum = np.empty_like(arrays["x"])
    expected = gncpu.group_norm(arrays["x"], num_groups, weight, bias,
                                residual=arrays["residual"], residual_out=expected_sum,
                                **options)
    out_name, sum_name = ALIASES[alias]
    out = arrays[out_name] if out_name else None
    total = arrays[sum_name] if sum_name else np.empty_like(arrays["x"])
    y = gncpu.group_norm(arrays["x"], num_groups, weight, bias, residual=arrays["residual"],
                         residual_out=total, out=out, **options)
    if out is not None:
        assert y is out
    assert_bitwise(np.ascontiguousarray(y), np.ascontiguousarray(expected), "y")
    assert_bitwise(np.ascontiguousarray(total), np.ascontiguousarray(expected_sum), "sum")
    if layout == "padded":  # the gaps between the rows stay NaN
        for name, array in arrays.items():
            assert np.isnan(array.base[..., -3:]).all(), f"{name}'s gaps written"


@pytest.mark.parametrize("target", ["out", "residual_out"])
@pytest.mark.parametrize("param", ["weight", "bias"])
@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
def test_weight_or_bias_inside_an_output(rng, channel_axis, param, target):
    """weight or bias may be a view into out or residual_out, which the kernels write
    while still reading the parameters: the same result as with a copy."""
    shape = (2, 6, 1) if channel_axis == 1 else (2, 4, 6)
    x, residual = random_array(rng, shape, np.float32), random_array(rng, shape, np.float32)
    buffers = {"out": np.zeros(shape, np.float32), "residual_out": np.zeros(shape, np.float32)}
    inside = buffers[target][0, :, 0] if channel_axis == 1 else buffers[target][0, 0]
    inside[...] = random_affine(rng, 6, np.float32)[0]
    params = {"weight": None, "bias": None}
    params[param] = inside
    options = dict(channel_axis=channel_axis, residual=residual)
    expected = gncpu.group_norm(x, 3, **{k: v if v is None else v.copy()
                                         for k, v in params.items()}, **options)
    y = gncpu.group_norm(x, 3, **params, **{target: buffers[target]}, **options)
    assert_bitwise(y, expected, f"y with {param} inside {target}")


def test_residual_may_be_x_itself(rng):
    x = random_array(rng, (2, 6, 33), np.float32)
    total = np.empty_like(x)
    y = gncpu.group_norm(x, 3, residual=x, residual_out=total)
    assert_bitwise(total, x + x, "residual_out")
    assert_bitwise(y, gncpu.group_norm(x, 3, residual=x.copy()), "y")


def test_residual_of_another_dtype_is_rounded_to_x_dtype(rng):
    """Undocumented: a residual of another dtype is converted to x's dtype before the sum."""
    x = random_array(rng, (2, 6, 33), np.float32)
    residual = random_array(rng, x.shape, np.float64)
    total = np.empty_like(x)
    y = gncpu.group_norm(x, 3, residual=residual, residual_out=total)
    rounded = residual.astype(np.float32)
    assert_bitwise(total, x + rounded, "residual_out")
    assert_bitwise(y, gncpu.group_norm(x, 3, residual=rounded), "y")


def residual_errors():
    """(exception, tokens the message names, keyword arguments besides x and num_groups)."""
    x_shape = (2, 5, 7, 6)  # channels-last: C = 6
    wrong = np.ones((2, 6, 5, 7), np.float32)  # the channels-first shape
    return [
        (ValueError, ["residual", "(2, 6, 5, 7)"], dict(residual=wrong)),
        (ValueError, ["residual_out", "(2, 6, 5, 7)"],
         dict(residual=np.ones(x_shape, np.float32), residual_out=wrong)),
        (ValueError, ["residual_out", "float64"],
         dict(residual=np.ones(x_shape, np.float32), residual_out=np.ones(x_shape))),
        (ValueError, ["residual_out", "float16"],
         dict(residual=np.ones(x_shape, np.float32),
              residual_out=np.ones(x_shape, np.float16))),
        (ValueError, ["residual_out", "read-only"],
         dict(residual=np.ones(x_shape, np.float32),
              residual_out=with_layout(np.ones(x_shape, np.float32), "readonly"))),
        (ValueError, ["residual_out", "residual"],
         dict(residual_out=np.ones(x_shape, np.float32))),
        (TypeError, ["residual", "complex128"], dict(residual=np.ones(x_shape, complex))),
    ]


@pytest.mark.parametrize("error", residual_errors(),
                         ids=["residual-shape", "residual_out-shape", "residual_out-f64",
                              "residual_out-f16", "residual_out-readonly",
                              "residual_out-alone", "residual-complex"])
def test_residual_errors(error):
    exc_type, tokens, kwargs = error
    raises_naming(exc_type, *tokens, func=gncpu.group_norm, x=np.ones((2, 5, 7, 6), np.float32),
                  num_groups=2, channel_axis=-1, **kwargs)


@pytest.mark.parametrize("name", ["out", "residual_out"])
def test_output_that_is_not_an_ndarray_is_named(name):
    x = np.ones((2, 4, 3), np.float32)
    raises_naming(TypeError, name, func=gncpu.group_norm, x=x, num_groups=2, residual=x,
                  **{name: x.tolist()})


def test_out_and_residual_out_must_not_overlap(rng):
    x = random_array(rng, (2, 6, 9), np.float32)
    shared = np.empty_like(x)
    raises_naming(ValueError, "out", "residual_out", "overlap", func=gncpu.group_norm, x=x,
                  num_groups=3, residual=x.copy(), out=shared, residual_out=shared)


# ---------------------------------------------------------------------------------------
# float16 and bfloat16.


@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"], ids=["f16", "bf16"])
def test_low_precision_large_offset(rng, dtype, channel_axis):
    """x = 100 + 4 N(0, 1) stored in 16 bits: the normalized output is within 1e-2 (float16)
    or 2^-8 |y| (bfloat16's rounding) plus 2e-3 of the reference on the same values."""
    dtype = dtype_of(dtype)
    x = arrange((100 + 4 * rng.standard_normal((2, 8, 3000))).astype(dtype), channel_axis)
    y, mean, rstd = gncpu.group_norm(x, 4, channel_axis=channel_axis, return_stats=True)
    assert y.dtype == dtype and mean.dtype == rstd.dtype == np.float32
    y_ref = reference_forward(x, 4, channel_axis=channel_axis)[0]
    err = np.abs(np.asarray(y, np.float64) - y_ref)
    if dtype == np.float16:
        assert err.max() < 1e-2, f"max abs error {err.max():.3g}"
    else:
        excess = err - (2.0 ** -8 * np.abs(y_ref) + 2e-3)
        assert excess.max() <= 0, f"error exceeds the bound by {excess.max():.3g}"


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"], ids=["f32", "f16", "bf16"])
def test_large_forward_written_by_streaming_stores(rng, dtype, activation):
    """A channels-first y of 16 MiB or more takes the non-temporal store path, whose
    aligned vectors sit between unaligned head and tail ones in odd-length channels: the
    reference's values, and the same bits in place and for a sample alone."""
    dtype = dtype_of(dtype)
    shape = (2, 8, 521, 1031 if dtype.itemsize == 2 else 515)
    x = random_array(rng, shape, dtype)
    assert x.nbytes >= 1 << 24
    weight, bias = random_affine(rng, shape[1], np.float32)
    options = dict(activation=activation, return_stats=True)
    y, mean, rstd = gncpu.group_norm(x, 4, weight, bias, **options)
    y_ref, mean_ref, rstd_ref = reference_forward(x, 4, weight, bias, activation=activation)
    assert_close(y, y_ref, FWD_TOL[dtype.name], "y")
    assert_stats_close(mean, rstd, mean_ref, rstd_ref, FORWARD_TOL[np.float32])
    alone = gncpu.group_norm(x[1:], 4, weight, bias, **options)
    assert_bitwise(alone[0], y[1:], "y of sample 1 alone")
    gncpu.group_norm(x, 4, weight, bias, out=x, activation=activation)
    assert_bitwise(x, y, "y in place")


def placed(a, offset):
    """A C-contiguous copy of ``a`` starting ``offset`` elements into a fresh buffer."""
    buf = np.empty(a.size + offset, a.dtype)
    view = buf[offset:].reshape(a.shape)
    view[...] = a
    return view


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(2, 9, 11, 64), (1, 5, 7, 16), (3, 4, 96)],
                         ids=["9x11x64", "5x7x16", "4x96"])
def test_channels_last_rows_as_one_run_at_any_alignment(rng, shape, dtype, activation):
    """Channels-last rows with no gap, C a multiple of the vector width, go as one run
    whose vectors follow x's alignment, each row's last one crossing into the next row:
    at any offset of x and of out, in place, and over 2 threads, the same bits; and the
    reference's values."""
    dtype = dtype_of(dtype)
    x0 = random_array(rng, shape, dtype)
    weight, bias = random_affine(rng, shape[-1], dtype)
    options = dict(channel_axis=-1, activation=activation)
    expected = gncpu.group_norm(x0, 4, weight, bias, **options)
    y_ref = reference_forward(x0, 4, weight, bias, **options)[0]
    assert_close(expected, y_ref, FWD_TOL[dtype.name], "y")
    for x_offset in (0, 3, 8, 13):
        x = placed(x0, x_offset)
        for out_offset in (0, 5, 11):
            out = placed(np.zeros_like(x0), out_offset)
            gncpu.group_norm(x, 4, weight, bias, out=out, **options)
            assert_bitwise(out, expected, f"y, x at +{x_offset}, out at +{out_offset}")
        gncpu.group_norm(x, 4, weight, bias, out=x, **options)
        assert_bitwise(x, expected, f"y in place at +{x_offset}")
    for i in range(shape[0]):
        alone = gncpu.group_norm(placed(x0[i:i + 1], 7), 4, weight, bias, num_threads=2,
                                 **options)
        assert_bitwise(alone, expected[i:i + 1], f"sample {i} alone on 2 threads")


@pytest.mark.parametrize("dtype", ["float32", "float16"], ids=["f32", "f16"])
def test_large_channels_last_forward_streamed_whatever_the_alignments(rng, dtype):
    """A channels-last y of 16 MiB or more is streamed at y's alignment, here not x's:
    the reference's values, and the same bits as out at x's alignment."""
    dtype = np.dtype(dtype)
    shape = (2, 130, 130 * (4 // dtype.itemsize), 128)
    x = placed(random_array(rng, shape, dtype), 3)
    assert x.nbytes >= 1 << 24
    weight, bias = random_affine(rng, shape[-1], np.float32)
    y = gncpu.group_norm(x, 8, weight, bias, channel_axis=-1, out=placed(np.empty_like(x), 9))
    assert_close(y, reference_forward(x, 8, weight, bias, channel_axis=-1)[0],
                 FWD_TOL[dtype.name], "y")
    aligned = gncpu.group_norm(x, 8, weight, bias, channel_axis=-1,
                               out=placed(np.empty_like(x), 3))
    assert_bitwise(aligned, y, "y at x's alignment")


def test_large_forward_of_few_groups_streams_by_chunks(rng):
    """One group over 2 threads: the outputs go by chunks of a channel, each streamed
    between unaligned ends; the reference's values, the same bits as on 1 thread."""
    x = random_array(rng, (1, 8, 1031, 521), np.float32)
    assert x.nbytes >= 1 << 24
    weight, bias = random_affine(rng, 8, np.float32)
    y, mean, rstd = gncpu.group_norm(x, 1, weight, bias, return_stats=True, num_threads=2)
    y_ref, mean_ref, rstd_ref = reference_forward(x, 1, weight, bias)
    assert_close(y, y_ref, FWD_TOL["float32"], "y")
    assert_stats_close(mean, rstd, mean_ref, rstd_ref, FORWARD_TOL[np.float32])
    assert_bitwise(gncpu.group_norm(x, 1, weight, bias, num_threads=1), y, "y on 1 thread")


@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"], ids=["f16", "bf16"])
def test_low_precision_parameters_in_float32_or_16_bits(rng, dtype, channel_axis):
    """weight and bias in x's 16-bit dtype or float32 (same values): the same bits."""
    dtype = dtype_of(dtype)
    x = arrange(random_array(rng, (2, 6, 130), dtype), channel_axis)
    grad_out = arrange(random_array(rng, (2, 6, 130), dtype), channel_axis)
    weight, bias = random_affine(rng, 6, dtype)
    options = dict(channel_axis=channel_axis, activation="silu")
    narrow = run_all(x, grad_out, 3, weight, bias, **options)
    wide = run_all(x, grad_out, 3, weight.astype(np.float32), bias.astype(np.float32),
                   **options)
    for name in narrow:
        assert_bitwise(narrow[name], wide[name], name)


# ---------------------------------------------------------------------------------------
# out=


@pytest.mark.parametrize("out_layout", ["C", "F", "strided", "negative", "padded"])
@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_out(rng, dtype, channel_axis, out_layout):
    """out= of any layout gets the bits of the out-of-place result and is returned."""
    dtype = dtype_of(dtype)
    x = arrange(random_array(rng, (3, 6, 5, 7), dtype), channel_axis)
    weight, bias = random_affine(rng, 6, dtype)
    options = dict(channel_axis=channel_axis, activation="silu")
    expected = gncpu.group_norm(x, 3, weight, bias, **options)
    out = with_layout(np.zeros_like(x), out_layout) if out_layout != "padded" else \
        arrange(np.zeros_like(x), 1, "padded")
    y, mean, rstd = gncpu.group_norm(x, 3, weight, bias, out=out, return_stats=True,
                                     **options)
    assert y is out
    assert mean.shape == rstd.shape == (3, 3)
    assert_bitwise(np.ascontiguousarray(out), expected, "out")


@pytest.mark.parametrize("layout", ["C", "F", "padded", "negative", "unaligned"])
@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_out_is_x_in_place(rng, dtype, channel_axis, layout):
    dtype = dtype_of(dtype)
    x = arrange(random_array(rng, (2, 6, 3, 67), dtype), channel_axis, layout)
    weight, bias = random_affine(rng, 6, dtype)
    options = dict(channel_axis=channel_axis, activation="relu")
    expected = gncpu.group_norm(x, 2, weight, bias, return_stats=True, **options)
    result = gncpu.group_norm(x, 2, weight, bias, out=x, return_stats=True, **options)
    assert result[0] is x
    for name, a, b in zip(("y", "mean", "rstd"), result, expected):
        assert_bitwise(np.ascontiguousarray(a), b, f"{name} in place")
    if layout == "padded":
        assert np.isnan(x.base[..., -3:]).all(), "the gaps between the rows were written"


@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
def test_out_is_byteswapped_x(rng, channel_axis):
    x = arrange(random_array(rng, (2, 6, 3, 67), np.float32), channel_axis)
    swapped = x.astype(x.dtype.newbyteorder())
    expected = gncpu.group_norm(x, 2, channel_axis=channel_axis)
    result = gncpu.group_norm(swapped, 2, channel_axis=channel_axis, out=swapped)
    assert result is swapped
    assert_bitwise(result.astype(np.float32), expected, "byte-swapped y in place")


@pytest.mark.parametrize("x_dtype, out_dtype", [("float32", "float16"), ("float16", "float32"),
                                                ("float32", "bfloat16"),
                                                ("bfloat16", "float16"),
                                                ("float64", "float32")])
@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
def test_out_wrong_dtype(x_dtype, out_dtype, channel_axis):
    x = np.ones((2, 4, 3, 5), dtype_of(x_dtype))
    out = np.empty(x.shape, dtype_of(out_dtype))
    raises_naming(ValueError, "out", out_dtype, func=gncpu.group_norm, x=x, num_groups=1,
                  channel_axis=channel_axis, out=out)


@pytest.mark.parametrize("dtype", ["float32", "float16"], ids=["f32", "f16"])
def test_out_wrong_shape_or_read_only(dtype):
    x = np.ones((2, 3, 5, 4), dtype)  # channels-last, C = 4
    for out, token in ((np.empty((2, 4, 3, 5), dtype), "(2, 4, 3, 5)"),
                       (np.empty((2, 3, 5), dtype), "(2, 3, 5)"),
                       (with_layout(np.empty_like(x), "readonly"), "read-only")):
        raises_naming(ValueError, "out", token, func=gncpu.group_norm, x=x, num_groups=2,
                      channel_axis=-1, out=out)


# ---------------------------------------------------------------------------------------
# Invariance of the new paths: batch, thread count, concurrent Python threads.

# (dtype, channel_axis, activation, residual)
PATHS = [("float32", -1, None, False), ("float64", -1, "relu", False),
         ("float16", -1, "silu", True), ("bfloat16", -1, "silu", False),
         ("float32", 1, "relu", True), ("float16", 1, "silu", False),
         ("float64", 1, "silu", False), ("float32", -1, "silu", False)]
PATH_IDS = ["nhwc-f32", "nhwc-f64-relu", "nhwc-f16-silu-res", "nhwc-bf16-silu",
            "nchw-f32-relu-res", "nchw-f16-silu", "nchw-f64-silu", "nhwc-f32-silu"]


def path_inputs(rng, shape, path):
    """(x, grad_out, weight, bias, residual, options) of a path."""
    dtype, channel_axis, activation, with_residual = path
    dtype = dtype_of(dtype)
    x, grad_out, residual = (arrange(random_array(rng, shape, dtype), channel_axis)
                             for _ in range(3))
    weight, bias = random_affine(rng, shape[1], np.float32)
    options = dict(channel_axis=channel_axis, activation=activation)
    return x, grad_out, weight, bias, residual if with_residual else None, options


@pytest.mark.parametrize("num_threads", [1, 4])
@pytest.mark.parametrize("case", [((8, 16, 32, 32), 4), ((3, 32, 48, 48), 8)],
                         ids=["8x16x32x32-G4", "3x32x48x48-G8"])
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_sample_alone_equals_its_slice_of_the_batch(rng, path, case, num_threads):
    """Big enough that 4 threads split a lone sample but not always the batch."""
    shape, num_groups = case
    x, grad_out, weight, bias, residual, options = path_inputs(rng, shape, path)
    batch = run_all(x, grad_out, num_groups, weight, bias, residual,
                    num_threads=num_threads, **options)
    for i in range(shape[0]):
        one = slice(i, i + 1)
        alone = run_all(x[one], grad_out[one], num_groups, weight, bias,
                        None if residual is None else residual[one],
                        num_threads=num_threads, **options)
        for name in ("y", "mean", "rstd", "sum", "grad_x"):
            if name in alone:
                assert_bitwise(alone[name], batch[name][one], f"{name} of sample {i}")


# Channels-last, a lone sample with many 64-row chunks is split into spans of chunks for
# its statistics (at most 64 spans, merged in order) and into row chunks for its outputs;
# with few chunks, into ranges of whole groups, each from statistics to outputs, if that
# makes as many tasks as channel ranges (RANGE_ALIGN) would (else its output rows are cut
# by the channel ranges): 2100 channels of 100 rows (2 chunks), in 7 groups of 300
# (uneven ranges starting off the vector grid; at 8 threads, channel ranges) and in 1
# group (channel ranges); 96 channels of 1600 rows (25 chunks: group ranges from 4
# threads); 160 channels (5 blocks of 32) of 2000 rows (32 chunks): at 4 threads the last
# channel range is empty, at 8 one group per range; 40 channels of 4254 rows (67 chunks,
# the last of 30 rows: 34 spans of 2 chunks, the last of 1).
# Channels-first, 16 channels of 4100 elements in 2 groups are split into chunks of 2048,
# 2048 and 4 (shorter than a vector).
@pytest.mark.parametrize("case", [((1, 32, 96, 96), 8), ((16, 32, 24, 24), 4),
                                  ((1, 2100, 10, 10), 7), ((1, 2100, 10, 10), 1),
                                  ((1, 96, 40, 40), 8), ((1, 160, 2000), 8),
                                  ((1, 40, 4254), 8), ((1, 16, 4100), 2)],
                         ids=["1x32x96x96-G8", "16x32x24x24-G4", "1x2100x10x10-G7",
                              "1x2100x10x10-G1", "1x96x40x40-G8", "1x160x2000-G8",
                              "1x40x4254-G8", "1x16x4100-G2"])
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_thread_count_does_not_change_results(rng, path, case):
    shape, num_groups = case
    x, grad_out, weight, bias, residual, options = path_inputs(rng, shape, path)
    serial = run_all(x, grad_out, num_groups, weight, bias, residual, num_threads=1,
                     **options)
    for threads in (2, 3, 4, 8):
        parallel = run_all(x, grad_out, num_groups, weight, bias, residual,
                           num_threads=threads, **options)
        for name in serial:
            assert_bitwise(parallel[name], serial[name], f"{name} with num_threads={threads}")


# (shape, num_groups, dtype, channel_axis, activation, residual, num_threads): one per thread
THREAD_JOBS = [
    ((2, 12, 33, 35), 3, "float32", -1, "silu", True, None),
    ((3, 8, 2053), 4, "float16", 1, "relu", False, 1),
    ((1, 6, 40, 41), 2, "float64", -1, None, True, 2),
    ((4, 10, 17, 19), 5, "bfloat16", -1, "relu", False, None),
    ((2, 16, 64, 65), 16, "float32", 1, None, False, None),
    ((1, 9, 3000), 1, "float16", -1, "silu", True, 2),
    ((5, 4, 7, 7, 7), 2, "float64", 1, "silu", True, None),
    ((3, 6, 70), 3, "float32", -1, "relu", False, 1),
]


REPEATS = 10


def test_concurrent_python_threads_match_serial_calls(rng):
    """8 Python threads, each its own arrays and options, started together and repeating
    their calls: every result has the bits of the same call made alone."""
    jobs = []
    for shape, num_groups, dtype, channel_axis, activation, residual, threads in THREAD_JOBS:
        x, grad_out, weight, bias, res, options = path_inputs(
            rng, shape, (dtype, channel_axis, activation, residual))
        jobs.append(((x, grad_out, num_groups, weight, bias, res),
                     dict(num_threads=threads, **options)))
    serial = [run_all(*args, **kwargs) for args, kwargs in jobs]
    start = threading.Barrier(len(jobs))

    def work(job):
        args, kwargs = job
        start.wait()
        return [run_all(*args, **kwargs) for _ in range(REPEATS)]

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        concurrent = list(pool.map(work, jobs))
    for k, (alone, repeats) in enumerate(zip(serial, concurrent)):
        for r, results in enumerate(repeats):
            for name in alone:
                assert_bitwise(results[name], alone[name], f"{name} of job {k}, repeat {r}")


# ---------------------------------------------------------------------------------------
# Inputs never modified; the layer.


@pytest.mark.parametrize("layout", ["C", "padded", "negative", "readonly", "byteswapped"])
@pytest.mark.parametrize("channel_axis", AXES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_inputs_are_not_modified(rng, dtype, channel_axis, layout):
    """x, residual, weight, bias, grad_out, mean and rstd keep their bytes (and the buffers
    under them), with a residual, an activation and the backward through it."""
    dtype = dtype_of(dtype)
    if layout == "byteswapped" and dtype.name == "bfloat16":
        pytest.skip("a byte-swapped bfloat16 is no longer a bfloat16 dtype")
    shape, num_groups = (3, 6, 5, 7), 3
    weight, bias = random_affine(rng, 6, dtype)
    inputs = {name: arrange(random_array(rng, shape, dtype), channel_axis, layout)
              for name in ("x", "residual", "grad_out")}
    vector_layout = "strided" if layout == "padded" else layout
    inputs.update(weight=with_layout(weight, vector_layout),
                  bias=with_layout(bias, vector_layout))
    copies = snapshot(inputs)
    options = dict(channel_axis=channel_axis, activation="silu")
    _, mean, rstd = gncpu.group_norm(inputs["x"], num_groups, inputs["weight"], inputs["bias"],
                                     residual=inputs["residual"], return_stats=True, **options)
    assert_unchanged(inputs, copies)
    stats = {"mean": arrange(mean, 1, layout), "rstd": arrange(rstd, 1, layout)}
    stats_copies = snapshot(stats)
    gncpu.group_norm_backward(inputs["grad_out"], inputs["x"], stats["mean"], stats["rstd"],
                              num_groups, inputs["weight"], bias=inputs["bias"], **options)
    assert_unchanged(inputs, copies)
    assert_unchanged(stats, stats_copies)


@pytest.mark.parametrize("channel_axis", [0, 2, 5, -2, True, 1.0, "x", None])
def test_layer_rejects_channel_axis(channel_axis):
    """Out of range: ValueError; not an integer: TypeError, as the functions raise."""
    error = ValueError if type(channel_axis) is int else TypeError
    raises_naming(error, f"channel_axis={channel_axis!r}", func=gncpu.GroupNorm,
                  num_groups=2, num_channels=4, channel_axis=channel_axis)


@pytest.mark.parametrize("x_dtype, param_dtype", [("float32", "float32"),
                                                  ("float64", "float64"),
                                                  ("float16", "float32")],
                         ids=["f32", "f64", "f16-params-f32"])
def test_layer_channels_last_silu_equals_functions(rng, x_dtype, param_dtype):
    layer = gncpu.GroupNorm(3, 9, eps=1e-4, dtype=param_dtype, channel_axis=-1,
                            activation="silu")
    layer.weight[...], layer.bias[...] = random_affine(rng, 9, param_dtype)
    x = arrange(random_array(rng, (2, 9, 5, 7), x_dtype), -1)
    grad_out = arrange(random_array(rng, (2, 9, 5, 7), x_dtype), -1)
    y = layer(x)
    grad_x = layer.backward(grad_out)
    options = dict(channel_axis=-1, activation="silu")
    y_fn, mean, rstd = gncpu.group_norm(x, 3, layer.weight, layer.bias, 1e-4,
                                        return_stats=True, **options)
    grads = gncpu.group_norm_backward(grad_out, x, mean, rstd, 3, layer.weight,
                                      bias=layer.bias, **options)
    assert_bitwise(y, y_fn, "y")
    assert_bitwise(grad_x, grads[0], "grad_x")
    assert_bitwise(layer.grad_weight, grads[1].astype(param_dtype), "grad_weight")
    assert_bitwise(layer.grad_bias, grads[2].astype(param_dtype), "grad_bias")
    assert_close(y, reference_forward(x, 3, layer.weight, layer.bias, 1e-4, **options)[0],
                 FWD_TOL[x_dtype], "y vs reference")
