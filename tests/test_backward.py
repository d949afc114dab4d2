"""gncpu.group_norm_backward equals the float64 reference, and both equal finite differences."""
import numpy as np
import pytest

import gncpu
from gncpu import _reference as ref
from conftest import (BACKWARD_TOL, CASE_IDS, CASES, FLOATS, LAYOUTS, assert_bitwise,
                      assert_close, assert_close_where, check_backward, compiled_kernel_modules,
                      fast_forward, group_masks, import_kernel_module, random_affine,
                      random_array, random_case, with_layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference(rng, case, dtype, affine, layout):
    """x and grad_out in the layout; without weight the gradients are those of weight=1."""
    shape, num_groups = case
    x = with_layout(random_array(rng, shape, dtype), layout)
    grad_out = with_layout(random_array(rng, shape, dtype), layout)
    weight = random_affine(rng, shape[1], dtype)[0] if affine else None
    check_backward(grad_out, x, num_groups, weight)


@pytest.mark.parametrize("seed", range(40))
def test_random_sweep(rng, seed):
    """Random shape, G, dtype, a layout per argument (the stats too), weight or none,
    num_groups or group_size."""
    shape, num_groups = random_case(rng)
    channels = shape[1]
    dtype = rng.choice(FLOATS)
    x = with_layout(random_array(rng, shape, dtype), rng.choice(LAYOUTS))
    grad_out = with_layout(random_array(rng, shape, dtype), rng.choice(LAYOUTS))
    weight = None
    if rng.random() < 0.7:
        weight = with_layout(random_affine(rng, channels, rng.choice(FLOATS))[0],
                             rng.choice(LAYOUTS))
    check_backward(grad_out, x, num_groups, weight, stats_layout=rng.choice(LAYOUTS),
                   by_group_size=bool(rng.random() < 0.5))


@pytest.mark.parametrize("stats_layout", ["F", "strided", "negative", "readonly",
                                          "byteswapped"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
def test_stats_in_any_layout(rng, dtype, stats_layout):
    shape, num_groups = CASES[6]
    x = random_array(rng, shape, dtype)
    grad_out = random_array(rng, shape, dtype)
    weight = random_affine(rng, shape[1], dtype)[0]
    check_backward(grad_out, x, num_groups, weight, stats_layout=stats_layout)


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", [CASES[4], CASES[6], CASES[10]],
                         ids=[CASE_IDS[4], CASE_IDS[6], CASE_IDS[10]])
def test_group_size_equals_num_groups(rng, case, dtype):
    shape, num_groups = case
    x, grad_out = random_array(rng, shape, dtype), random_array(rng, shape, dtype)
    weight = random_affine(rng, shape[1], dtype)[0]
    _, mean, rstd = fast_forward(x, num_groups, weight)
    by_count = gncpu.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight)
    by_size = gncpu.group_norm_backward(grad_out, x, mean, rstd, weight=weight,
                                        group_size=shape[1] // num_groups)
    for name, a, b in zip(("grad_x", "grad_weight", "grad_bias"), by_size, by_count):
        assert_bitwise(a, b, name)


# ---------------------------------------------------------------------------------------
# Finite differences: the gradients are those of loss = sum(grad_out * y).

TINY = [((2, 4, 3), 2), ((1, 6), 2), ((2, 3, 2, 2), 1), ((3, 2, 5), 2)]
TINY_IDS = ["x".join(map(str, s)) + f"-G{g}" for s, g in TINY]


def numeric_gradients(forward, grad_out, x, weight, bias, step=1e-6):
    """Central differences of sum(grad_out * forward(x, weight, bias)) in float64,
    with respect to x, weight and bias."""
    def loss(x_, w_, b_):
        return float(np.sum(grad_out * forward(x_, w_, b_)))

    params = [np.array(x, np.float64), np.array(weight, np.float64), np.array(bias, np.float64)]
    grads = []
    for i, param in enumerate(params):
        grad = np.empty_like(param)
        for index in np.ndindex(param.shape):
            saved = param[index]
            param[index] = saved + step
            up = loss(*params)
            param[index] = saved - step
            down = loss(*params)
            param[index] = saved
            grad[index] = (up - down) / (2 * step)
        grads.append(grad)
    return grads


def reference_forward(num_groups):
    return lambda x, w, b: ref.group_norm(x, num_groups, w, b)[0]


def fast_forward64(num_groups):
    return lambda x, w, b: gncpu.group_norm(x, num_groups, w, b)


@pytest.mark.parametrize("case", TINY, ids=TINY_IDS)
def test_reference_backward_matches_finite_differences(rng, case):
    """The trusted twin is itself checked: its backward is the derivative of its forward."""
    shape, num_groups = case
    x, grad_out = random_array(rng, shape), random_array(rng, shape)
    weight, bias = random_affine(rng, shape[1])
    numeric = numeric_gradients(reference_forward(num_groups), grad_out, x, weight, bias)
    _, mean, rstd = ref.group_norm(x, num_groups)
    analytic = ref.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight)
    for name, a, n in zip(("grad_x", "grad_weight", "grad_bias"), analytic, numeric):
        assert_close(a, n, 1e-7, name)


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", TINY, ids=TINY_IDS)
def test_fast_backward_matches_finite_differences_of_reference(rng, case, dtype, affine):
    shape, num_groups = case
    x = random_array(rng, shape, dtype)
    grad_out = random_array(rng, shape, dtype)
    weight, bias = random_affine(rng, shape[1], dtype)
    numeric = numeric_gradients(reference_forward(num_groups), grad_out, x,
                                weight if affine else np.ones(shape[1]), bias)
    _, mean, rstd = fast_forward(x, num_groups)
    fast = gncpu.group_norm_backward(grad_out, x, mean, rstd, num_groups,
                                     weight if affine else None)
    tol = max(BACKWARD_TOL[dtype], 1e-7)  # 1e-7: the finite differences' own error
    for name, a, n in zip(("grad_x", "grad_weight", "grad_bias"), fast, numeric):
        assert_close(a, n, tol, name)


@pytest.mark.parametrize("case", TINY, ids=TINY_IDS)
def test_fast_float64_backward_matches_finite_differences_of_fast_forward(rng, case):
    """The fast pair is self-consistent: its backward is the derivative of its forward."""
    shape, num_groups = case
    x, grad_out = random_array(rng, shape), random_array(rng, shape)
    weight, bias = random_affine(rng, shape[1])
    numeric = numeric_gradients(fast_forward64(num_groups), grad_out, x, weight, bias)
    _, mean, rstd = fast_forward(x, num_groups, weight, bias)
    fast = gncpu.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight)
    for name, a, n in zip(("grad_x", "grad_weight", "grad_bias"), fast, numeric):
        assert_close(a, n, 1e-6, name)


