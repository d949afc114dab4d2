"""Bad arguments raise the documented exception, and the message names the offending value."""
import re

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


# ---------------------------------------------------------------------------------------
# Every message names the offending value and the valid choice. Each case: the keyword
# arguments of group_norm (x defaults to the fixture's (2, 12, 5) float32), the exception,
# and the substrings that must appear (the value, then the valid choice).

BIG = 2**64
RO = np.ones((2, 12, 5), np.float32)
RO.flags.writeable = False

MESSAGE_CASES = {
    # integers beyond int64 (they raised OverflowError, naming nothing)
    "num_groups-2**63": ({"num_groups": 2**63}, ValueError,
                         ["num_groups=9223372036854775808", "valid values for C=12: 1, 2, 3"]),
    "num_groups-2**64": ({"num_groups": BIG}, ValueError,
                         [f"num_groups={BIG}", "valid values for C=12: 1, 2, 3, 4, 6, 12"]),
    "num_groups--2**64": ({"num_groups": -BIG}, ValueError,
                          [f"num_groups={-BIG} must be positive", "valid values for C=12"]),
    "num_groups-numpy-uint64": ({"num_groups": np.uint64(2**63)}, ValueError,
                                ["num_groups=9223372036854775808", "valid values for C=12"]),
    "group_size-2**64": ({"num_groups": None, "group_size": BIG}, ValueError,
                         [f"group_size={BIG}", "valid values for C=12"]),
    "channel_axis-2**64": ({"channel_axis": BIG}, ValueError,
                           [f"channel_axis={BIG}", "use 1 (channels first", "or -1"]),
    "channel_axis--2**64": ({"channel_axis": -BIG}, ValueError,
                            [f"channel_axis={-BIG}", "use 1 (channels first", "or -1"]),
    "num_threads-2**64": ({"num_threads": BIG}, ValueError,
                          [f"num_threads={BIG} is out of range", f"use 1 to {2**63 - 1}"]),
    "num_threads--2**64": ({"num_threads": -BIG}, ValueError,
                           [f"num_threads={-BIG} must be at least 1", "None"]),
    "num_threads-0": ({"num_threads": 0}, ValueError,
                      ["num_threads=0 must be at least 1", "or None for the OpenMP default"]),
    "eps-10**400": ({"eps": 10**400}, ValueError,
                    ["eps=1.00e+400 (an integer of 401 digits)", "finite and non-negative"]),
    "num_groups-10**5000": ({"num_groups": 10**5000}, ValueError,
                            ["num_groups=1.00e+5000 (an integer of 5001 digits)",
                             "valid values for C=12"]),
    # outputs
    "out-read-only": ({"out": RO}, ValueError, ["out is read-only", "pass a writeable array"]),
    "residual_out-read-only": ({"residual": np.ones((2, 12, 5), np.float32),
                                "residual_out": RO}, ValueError,
                               ["residual_out is read-only", "pass a writeable array"]),
    "residual_out-alone": ({"residual_out": np.empty((2, 12, 5), np.float32)}, ValueError,
                           ["residual_out is given without residual", "pass residual too"]),
    "out-overlaps-residual_out": ("overlap", ValueError,
                                  ["out and residual_out overlap", "pass separate arrays"]),
    # x that is not an array of real numbers: the value is named, not only its dtype
    "x-None": ({"x": None}, TypeError, ["x=None has dtype object", "real numbers"]),
    "x-str": ({"x": "hello"}, TypeError, ["x='hello' has dtype <U5", "real numbers"]),
    "x-dict": ({"x": {}}, TypeError, ["x={} has dtype object", "real numbers"]),
    "x-scalar": ({"x": 3.0}, ValueError, ["x=3.0 has shape ()", "at least 2 dimensions"]),
    "x-ragged": ({"x": [[1.0, 2.0], [3.0]]}, ValueError,
                 ["x=[[1.0, 2.0], [3.0]] is not an array of numbers", "inhomogeneous"]),
    "x-C=0": ({"x": np.ones((2, 0, 5), np.float32), "num_groups": 1}, ValueError,
              ["C=0 channels", "C must be at least 1"]),
    # weight and bias
    "weight-complex": ({"weight": np.ones(12, complex)}, TypeError,
                       ["weight has dtype complex128", "floating point, integers or booleans"]),
    "weight-str": ({"weight": "abcdefghijkl"}, TypeError,
                   ["weight='abcdefghijkl' has dtype <U12", "real numbers"]),
    "bias-list-wrong-length": ({"bias": [0.0] * 11}, ValueError,
                               ["bias=[0.0, 0.0,", "has shape (11,)", "expected (C,) = (12,)"]),
    "weight-ragged": ({"weight": [[1.0], [1.0, 2.0]]}, ValueError,
                      ["weight=[[1.0], [1.0, 2.0]] is not an array", "inhomogeneous"]),
    "residual-list-wrong-shape": ({"residual": [[1.0]]}, ValueError,
                                  ["residual=[[1.0]] has shape (1, 1)",
                                   "expected x's shape (2, 12, 5)"]),
    # long values are shortened
    "activation-long": ({"activation": "x" * 500}, ValueError,
                        ["activation='xxxxxxxx", "...", "choose None, 'relu' or 'silu'"]),
}


