"""What must not change the bits: the batch a sample sits in, the thread count; and what the
functions must not change: their inputs."""
import numpy as np
import pytest

import gncpu
from conftest import (FLOATS, assert_bitwise, compiled_kernel_modules, fast_forward,
                      import_kernel_module, random_affine, random_array, with_layout)

GRAD_NAMES = ("grad_x", "grad_weight", "grad_bias")


def forward_backward(x, grad_out, num_groups, weight, bias, **kwargs):
    """(y, mean, rstd, grad_x, grad_weight, grad_bias) with the given keywords on both calls."""
    y, mean, rstd = fast_forward(x, num_groups, weight, bias, **kwargs)
    grads = gncpu.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight, **kwargs)
    return (y, mean, rstd) + tuple(grads)


# ---------------------------------------------------------------------------------------
# Batch invariance: a sample's results do not depend on the batch around it.

BATCH_CASES = [((7, 6, 17), 3), ((5, 8, 33, 65), 2), ((9, 4), 4), ((3, 12, 2053), 1),
               ((4, 5, 3, 7, 3), 5),
               ((3, 4, 128, 128), 1)]  # 65536 per group: a lone sample's group may be split
BATCH_IDS = ["x".join(map(str, s)) + f"-G{g}" for s, g in BATCH_CASES]


@pytest.mark.parametrize("layout", ["C", "F", "channels_last"])
@pytest.mark.parametrize("num_threads", [None, 1, 4])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", BATCH_CASES, ids=BATCH_IDS)
def test_sample_alone_equals_its_slice_of_the_batch(rng, case, dtype, num_threads, layout):
    """x[i:i+1] of a C or channels-last batch is contiguous, of an F batch strided."""
    shape, num_groups = case
    x = with_layout(random_array(rng, shape, dtype), layout)
    grad_out = with_layout(random_array(rng, shape, dtype), layout)
    weight, bias = random_affine(rng, shape[1], dtype)
    y, mean, rstd = fast_forward(x, num_groups, weight, bias, num_threads=num_threads)
    grad_x, _, _ = gncpu.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight,
                                             num_threads=num_threads)
    for i in range(shape[0]):
        one = slice(i, i + 1)
        alone = forward_backward(x[one], grad_out[one], num_groups, weight, bias,
                                 num_threads=num_threads)
        for name, a, b in zip(("y", "mean", "rstd", "grad_x"), alone, (y, mean, rstd, grad_x)):
            assert_bitwise(a, b[one], f"{name} of sample {i}")


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", BATCH_CASES, ids=BATCH_IDS)
def test_sample_inside_other_batches(rng, case, dtype):
    """The same sample at a random place among 0 to 8 other random samples."""
    shape, num_groups = case
    sample_shape = (1,) + shape[1:]
    x, grad_out = random_array(rng, sample_shape, dtype), random_array(rng, sample_shape, dtype)
    weight, bias = random_affine(rng, shape[1], dtype)
    alone = forward_backward(x, grad_out, num_groups, weight, bias)
    for batch in range(1, 10):
        where = int(rng.integers(batch))
        xs = random_array(rng, (batch,) + shape[1:], dtype)
        grads = random_array(rng, (batch,) + shape[1:], dtype)
        xs[where], grads[where] = x[0], grad_out[0]
        together = forward_backward(xs, grads, num_groups, weight, bias)
        for name, a, b in zip(("y", "mean", "rstd", "grad_x"), alone, together):
            assert_bitwise(a, b[where:where + 1], f"{name}, sample {where} of {batch}")


def at_offset(values, offset):
    """A C-contiguous copy of values starting `offset` elements into a fresh buffer."""
    buffer = np.empty(values.size + 64, values.dtype)
    placed = buffer[offset:offset + values.size].reshape(values.shape)
    placed[...] = values
    return placed