# ---------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_empty_batch(dtype, affine):
    x = np.empty((0, 6, 5), dtype)
    mean = rstd = np.empty((0, 3), dtype)
    weight = np.linspace(0.5, 1.5, 6).astype(dtype) if affine else None
    grad_x, grad_weight, grad_bias = gncpu.group_norm_backward(x.copy(), x, mean, rstd, 3,
                                                               weight)
    assert grad_x.shape == (0, 6, 5) and grad_x.dtype == dtype
    assert grad_weight.shape == grad_bias.shape == (6,)
    assert not grad_weight.any() and not grad_bias.any(), "an empty sum is 0"


@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.uint8, np.bool_])
def test_integer_and_bool_become_float64(rng, dtype):
    x = random_array(rng, (3, 6, 17), dtype)
    grad_out = random_array(rng, (3, 6, 17), dtype)
    grad_x, _, _ = check_backward(grad_out, x, 3, random_affine(rng, 6)[0])
    assert grad_x.dtype == np.float64


def test_array_likes(rng):
    x, grad_out = random_array(rng, (2, 4, 3)), random_array(rng, (2, 4, 3))
    weight = random_affine(rng, 4)[0]
    _, mean, rstd = fast_forward(x, 2, weight)
    from_lists = gncpu.group_norm_backward(grad_out.tolist(), x.tolist(), mean.tolist(),
                                           rstd.tolist(), 2, weight.tolist())
    from_arrays = gncpu.group_norm_backward(grad_out, x, mean, rstd, 2, weight)
    for name, a, b in zip(("grad_x", "grad_weight", "grad_bias"), from_lists, from_arrays):
        assert_bitwise(a, b, name)


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("spatial", [(7,), (2053,)])
def test_constant_group(rng, spatial, dtype):
    """Variance 0: xhat = 0 and grad_x = rstd * (dxhat - mean(dxhat)) in that group.

    The reference gets the fast statistics: its own mean of a constant group is off by
    rounding, which puts ~1e-12 of noise into its xhat and so into grad_weight.
    """
    shape, num_groups = (3, 6) + spatial, 3
    x = random_array(rng, shape, dtype)
    x[1, 2:4] = dtype(rng.uniform(-100, 100))
    grad_out = random_array(rng, shape, dtype)
    weight = random_affine(rng, 6, dtype)[0]
    _, mean, rstd = fast_forward(x, num_groups, weight)
    fast = gncpu.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight)
    slow = ref.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight)
    for name, a, b in zip(("grad_x", "grad_weight", "grad_bias"), fast, slow):
        assert_close(a, b, BACKWARD_TOL[dtype], name)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("spatial", [(7,), (2053,)])