@pytest.mark.parametrize("case", MESSAGE_CASES.values(), ids=MESSAGE_CASES.keys())
def test_message_names_value_and_valid_choice(x, case):
    kwargs, exc_type, tokens = case
    if kwargs == "overlap":
        shared = np.empty_like(x)
        kwargs = {"residual": x.copy(), "out": shared, "residual_out": shared}
    kwargs = {"x": x, "num_groups": 3, **kwargs}
    with pytest.raises(exc_type, match=re.escape(tokens[0])) as info:
        gncpu.group_norm(**kwargs)
    for token in tokens[1:]:
        assert token in str(info.value), str(info.value)
    assert len(str(info.value)) < 400, str(info.value)


def test_huge_integers_in_backward(x, stats):
    grad_out, mean, rstd = stats
    with pytest.raises(ValueError, match=re.escape(f"num_groups={BIG}")) as info:
        gncpu.group_norm_backward(grad_out, x, mean, rstd, BIG)
    assert "valid values for C=12: 1, 2, 3, 4, 6, 12" in str(info.value)
    with pytest.raises(ValueError, match=re.escape(f"channel_axis={BIG}")):
        gncpu.group_norm_backward(grad_out, x, mean, rstd, 3, channel_axis=BIG)
    with pytest.raises(ValueError, match=re.escape(f"num_threads={BIG} is out of range")):
        gncpu.group_norm_backward(grad_out, x, mean, rstd, 3, num_threads=BIG)


@pytest.mark.parametrize("value", [2**63 - 1, -2**63, 2**62])
def test_integers_at_the_int64_limits(x, value):
    """The largest integers that fit take the ordinary path (and its messages)."""
    with pytest.raises(ValueError, match=re.escape(f"num_groups={value}")):
        gncpu.group_norm(x, value)
    if value > 0:
        assert gncpu.group_norm(x, 3, num_threads=value).shape == x.shape


@pytest.mark.parametrize("channels, num_groups, shown", [
    (720720, 32, ": ..., 13, 14, 15, 16, 18, 20, 21, 22, 24, 26, 28, 30, 33, 35, 36, 39, 40, 42, "
                 "44, 45, 48, 52, 55, 56, ..."),  # 240 divisors: the 24 around num_groups
    (720720, 0, ": 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 21, 22, 24, "
                "26, 28, 30, ..."),
    (720720, 10**6, ": ..., 24024, 25740, 27720, 30030, 32760, 34320, 36036, 40040, 45045, "
                    "48048, 51480, 55440, 60060, 65520, 72072, 80080, 90090, 102960, 120120, "
                    "144144, 180180, 240240, 360360, 720720"),
    (2**40, 3, ": 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, "
               "65536, 131072, 262144, 524288, 1048576, 2097152, 4194304, 8388608, ..."),
    (2**40 + 1, 3, "valid values are the divisors of C=1099511627777"),  # not listed: slow
])
def test_many_or_huge_channel_counts_list_few_divisors_quickly(channels, num_groups, shown):
    x = np.empty((0, channels), np.float32)  # zero-size: C can be anything
    with pytest.raises(ValueError, match=re.escape(f"num_groups={num_groups}")) as info:
        gncpu.group_norm(x, num_groups)
    assert str(info.value).endswith(shown), str(info.value)


