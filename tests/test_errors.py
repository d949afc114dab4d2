"""Bad arguments raise the documented exception, and the message names the offending value."""
import numpy as np
import pytest

import gncpu
from conftest import fast_forward, random_array, raises_naming


@pytest.fixture
def x(rng):
    return random_array(rng, (2, 12, 5), np.float32)


@pytest.fixture
def stats(x):
    """(grad_out, mean, rstd) that go with ``x`` and 3 groups."""
    _, mean, rstd = fast_forward(x, 3)
    return np.ones_like(x), mean, rstd


def forward(**kwargs):
    return gncpu.group_norm(**kwargs)


def backward(**kwargs):
    return gncpu.group_norm_backward(**kwargs)


# ---------------------------------------------------------------------------------------
# num_groups and group_size


def test_channels_not_divisible_lists_the_valid_group_counts(rng):
    x = random_array(rng, (2, 100, 3), np.float32)
    raises_naming(ValueError, "C=100 is not divisible by num_groups=32",
                  "1, 2, 4, 5, 10, 20, 25, 50, 100", func=forward, x=x, num_groups=32)


@pytest.mark.parametrize("channels, num_groups, valid", [(12, 5, "1, 2, 3, 4, 6, 12"),
                                                         (7, 2, "1, 7"),
                                                         (6, 7, "1, 2, 3, 6")])
def test_channels_not_divisible(rng, channels, num_groups, valid):
    x = random_array(rng, (2, channels, 3), np.float64)
    raises_naming(ValueError, f"C={channels}", f"num_groups={num_groups}", valid,
                  func=forward, x=x, num_groups=num_groups)


@pytest.mark.parametrize("num_groups", [0, -1, -12])
def test_num_groups_not_positive(x, num_groups):
    raises_naming(ValueError, "num_groups", num_groups, func=forward, x=x,
                  num_groups=num_groups)


@pytest.mark.parametrize("num_groups", [2.5, 4.0, np.float64(4.0), "4"])
def test_num_groups_not_an_integer(x, num_groups):
    with pytest.raises(TypeError, match="num_groups"):
        gncpu.group_norm(x, num_groups)


@pytest.mark.parametrize("num_groups", [np.int64(3), np.int32(3), np.uint8(3)])
def test_num_groups_numpy_integer_accepted(x, num_groups):
    np.testing.assert_array_equal(gncpu.group_norm(x, num_groups), gncpu.group_norm(x, 3))


@pytest.mark.parametrize("group_size", [0, -3, 5, 24])
def test_group_size_invalid(x, group_size):
    raises_naming(ValueError, "group_size", group_size, func=forward, x=x,
                  group_size=group_size)


@pytest.mark.parametrize("kwargs", [{}, {"num_groups": 3, "group_size": 4},
                                    {"num_groups": None, "group_size": None}],
                         ids=["neither", "both", "both-None"])
def test_exactly_one_of_num_groups_and_group_size(x, kwargs):
    raises_naming(ValueError, "num_groups", "group_size", func=forward, x=x, **kwargs)


# ---------------------------------------------------------------------------------------
# weight, bias, x, eps


@pytest.mark.parametrize("name", ["weight", "bias"])
@pytest.mark.parametrize("shape", [(11,), (13,), (1, 12), (12, 1), ()])
def test_affine_wrong_shape(x, name, shape):
    raises_naming(ValueError, name, str(shape), func=forward, x=x, num_groups=3,
                  **{name: np.ones(shape, np.float32)})


@pytest.mark.parametrize("shape", [(12,), ()])
def test_x_with_fewer_than_two_dims(shape):
    with pytest.raises(ValueError) as info:
        gncpu.group_norm(np.ones(shape, np.float32), 1)
    message = str(info.value)
    assert str(shape) in message or f"ndim={len(shape)}" in message, message


@pytest.mark.parametrize("eps, shown", [(-1e-5, "-1e-05"), (-0.5, "-0.5"), (np.nan, "nan"),
                                        (np.inf, "inf"), (-np.inf, "-inf")])
def test_eps_invalid(x, eps, shown):
    message = raises_naming(ValueError, "eps", func=forward, x=x, num_groups=3, eps=eps)
    assert shown in message.lower(), message