def test_nonfinite_is_confined_to_its_group(rng, spatial, dtype, bad):
    """NaN/Inf in x of one (sample, group): grad_x of every other pair, grad_weight of the
    other groups' channels and all of grad_bias stay finite and match the clean reference."""
    shape, num_groups = (3, 8) + spatial, 4
    x_clean = random_array(rng, shape, dtype)
    grad_out = random_array(rng, shape, dtype)
    weight = random_affine(rng, 8, dtype)[0]
    x = x_clean.copy()
    x[(1, 5) + tuple(int(rng.integers(s)) for s in spatial)] = bad  # sample 1, group 2
    _, mean, rstd = fast_forward(x, num_groups, weight)
    grad_x, grad_weight, grad_bias = gncpu.group_norm_backward(grad_out, x, mean, rstd,
                                                               num_groups, weight)
    _, mean_ref, rstd_ref = ref.group_norm(x_clean, num_groups)
    slow = ref.group_norm_backward(grad_out, x_clean, mean_ref, rstd_ref, num_groups, weight)
    keep_x, _ = group_masks(shape, num_groups, [(1, 2)])
    keep_channels = np.ones(8, bool)
    keep_channels[4:6] = False
    tol = BACKWARD_TOL[dtype]
    assert not np.isfinite(grad_x[1, 4:6]).any()
    assert_close_where(grad_x, slow[0], keep_x, tol, "grad_x")
    assert_close_where(grad_weight, slow[1], keep_channels, tol, "grad_weight")
    assert_close_where(grad_bias, slow[2], np.ones(8, bool), tol, "grad_bias")


@pytest.mark.parametrize("dtype, offset", [(np.float32, 1e4), (np.float64, 1e9)],
                         ids=["f32+1e4", "f64+1e9"])
def test_stability_large_offset(rng, dtype, offset):
    """x = offset + N(0, 1): the backward's own arithmetic stays stable.

    The reference gets the same (fast) mean and rstd: at 1e4 a float32 mean is itself only
    good to ~5e-4, an error of the input that is not the backward kernel's to fix.
    """
    x = (offset + rng.standard_normal((2, 8, 3000))).astype(dtype)
    grad_out = random_array(rng, x.shape, dtype)
    weight = random_affine(rng, 8, dtype)[0]
    _, mean, rstd = fast_forward(x, 4, weight)
    fast = gncpu.group_norm_backward(grad_out, x, mean, rstd, 4, weight)
    slow = ref.group_norm_backward(grad_out, x, mean, rstd, 4, weight)
    for name, a, b in zip(("grad_x", "grad_weight", "grad_bias"), fast, slow):
        assert_close(a, b, BACKWARD_TOL[dtype], name)


@pytest.mark.parametrize("module_name", compiled_kernel_modules())
@pytest.mark.parametrize("case", [CASES[1], CASES[8], CASES[10]],
                         ids=[CASE_IDS[1], CASE_IDS[8], CASE_IDS[10]])
def test_every_compiled_variant_matches_reference(rng, module_name, case):
    module = import_kernel_module(module_name)
    shape, num_groups = case
    for dtype in FLOATS:
        x = with_layout(random_array(rng, shape, dtype), "strided")
        grad_out = random_array(rng, shape, dtype)
        weight = random_affine(rng, shape[1], dtype)[0]
        check_backward(grad_out, x, num_groups, weight, func=module.group_norm_backward,
                       forward=module.group_norm)


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
def test_large_grad_x_written_by_streaming_stores(rng, dtype):
    """A grad_x of 16 MiB or more takes the non-temporal store path; odd channel lengths
    put its aligned span between unaligned head and tail vectors."""
    shape = (2, 8, 519, 521)
    x, grad_out = random_array(rng, shape, dtype), random_array(rng, shape, dtype)
    assert x.nbytes >= 1 << 24
    check_backward(grad_out, x, 2, random_affine(rng, shape[1], dtype)[0])
