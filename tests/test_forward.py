"""gncpu.group_norm equals the float64 reference: every case, dtype, layout and edge case."""
import numpy as np
import pytest

import gncpu
from gncpu import _reference as ref
from conftest import (CASE_IDS, CASES, FLOATS, FORWARD_TOL, LAYOUTS, assert_bitwise,
                      assert_close, assert_close_where, assert_stats_close, check_forward,
                      compiled_kernel_modules, fast_forward, group_masks,
                      import_kernel_module, random_affine, random_array, random_case,
                      result_dtypes, with_layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference(rng, case, dtype, affine, layout):
    shape, num_groups = case
    x = with_layout(random_array(rng, shape, dtype), layout)
    weight, bias = random_affine(rng, shape[1], dtype) if affine else (None, None)
    check_forward(x, num_groups, weight, bias)


@pytest.mark.parametrize("seed", range(40))
def test_random_sweep(rng, seed):
    """Random combinations: shape, G, dtype, a layout per argument, weight and bias each
    present or not and of either float dtype, eps, num_groups or group_size, return_stats."""
    shape, num_groups = random_case(rng)
    channels = shape[1]
    dtype = rng.choice(FLOATS)
    x = with_layout(random_array(rng, shape, dtype), rng.choice(LAYOUTS))
    weight, bias = random_affine(rng, channels, rng.choice(FLOATS))
    weight = with_layout(weight, rng.choice(LAYOUTS)) if rng.random() < 0.7 else None
    bias = with_layout(bias, rng.choice(LAYOUTS)) if rng.random() < 0.7 else None
    group_elements = channels // num_groups * int(np.prod(shape[2:], dtype=np.int64))
    eps = float(rng.choice([1e-5, 1e-3, 0.5] + ([0.0] if group_elements > 1 else [])))
    by_group_size = bool(rng.random() < 0.5)
    check_forward(x, num_groups, weight, bias, eps, by_group_size=by_group_size)
    y = (gncpu.group_norm(x, num_groups, weight, bias, eps) if not by_group_size else
         gncpu.group_norm(x, weight=weight, bias=bias, eps=eps,
                          group_size=channels // num_groups))
    y_ref = ref.group_norm(np.asarray(x), num_groups, weight, bias, eps)[0]
    assert isinstance(y, np.ndarray), "return_stats=False returns the array alone"
    assert_close(y, y_ref, FORWARD_TOL[result_dtypes(x.dtype)[0]], "y")


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", [CASES[4], CASES[6], CASES[10]],
                         ids=[CASE_IDS[4], CASE_IDS[6], CASE_IDS[10]])
def test_group_size_equals_num_groups(rng, case, dtype):
    shape, num_groups = case
    x = random_array(rng, shape, dtype)
    weight, bias = random_affine(rng, shape[1], dtype)
    by_count = fast_forward(x, num_groups, weight, bias)
    by_size = fast_forward(x, num_groups, weight, bias, by_group_size=True)
    for name, a, b in zip(("y", "mean", "rstd"), by_size, by_count):
        assert_bitwise(a, b, name)


@pytest.mark.parametrize("layout", ["C", "strided", "byteswapped"])
@pytest.mark.parametrize("case", [CASES[4], CASES[10]], ids=[CASE_IDS[4], CASE_IDS[10]])
def test_float16(rng, case, layout):
    """float16 in: float16 out, float32 stats computed in float32."""
    shape, num_groups = case
    x = with_layout(random_array(rng, shape, np.float16), layout)
    weight, bias = random_affine(rng, shape[1], np.float16)
    check_forward(x, num_groups, weight, bias)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, np.bool_])
def test_integer_and_bool_become_float64(rng, dtype):
    x = random_array(rng, (3, 6, 17), dtype)
    weight, bias = random_affine(rng, 6)
    y, mean, rstd = check_forward(x, 3, weight, bias)
    assert y.dtype == mean.dtype == rstd.dtype == np.float64