@pytest.mark.parametrize("module_name", compiled_kernel_modules())
@pytest.mark.parametrize("dtype", FLOATS + (np.float16,), ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("activation", [None, "relu", "silu"])
@pytest.mark.parametrize("shape, num_threads", [((2, 160, 3, 5), 1), ((1, 96, 66, 70), 3)],
                         ids=["2x160x3x5-t1", "1x96x66x70-t3"])
def test_channels_last_bits_do_not_depend_on_alignment(rng, module_name, dtype, activation,
                                                       shape, num_threads):
    """Channels-last rows are peeled to vector alignment (whole cache lines for the rest),
    so each alignment of x and y cuts a row's channels into vectors differently; the
    second shape takes the split path (73 row chunks in spans across 3 threads)."""
    module = import_kernel_module(module_name)
    x = random_array(rng, shape, dtype).transpose(0, 2, 3, 1)  # (N, H, W, C)
    weight, bias = random_affine(rng, shape[1], dtype)
    results = []
    for x_offset, y_offset in [(0, 0), (1, 1), (3, 3), (4, 4), (5, 2), (12, 12), (8, 0)]:
        xo = at_offset(x, x_offset)
        y = at_offset(np.zeros_like(x), y_offset)
        stats = module.group_norm(xo, 8, weight, bias, channel_axis=-1, out=y,
                                  activation=activation, return_stats=True,
                                  num_threads=num_threads)
        assert stats[0] is y
        results.append(((x_offset, y_offset), stats))
    (_, first), rest = results[0], results[1:]
    for offsets, stats in rest:
        for name, a, b in zip(("y", "mean", "rstd"), stats, first):
            assert_bitwise(a, b, f"{name} of {module_name} at element offsets {offsets}")


# ---------------------------------------------------------------------------------------
# Thread invariance: the same bits for every thread count, by keyword or by threadpoolctl.

THREAD_CASES = [((1, 8, 256, 256), 1),  # one pair: the work is split inside the group
                ((1, 4, 256, 256), 2),
                ((1, 3, 100003), 1),  # an odd length: uneven splits
                ((1, 2, 300007), 1),  # channels of 147 chunks: spans of 3, the last short
                ((16, 64, 9, 9), 32),  # many small pairs
                ((1, 256, 30, 30), 4),  # channels of one chunk, 64 per pair (8 at a time)
                ((3, 12, 2053), 3)]
THREAD_IDS = ["x".join(map(str, s)) + f"-G{g}" for s, g in THREAD_CASES]
THREAD_COUNTS = (2, 3, 4, 7)


@pytest.mark.parametrize("layout", ["C", "strided", "channels_last"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", THREAD_CASES, ids=THREAD_IDS)
def test_thread_count_does_not_change_results(rng, case, dtype, layout):
    shape, num_groups = case
    x = with_layout(random_array(rng, shape, dtype), layout)
    grad_out = with_layout(random_array(rng, shape, dtype), layout)
    weight, bias = random_affine(rng, shape[1], dtype)
    serial = forward_backward(x, grad_out, num_groups, weight, bias, num_threads=1)
    names = ("y", "mean", "rstd") + GRAD_NAMES
    for threads in THREAD_COUNTS:
        parallel = forward_backward(x, grad_out, num_groups, weight, bias, num_threads=threads)
        for name, a, b in zip(names, parallel, serial):
            assert_bitwise(a, b, f"{name} with num_threads={threads}")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    for threads in (1,) + THREAD_COUNTS:
        with threadpoolctl.threadpool_limits(limits=threads, user_api="openmp"):
            limited = forward_backward(x, grad_out, num_groups, weight, bias)
        for name, a, b in zip(names, limited, serial):
            assert_bitwise(a, b, f"{name} under threadpool_limits({threads})")


@pytest.mark.parametrize("module_name", compiled_kernel_modules())
@pytest.mark.parametrize("case", [((1, 256, 30, 30), 4), ((1, 8, 256, 256), 1)],
                         ids=["one-chunk-channels", "split-group"])
def test_every_compiled_variant_is_thread_invariant(rng, module_name, case):
    """Each build, not only the ones imported by default, gives the same bits for any
    thread count (its split paths sum as its pair paths do)."""
    module = import_kernel_module(module_name)
    shape, num_groups = case
    x, grad_out = random_array(rng, shape, np.float32), random_array(rng, shape, np.float32)
    weight = random_affine(rng, shape[1], np.float32)[0]
    results = []
    for threads in (1, 3):
        y, mean, rstd = module.group_norm(x, num_groups, weight, return_stats=True,
                                          num_threads=threads)
        results.append((y, mean, rstd) + tuple(module.group_norm_backward(
            grad_out, x, mean, rstd, num_groups, weight, num_threads=threads)))
    for name, a, b in zip(("y", "mean", "rstd") + GRAD_NAMES, *results):
        assert_bitwise(a, b, f"{name} of {module_name} with 3 threads")


def test_build_info():
    info = gncpu.build_info()
    assert isinstance(info, dict)
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["max_threads"], int) and info["max_threads"] >= 1
    assert isinstance(info["simd"], str) and info["simd"]
    if not info["openmp"]:
        assert info["max_threads"] == 1, "a serial build runs on one thread"


def test_threadpoolctl_sees_and_limits_the_openmp_runtime():
    """threadpoolctl can control gncpu's threads only if it finds the OpenMP runtime that
    gncpu's kernels use, and build_info reports the limit in force."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not gncpu.build_info()["openmp"]:
        pytest.skip("built without OpenMP")
    assert any(lib["user_api"] == "openmp" for lib in threadpoolctl.threadpool_info())
    for threads in (1, 3):
        with threadpoolctl.threadpool_limits(limits=threads, user_api="openmp"):
            assert gncpu.build_info()["max_threads"] == threads


def test_show_config(capsys):
    gncpu.show_config()
    printed = capsys.readouterr().out
    for key, value in gncpu.build_info().items():
        assert key in printed and str(value) in printed


# ---------------------------------------------------------------------------------------
# Inputs are never modified.


def assert_unchanged(arrays, copies):
    for name, array in arrays.items():
        before = copies[name]
        after = np.array(array, copy=True)
        assert after.dtype == before.dtype and after.tobytes() == before.tobytes(), (
            f"{name} was modified")
        base = getattr(array, "base", None)
        if isinstance(base, np.ndarray) and name + ".base" in copies:
            assert base.tobytes() == copies[name + ".base"].tobytes(), (
                f"the buffer under {name} was modified")


def snapshot(arrays):
    copies = {name: np.array(a, copy=True) for name, a in arrays.items()}
    for name, a in arrays.items():
        if isinstance(getattr(a, "base", None), np.ndarray):
            copies[name + ".base"] = a.base.copy()
    return copies


@pytest.mark.parametrize("layout", ["C", "F", "strided", "negative", "permuted",
                                    "channels_last", "byteswapped"])
@pytest.mark.parametrize("dtype", FLOATS + (np.float16,), ids=["f32", "f64", "f16"])
def test_inputs_are_not_modified(rng, dtype, layout):
    shape, num_groups = (3, 6, 5, 7), 3
    weight, bias = random_affine(rng, 6, dtype)
    inputs = {"x": random_array(rng, shape, dtype), "grad_out": random_array(rng, shape, dtype),
              "weight": weight, "bias": bias}
    inputs = {name: with_layout(a, layout) for name, a in inputs.items()}
    copies = snapshot(inputs)
    _, mean, rstd = fast_forward(inputs["x"], num_groups, inputs["weight"], inputs["bias"])
    assert_unchanged(inputs, copies)
    stats = {"mean": with_layout(mean, layout), "rstd": with_layout(rstd, layout)}
    stats_copies = snapshot(stats)
    gncpu.group_norm_backward(inputs["grad_out"], inputs["x"], stats["mean"], stats["rstd"],
                              num_groups, inputs["weight"])
    assert_unchanged(inputs, copies)
    assert_unchanged(stats, stats_copies)