# ---------------------------------------------------------------------------------------
# mean and rstd dtypes in backward


@pytest.mark.parametrize("x_dtype, stats_dtype", [
    ("float32", "bfloat16"), ("float32", "float16"), ("float32", "float64"),
    ("float32", "int32"), ("float64", "float32"), ("bfloat16", "bfloat16"),
    ("bfloat16", "float16"), ("float16", "bfloat16")])
def test_backward_stats_of_another_real_dtype_are_converted(rng, x_dtype, stats_dtype):
    """Real statistics of another dtype (bfloat16 included: it said "expected floating
    point") are converted to the compute dtype, as if the caller had converted them."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtypes = {"bfloat16": np.dtype(ml_dtypes.bfloat16)}
    x = random_array(rng, (2, 6, 5), np.float32).astype(dtypes.get(x_dtype, x_dtype))
    _, mean, rstd = fast_forward(x, 3)
    mean, rstd = (a.astype(dtypes.get(stats_dtype, stats_dtype)) for a in (mean, rstd))
    grad_out = np.ones_like(x)
    got = gncpu.group_norm_backward(grad_out, x, mean, rstd, 3)
    compute = np.float64 if x_dtype == "float64" else np.float32
    expected = gncpu.group_norm_backward(grad_out, x, mean.astype(compute),
                                         rstd.astype(compute), 3)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))


@pytest.mark.parametrize("make, shown", [
    (lambda m: m.astype(bool), "mean has dtype bool"),
    (lambda m: m.astype(np.complex64), "mean has dtype complex64"),
    (lambda m: m.astype(object), "mean has dtype object"),
    (lambda m: None, "mean=None has dtype object"),
    (lambda m: "ab", "mean='ab' has dtype <U2"),
], ids=["bool", "complex64", "object", "None", "str"])
@pytest.mark.parametrize("x_dtype, valid", [
    (np.float32, "expected float32, the dtype of group_norm's statistics for x of dtype "
                 "float32"),
    (np.float64, "expected float64, the dtype of group_norm's statistics for x of dtype "
                 "float64"),
    (np.int16, "expected float64, the dtype of group_norm's statistics for x of dtype int16"),
], ids=["f32", "f64", "i16"])
def test_backward_stats_wrong_dtype_names_the_valid_one(rng, make, shown, x_dtype, valid):
    x = random_array(rng, (2, 6, 5), np.float32).astype(x_dtype)
    _, mean, rstd = fast_forward(x, 3)
    with pytest.raises(TypeError, match=re.escape(shown)) as info:
        gncpu.group_norm_backward(np.ones_like(x), x, make(mean), rstd, 3)
    assert valid in str(info.value), str(info.value)


def test_backward_non_arrays_are_named(x, stats):
    grad_out, mean, rstd = stats
    with pytest.raises(TypeError, match=re.escape("grad_out=None has dtype object")):
        gncpu.group_norm_backward(None, x, mean, rstd, 3)
    with pytest.raises(ValueError, match=re.escape("rstd=[[1.0], [2.0, 3.0]] is not an array")):
        gncpu.group_norm_backward(grad_out, x, mean, [[1.0], [2.0, 3.0]], 3)
    with pytest.raises(ValueError, match=re.escape("mean=[[0.0]] has shape (1, 1); expected "
                                                   "(N, G) = (2, 3)")):
        gncpu.group_norm_backward(grad_out, x, [[0.0]], rstd, 3)


def test_late_errors_leave_inputs_unmodified():
    """num_threads is checked last, after out= is set up: a rejected call still writes
    nothing, not even into out=x."""
    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    _, mean, rstd = fast_forward(x, 2)
    before = (x.copy(), mean.copy(), rstd.copy())
    with pytest.raises(ValueError):
        gncpu.group_norm(x, 2, np.ones(4, np.float32), out=x, num_threads=BIG)
    with pytest.raises(ValueError):
        gncpu.group_norm_backward(x, x, mean, rstd, 2, num_threads=BIG)
    for a, b in zip((x, mean, rstd), before):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------
# GroupNorm layer


LAYER_CASES = {
    "num_channels-0": ((2, 0), {}, ValueError, ["num_channels=0", "must be at least 1"]),
    "num_channels-negative": ((2, -4), {}, ValueError, ["num_channels=-4", "at least 1"]),
    "num_channels-2**64": ((2, BIG), {}, ValueError,
                           [f"num_channels={BIG} is out of range", f"use 1 to {2**63 - 1}"]),
    "num_channels-float": ((2, 4.0), {}, TypeError, ["num_channels=4.0", "an integer"]),
    "num_channels-str": ((2, "4"), {}, TypeError, ["num_channels='4'", "an integer"]),
    "num_channels-bool": ((1, True), {}, TypeError, ["num_channels=True", "not a bool"]),
    "num_groups-None": ((None, 4), {}, TypeError, ["num_groups=None", "an integer"]),
    "num_groups-2**64": ((BIG, 4), {}, ValueError,
                         [f"num_groups={BIG}", "valid values for C=4: 1, 2, 4"]),
    "dtype-int": ((2, 4), {"dtype": np.int32}, TypeError,
                  ["dtype=int32 is not supported", "float32, float64, float16 or bfloat16"]),
    "dtype-complex": ((2, 4), {"dtype": np.complex64}, TypeError,
                      ["dtype=complex64", "float32, float64, float16 or bfloat16"]),
    "dtype-unknown": ((2, 4), {"dtype": "foo"}, TypeError,
                      ["dtype='foo' is not a NumPy dtype", "float32, float64"]),
    "channel_axis": ((2, 4), {"channel_axis": 2}, ValueError,
                     ["channel_axis=2", "use 1 (channels first) or -1 (channels last)"]),
}


@pytest.mark.parametrize("case", LAYER_CASES.values(), ids=LAYER_CASES.keys())
def test_layer_arguments(case):
    args, kwargs, exc_type, tokens = case
    with pytest.raises(exc_type, match=re.escape(tokens[0])) as info:
        gncpu.GroupNorm(*args, **kwargs)
    for token in tokens[1:]:
        assert token in str(info.value), str(info.value)


@pytest.mark.parametrize("channel_axis, shape, shown", [
    (1, (2, 6, 3), "x has shape (2, 6, 3), with C=6 channels on axis 1"),
    (-1, (2, 3, 8), "x has shape (2, 3, 8), with C=8 channels on axis -1")])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layer_forward_names_x_channels(channel_axis, shape, shown, affine):
    """A wrong channel count is reported as x's, not as the weight's shape. (Without affine
    a channel count that num_groups divides is not an error: there is nothing to check it
    against but num_channels, and checking would cost every call.)"""
    layer = gncpu.GroupNorm(4, 4, affine=affine, channel_axis=channel_axis)
    x = np.ones(shape, np.float32)
    if affine or shape[channel_axis] % 4:
        with pytest.raises(ValueError, match=re.escape(shown)) as info:
            layer(x)
        assert "this layer has num_channels=4" in str(info.value)


def test_layer_forward_other_errors_pass_through():
    layer = gncpu.GroupNorm(2, 4)
    with pytest.raises(ValueError, match=re.escape("x has shape (4,); expected")):
        layer(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="is not an array of numbers"):
        layer([[1.0], [1.0, 2.0]])


# ---------------------------------------------------------------------------------------
# Command line


@pytest.mark.parametrize("argv, shown", [
    (["benhc"], "unknown command 'benhc'; choose bench or config"),
    (["bench", "--threads", "1,x"], "--threads='1,x': expected integers like 1,2"),
    (["bench", "--threads", "0"], "--threads='0': thread counts must be at least 1"),
    (["bench", "--dtype", "int8"], "invalid choice: 'int8'"),
])
def test_command_line_errors(capsys, argv, shown):
    from gncpu.__main__ import main
    try:
        status = main(argv)
    except SystemExit as exit:
        status = exit.code
    assert status == 2
    assert shown in capsys.readouterr().err