def test_array_likes(rng):
    x = random_array(rng, (2, 4, 3), np.float64)
    weight, bias = random_affine(rng, 4)
    y, _, _ = check_forward(x.tolist(), 2, weight.tolist(), bias.tolist())
    assert y.dtype == np.float64
    assert_bitwise(y, gncpu.group_norm(x, 2, weight, bias), "y from lists")


@pytest.mark.parametrize("x_dtype, affine_dtype", [(np.float32, np.float64),
                                                   (np.float32, np.float16),
                                                   (np.float64, np.float32),
                                                   (np.float64, np.float16),
                                                   (np.float16, np.float16),
                                                   (np.float16, np.float64)])
@pytest.mark.parametrize("channels", [6, 18])  # 18: whole vectors and a tail
def test_weight_and_bias_of_another_float_dtype(rng, x_dtype, affine_dtype, channels):
    x = random_array(rng, (2, channels, 33), x_dtype)
    weight, bias = random_affine(rng, 2 * channels, affine_dtype)
    y, _, _ = check_forward(x, 3, weight[::2], bias[channels:])  # strided and contiguous
    assert y.dtype == x_dtype


def test_broadcast_input(rng):
    """Zero strides: one sample broadcast over the batch, one channel over the channels."""
    sample = random_array(rng, (1, 6, 33), np.float32)
    check_forward(np.broadcast_to(sample, (4, 6, 33)), 3)
    row = random_array(rng, (3, 1, 17), np.float64)
    check_forward(np.broadcast_to(row, (3, 4, 17)), 2)


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("shape, strides, odd_axis, channel_axis, groups", [
    ((1, 2, 1, 5), (10, 5, 5, 1), 0, 1, 2),  # N = 1
    ((2, 1, 5), (5, 5, 1), 1, 1, 1),  # C = 1
    ((1, 5, 2), (10, 2, 1), 0, -1, 2),  # channels-last, N = 1
], ids=["N1", "C1", "nhwc-N1"])
def test_length_one_axes_with_any_stride(rng, shape, strides, odd_axis, channel_axis, groups,
                                         dtype):
    """NumPy calls an array contiguous and aligned whatever the strides of its axes of
    length 1, even strides that are no multiple of the item size (a structured array's
    field, np.lib.stride_tricks.as_strided): forward and backward read it as its copy.
    Here the axis odd_axis, of length 1, is 3 bytes long."""
    item = np.dtype(dtype).itemsize
    byte_strides = [k * item for k in strides]
    byte_strides[odd_axis] = 3
    x = np.lib.stride_tricks.as_strided(random_array(rng, (64,), dtype), shape, byte_strides)
    assert x.flags.c_contiguous and x.flags.aligned
    options = dict(channel_axis=channel_axis)
    expected, mean, rstd = gncpu.group_norm(x.copy(), groups, return_stats=True, **options)
    assert_bitwise(gncpu.group_norm(x, groups, **options), expected, "y")
    grads = gncpu.group_norm_backward(x, x, mean, rstd, groups, **options)
    copies = gncpu.group_norm_backward(x.copy(), x.copy(), mean, rstd, groups, **options)
    for name, a, b in zip(("grad_x", "grad_weight", "grad_bias"), grads, copies):
        assert_bitwise(a, b, name)


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(0, 6, 5), (0, 4), (0, 4, 3, 3)])
def test_empty_batch(shape, dtype):
    x = np.empty(shape, dtype)
    y, mean, rstd = gncpu.group_norm(x, 2, return_stats=True)
    assert y.shape == shape and y.dtype == dtype
    assert mean.shape == rstd.shape == (0, 2)
    assert mean.dtype == rstd.dtype == dtype