@pytest.mark.parametrize("make", [
    lambda: np.ones((2, 4, 3), np.complex64),
    lambda: np.ones((2, 4, 3), np.complex128),
    lambda: np.ones((2, 4, 3)).astype(object),
    lambda: np.full((2, 4, 3), "a"),
    lambda: np.full((2, 4, 3), b"a"),
    lambda: np.full((2, 4, 3), np.datetime64("2020-01-01")),
    lambda: np.full((2, 4, 3), np.timedelta64(1, "s")),
], ids=["complex64", "complex128", "object", "str", "bytes", "datetime64", "timedelta64"])
def test_unsupported_dtype(make):
    x = make()
    with pytest.raises(TypeError) as info:
        gncpu.group_norm(x, 2)
    message = str(info.value)
    spellings = (x.dtype.name, str(x.dtype), x.dtype.str.lstrip("<>|="))
    assert any(s in message for s in spellings), message


# ---------------------------------------------------------------------------------------
# out


@pytest.mark.parametrize("shape", [(2, 12, 4), (1, 12, 5), (2, 12, 5, 1), (120,)])
def test_out_wrong_shape(x, shape):
    raises_naming(ValueError, "out", str(shape), func=forward, x=x, num_groups=3,
                  out=np.empty(shape, np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_out_wrong_dtype(x, dtype):
    raises_naming(ValueError, "out", np.dtype(dtype).name, func=forward, x=x, num_groups=3,
                  out=np.empty(x.shape, dtype))


def test_out_must_be_float64_for_integer_input(rng):
    x = random_array(rng, (2, 4, 3), np.int32)
    raises_naming(ValueError, "out", "float32", func=forward, x=x, num_groups=2,
                  out=np.empty(x.shape, np.float32))
    out = np.empty(x.shape, np.float64)
    assert gncpu.group_norm(x, 2, out=out) is out


# ---------------------------------------------------------------------------------------
# backward


def test_backward_grad_out_shape(x, stats):
    _, mean, rstd = stats
    raises_naming(ValueError, "grad_out", "(2, 12, 4)", func=backward,
                  grad_out=np.ones((2, 12, 4), np.float32), x=x, mean=mean, rstd=rstd,
                  num_groups=3)


@pytest.mark.parametrize("name", ["mean", "rstd"])
@pytest.mark.parametrize("shape", [(2, 4), (1, 3), (2, 3, 1), (6,)])
def test_backward_stats_shape(x, stats, name, shape):
    grad_out, mean, rstd = stats
    kwargs = {"grad_out": grad_out, "x": x, "mean": mean, "rstd": rstd, "num_groups": 3}
    kwargs[name] = np.ones(shape, np.float32)
    raises_naming(ValueError, name, str(shape), func=backward, **kwargs)


def test_backward_channels_not_divisible(x, stats):
    grad_out, mean, rstd = stats
    raises_naming(ValueError, "C=12 is not divisible by num_groups=5", "1, 2, 3, 4, 6, 12",
                  func=backward, grad_out=grad_out, x=x, mean=mean, rstd=rstd, num_groups=5)


def test_backward_group_arguments(x, stats):
    grad_out, mean, rstd = stats
    common = {"grad_out": grad_out, "x": x, "mean": mean, "rstd": rstd}
    raises_naming(ValueError, "num_groups", "group_size", func=backward, **common)
    raises_naming(ValueError, "num_groups", "group_size", func=backward, num_groups=3,
                  group_size=4, **common)
    raises_naming(ValueError, "group_size", 5, func=backward, group_size=5, **common)
    raises_naming(ValueError, "num_groups", -3, func=backward, num_groups=-3, **common)
    with pytest.raises(TypeError, match="num_groups"):
        gncpu.group_norm_backward(grad_out, x, mean, rstd, 2.5)


def test_backward_weight_wrong_shape(x, stats):
    grad_out, mean, rstd = stats
    raises_naming(ValueError, "weight", "(13,)", func=backward, grad_out=grad_out, x=x,
                  mean=mean, rstd=rstd, num_groups=3, weight=np.ones(13, np.float32))


@pytest.mark.parametrize("shape", [(12,), ()])
def test_backward_x_with_fewer_than_two_dims(shape):
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError):
        gncpu.group_norm_backward(x, x, np.ones((1, 1), np.float32),
                                  np.ones((1, 1), np.float32), 1)


def test_backward_unsupported_dtype(x, stats):
    _, mean, rstd = stats
    z = x.astype(np.complex64)
    with pytest.raises(TypeError, match="complex64"):
        gncpu.group_norm_backward(z, z, mean, rstd, 3)
