"""gncpu.GroupNorm: parameters, forward and backward against the reference and the functions."""
import numpy as np
import pytest

import gncpu
from gncpu import _reference as ref
from conftest import (BACKWARD_TOL, FLOATS, FORWARD_TOL, assert_bitwise, assert_close,
                      random_affine, random_array)


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
def test_parameters(dtype):
    layer = gncpu.GroupNorm(4, 12, dtype=dtype)
    assert layer.weight.shape == layer.bias.shape == (12,)
    assert layer.weight.dtype == layer.bias.dtype == dtype
    assert (layer.weight == 1).all() and (layer.bias == 0).all()


def test_default_dtype_is_float32():
    layer = gncpu.GroupNorm(2, 6)
    assert layer.weight.dtype == layer.bias.dtype == np.float32


def test_no_affine():
    layer = gncpu.GroupNorm(2, 6, affine=False)
    assert layer.weight is None and layer.bias is None
    layer(np.ones((1, 6, 3), np.float32))
    layer.backward(np.ones((1, 6, 3), np.float32))
    assert layer.grad_weight is None and layer.grad_bias is None


def test_channels_not_divisible():
    with pytest.raises(ValueError, match="num_groups=32"):
        gncpu.GroupNorm(32, 100)(np.ones((1, 100, 3), np.float32))


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("shape, num_groups", [((3, 12, 7, 5), 4), ((2, 6, 2053), 3),
                                               ((4, 9), 3)])
def test_forward_and_backward_match_reference(rng, shape, num_groups, dtype, affine):
    eps = 1e-3
    layer = gncpu.GroupNorm(num_groups, shape[1], eps=eps, affine=affine, dtype=dtype)
    weight = bias = None
    if affine:
        weight, bias = random_affine(rng, shape[1], dtype)
        layer.weight[...] = weight
        layer.bias[...] = bias
    x, grad_out = random_array(rng, shape, dtype), random_array(rng, shape, dtype)
    y = layer(x)
    y_ref, mean_ref, rstd_ref = ref.group_norm(x, num_groups, weight, bias, eps)
    assert y.dtype == dtype
    assert_close(y, y_ref, FORWARD_TOL[dtype], "y")
    grad_x = layer.backward(grad_out)
    grads_ref = ref.group_norm_backward(grad_out, x, mean_ref, rstd_ref, num_groups, weight)
    assert grad_x.dtype == dtype
    assert_close(grad_x, grads_ref[0], BACKWARD_TOL[dtype], "grad_x")
    if affine:
        assert_close(layer.grad_weight, grads_ref[1], BACKWARD_TOL[dtype], "grad_weight")
        assert_close(layer.grad_bias, grads_ref[2], BACKWARD_TOL[dtype], "grad_bias")


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
def test_layer_equals_functions(rng, dtype):
    """The layer is a thin wrapper: same bits as the functions with the same arguments."""
    layer = gncpu.GroupNorm(3, 9, eps=1e-4, dtype=dtype)
    layer.weight[...], layer.bias[...] = random_affine(rng, 9, dtype)
    x, grad_out = random_array(rng, (2, 9, 17), dtype), random_array(rng, (2, 9, 17), dtype)
    y = layer(x)
    grad_x = layer.backward(grad_out)
    y_fn, mean, rstd = gncpu.group_norm(x, 3, layer.weight, layer.bias, 1e-4,
                                        return_stats=True)
    grads_fn = gncpu.group_norm_backward(grad_out, x, mean, rstd, 3, layer.weight)
    assert_bitwise(y, y_fn, "y")
    assert_bitwise(grad_x, grads_fn[0], "grad_x")
    assert_bitwise(layer.grad_weight, grads_fn[1], "grad_weight")
    assert_bitwise(layer.grad_bias, grads_fn[2], "grad_bias")


def test_backward_uses_the_last_forward(rng):
    layer = gncpu.GroupNorm(2, 4, dtype=np.float64)
    first, second = random_array(rng, (2, 4, 5)), random_array(rng, (3, 4, 7))
    grad_out = random_array(rng, second.shape)
    layer(first)
    layer(second)
    grad_x = layer.backward(grad_out)
    _, mean, rstd = ref.group_norm(second, 2)
    grads_ref = ref.group_norm_backward(grad_out, second, mean, rstd, 2, layer.weight)
    assert_close(grad_x, grads_ref[0], BACKWARD_TOL[np.float64], "grad_x")
    assert_close(layer.grad_weight, grads_ref[1], BACKWARD_TOL[np.float64], "grad_weight")


def test_backward_before_forward():
    with pytest.raises(RuntimeError):
        gncpu.GroupNorm(2, 4).backward(np.ones((1, 4, 3), np.float32))


def test_forward_does_not_modify_parameters_or_input(rng):
    layer = gncpu.GroupNorm(2, 4)
    layer.weight[...], layer.bias[...] = random_affine(rng, 4, np.float32)
    weight, bias = layer.weight.copy(), layer.bias.copy()
    x = random_array(rng, (2, 4, 9), np.float32)
    x_copy = x.copy()
    layer(x)
    layer.backward(random_array(rng, x.shape, np.float32))
    assert_bitwise(layer.weight, weight, "weight")
    assert_bitwise(layer.bias, bias, "bias")
    assert_bitwise(x, x_copy, "x")