def check_forward_outside(x, num_groups, weight, bias, pairs, x_clean=None):
    """Fast forward on x; outside the (sample, group) pairs listed, every output is finite and
    matches the reference on x_clean (default x). Returns the fast (y, mean, rstd)."""
    fast = fast_forward(x, num_groups, weight, bias)
    slow = ref.group_norm(x if x_clean is None else x_clean, num_groups, weight, bias)
    keep_y, keep_stats = group_masks(x.shape, num_groups, pairs)
    out_type, stats_type = result_dtypes(x.dtype)
    assert_close_where(fast[0], slow[0], keep_y, FORWARD_TOL[out_type], "y")
    assert_stats_close(fast[1], fast[2], slow[1], slow[2], FORWARD_TOL[stats_type], keep_stats)
    return fast


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("spatial", [(7,), (3, 65), (2053,), (5000,)])
def test_constant_group_returns_bias_exactly(rng, spatial, dtype, affine):
    """A group with variance 0 gives exactly beta (0 without bias) for all its elements.

    (The reference itself is off by rounding there, ~1e-12 in float64, so the constant groups
    are compared with beta only and the other groups with the reference.)
    """
    channels, num_groups = 6, 3
    x = random_array(rng, (3, channels) + spatial, dtype)
    x[1, 2:4] = dtype(rng.uniform(-100, 100))  # sample 1, group 1
    x[2, 0:2] = dtype(0.1)  # sample 2, group 0: 0.1 is not exact in binary
    weight, bias = random_affine(rng, channels, dtype) if affine else (None, None)
    y, _, _ = check_forward_outside(x, num_groups, weight, bias, [(1, 1), (2, 0)])
    beta = np.zeros(channels, dtype) if bias is None else bias
    expand = (slice(None),) + (None,) * len(spatial)
    for n, channels_of_group in ((1, slice(2, 4)), (2, slice(0, 2))):
        got = y[n, channels_of_group]
        want = np.broadcast_to(beta[channels_of_group][expand], got.shape)
        assert np.array_equal(got, want), (  # exact; -0.0 counts as 0
            f"constant group of sample {n}: max |y - beta| = {np.max(np.abs(got - want)):.3g}")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("spatial", [(7,), (2053,), (45, 47)])
def test_nonfinite_is_confined_to_its_group(rng, spatial, dtype, bad):
    """NaN/Inf in one (sample, group): that group's outputs are non-finite, every other
    group is finite and equals the reference computed without the bad value."""
    shape, num_groups = (3, 8) + spatial, 4
    x_clean = random_array(rng, shape, dtype)
    weight, bias = random_affine(rng, 8, dtype)
    x = x_clean.copy()
    x[(1, 5) + tuple(int(rng.integers(s)) for s in spatial)] = bad  # sample 1, group 2
    y, mean, rstd = check_forward_outside(x, num_groups, weight, bias, [(1, 2)], x_clean)
    assert not np.isfinite(y[1, 4:6]).any(), "every output of the bad group is non-finite"
    assert not (np.isfinite(mean[1, 2]) and np.isfinite(rstd[1, 2]))


def test_stability_float32_large_offset(rng):
    """x = 1e4 + N(0, 1) in float32: y within 1e-2 of the reference (on the same values)."""
    x = (1e4 + rng.standard_normal((2, 8, 3000))).astype(np.float32)
    weight, bias = random_affine(rng, 8, np.float32)
    y = gncpu.group_norm(x, 2, weight, bias)
    y_ref = ref.group_norm(x, 2, weight, bias)[0]
    assert np.max(np.abs(y - y_ref)) < 1e-2


def test_stability_float64_large_offset(rng):
    """x = 1e9 + N(0, 1) in float64: y within 1e-6 of the reference."""
    x = 1e9 + rng.standard_normal((2, 8, 3000))
    weight, bias = random_affine(rng, 8)
    y = gncpu.group_norm(x, 4, weight, bias)
    y_ref = ref.group_norm(x, 4, weight, bias)[0]
    assert np.max(np.abs(y - y_ref)) < 1e-6


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.5, 10.0])
def test_eps(rng, eps, dtype):
    x = random_array(rng, (2, 6, 17), dtype) * dtype(0.1)  # variance comparable to eps
    check_forward(x, 3, eps=eps)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_eps_zero_with_a_spread_below_float32_squares(rng, channel_axis):
    """With eps=0, a group whose deviations square to float32 underflow: its rounded M2
    must not go below 0, so rstd is inf or huge, never NaN (neither are the outputs)."""
    x = (rng.standard_normal((1, 2, 64)) * 1e-25).astype(np.float32)
    if channel_axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y, mean, rstd = gncpu.group_norm(x, 1, eps=0.0, return_stats=True,
                                     channel_axis=channel_axis)
    assert not np.isnan(rstd).any() and (rstd > 1e6).all(), rstd
    assert not np.isnan(y).any()


@pytest.mark.parametrize("out_layout", ["C", "F", "strided", "negative",
                                        "channels_last"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
def test_out(rng, dtype, out_layout):
    """out= of any layout gets the out-of-place result and is returned."""
    x = random_array(rng, (3, 6, 5, 7), dtype)
    weight, bias = random_affine(rng, 6, dtype)
    expected = gncpu.group_norm(x, 3, weight, bias)
    out = with_layout(np.zeros_like(x), out_layout)
    result = gncpu.group_norm(x, 3, weight, bias, out=out)
    assert result is out
    assert_bitwise(np.ascontiguousarray(out), expected, "out")
    out2 = with_layout(np.zeros_like(x), out_layout)
    y, mean, rstd = gncpu.group_norm(x, 3, weight, bias, out=out2, return_stats=True)
    assert y is out2
    assert mean.shape == rstd.shape == (3, 3)


@pytest.mark.parametrize("layout", ["C", "F", "strided", "negative", "permuted",
                                    "channels_last"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", [CASES[6], CASES[10]], ids=[CASE_IDS[6], CASE_IDS[10]])
def test_out_is_x_in_place(rng, case, dtype, layout):
    """out=x overwrites x with exactly the out-of-place result; a strided x's gaps stay."""
    shape, num_groups = case
    x = with_layout(random_array(rng, shape, dtype), layout)
    weight, bias = random_affine(rng, shape[1], dtype)
    expected, mean, rstd = fast_forward(x, num_groups, weight, bias)
    base_before = None if x.base is None else x.base.copy()
    result, mean_in_place, rstd_in_place = fast_forward(x, num_groups, weight, bias, out=x)
    assert result is x
    assert_bitwise(np.ascontiguousarray(x), expected, "y in place")
    assert_bitwise(mean_in_place, mean, "mean in place")
    assert_bitwise(rstd_in_place, rstd, "rstd in place")
    if layout == "strided":  # the gaps between the view's elements are untouched
        gaps = np.ones(x.base.shape, bool)
        gaps[::1, ::2, ..., ::3] = False
        assert np.isnan(x.base[gaps]).all() and np.isnan(base_before[gaps]).all()


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["C", "channels_last"])
def test_large_forward_asks_for_the_next_pair(rng, dtype, num_threads, layout):
    """From 16 MiB of x, the output pass over a pair prefetches the next pair's lines, the
    next sample's after a sample's last group (one task per pair at these thread counts);
    channels-last, the moments' pass over a row chunk the next chunk's: no value changes,
    against the reference and bit for bit against each sample alone."""
    shape, num_groups = ((3, 8, 521, 519), 4) if layout == "C" else ((2, 128, 130, 130), 8)
    x = with_layout(random_array(rng, shape, dtype), layout)
    assert x.nbytes >= 1 << 24
    weight, bias = random_affine(rng, shape[1], dtype)
    y = check_forward(x, num_groups, weight, bias, num_threads=num_threads)[0]
    for i in range(shape[0]):
        alone = fast_forward(x[i:i + 1], num_groups, weight, bias, num_threads=num_threads)
        assert_bitwise(alone[0], y[i:i + 1], f"sample {i}")


@pytest.mark.parametrize("module_name", compiled_kernel_modules())
@pytest.mark.parametrize("case", [CASES[1], CASES[8], CASES[10]],
                         ids=[CASE_IDS[1], CASE_IDS[8], CASE_IDS[10]])
def test_every_compiled_variant_matches_reference(rng, module_name, case):
    """The kernel variant picked at import is not the only one shipped: test them all."""
    module = import_kernel_module(module_name)
    shape, num_groups = case
    for dtype in FLOATS:
        x = with_layout(random_array(rng, shape, dtype), "strided")
        weight, bias = random_affine(rng, shape[1], dtype)
        check_forward(x, num_groups, weight, bias, func=module.group_norm)
