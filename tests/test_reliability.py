"""Reliability: no leaks, no hidden allocations, many threads at once, more than 2^31 elements.

- Leaks: 100,000 calls of each public entry point (and of its options, and of its error
  paths) leave the resident set flat and the reference counts of the inputs unchanged.
- Peak memory, seen by tracemalloc (NumPy reports its data allocations to it, and the
  kernels' scratch is NumPy arrays): a forward call allocates its output and the (N, G)
  statistics, a backward call its outputs and O(N * C) partials. Scratch on top: on the
  channels-first split path (few (sample, group) pairs for the threads), a few float64 per
  span of chunks, at most 64 spans per (sample, group) or channel; channels-last, 7
  float64 per channel for each thread (or each sample, when there are fewer than twice
  as many samples as threads).
- Concurrency: 8 Python threads call forward and backward with mixed shapes, dtypes,
  layouts and thread counts for GNCPU_STRESS_SECONDS (default 10); every result is bitwise
  the serial one, and the main thread keeps waking up on time.
- Bounds: arrays placed against inaccessible pages (AddressSanitizer does not see the
  kernels' masked loads and stores) are read and written without a fault, bitwise alike.
- Size: float16 tensors of more than 2^31 elements, one (sample, group) of more than 2^31
  elements, normalized and differentiated correctly. These need about 9 GB of memory and
  run only with GNCPU_SLOW=1.
"""
import ctypes
import gc
import mmap
import os
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

import gncpu
from conftest import (assert_bitwise, assert_stats_close, random_affine, random_array,
                      seeded_rng, with_layout)

try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None


def under_asan():
    """Whether AddressSanitizer is loaded (tools/sanitize.sh): it keeps freed memory in
    quarantine, so the resident set grows without a leak."""
    if not os.path.exists("/proc/self/maps"):
        return False
    with open("/proc/self/maps") as maps:
        return "libasan" in maps.read()


def resident_bytes():
    """The resident set size of this process (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------
# Leaks.

LEAK_CALLS = 100_000
# Catches a leak of 84 bytes per call; keeping each call's small result array (~390 bytes
# with its header) grows the resident set by ~37 MiB.
LEAK_BOUND = 8 << 20

# Small inputs of varying shapes, dtypes and layouts (those the kernels read in place and
# those they copy first), both channel axes; the count divides LEAK_CALLS, so the loop ends
# on the input the warm-up ended on (the layer then holds the same one).
LEAK_CASES = [((2, 4, 3), 2, np.float32, 1, "C"), ((1, 6, 5, 2), 3, np.float64, 1, "F"),
              ((3, 2), 1, np.float16, 1, "strided"), ((2, 3, 7), 3, np.float32, -1, "C"),
              ((1, 8, 2, 3), 4, np.float64, -1, "byteswapped"),
              ((2, 4, 5), 4, np.int16, 1, "C"), ((2, 6, 3), 2, np.float32, 1, "negative"),
              ((1, 4, 9), 2, ml_dtypes.bfloat16 if ml_dtypes else np.float16, -1, "C")]


def leak_inputs(case):
    """Everything a call may take, for one case (channels-last when the axis is -1)."""
    shape, num_groups, dtype, axis, layout = case
    rng = seeded_rng(f"leak{case}")
    if axis == -1:
        shape = (shape[0],) + shape[2:] + (shape[1],)
    channels = shape[axis]
    weight, bias = random_affine(rng, channels, np.float64 if dtype == np.float64 else
                                 np.float32)
    data = {name: with_layout(random_array(rng, shape, dtype), layout)
            for name in ("x", "residual", "grad_out")}
    y, mean, rstd = gncpu.group_norm(data["x"], num_groups, channel_axis=axis,
                                     return_stats=True)
    layer = gncpu.GroupNorm(num_groups, channels, dtype=weight.dtype, channel_axis=axis,
                            activation="silu")
    return dict(data, weight=weight, bias=bias, mean=mean, rstd=rstd, out=np.empty_like(y),
                residual_out=np.empty_like(y), num_groups=num_groups, axis=axis, layer=layer)


def call_forward(a):
    gncpu.group_norm(a["x"], a["num_groups"], a["weight"], a["bias"], channel_axis=a["axis"])


def call_forward_options(a):
    gncpu.group_norm(a["x"], a["num_groups"], a["weight"], a["bias"], channel_axis=a["axis"],
                     activation="relu", residual=a["residual"], residual_out=a["residual_out"],
                     out=a["out"], return_stats=True, num_threads=1)


def call_backward(a):
    gncpu.group_norm_backward(a["grad_out"], a["x"], a["mean"], a["rstd"], a["num_groups"],
                              a["weight"], bias=a["bias"], activation="silu",
                              channel_axis=a["axis"])


def call_layer(a):
    a["layer"](a["x"])
    a["layer"].backward(a["grad_out"])


def call_errors(a):
    """Error paths, after some arguments were already converted."""
    try:
        gncpu.group_norm(a["x"], a["num_groups"], a["weight"], a["bias"], eps=-1.0,
                         channel_axis=a["axis"])
    except ValueError:
        pass
    try:
        gncpu.group_norm_backward(a["grad_out"], a["x"], a["mean"], a["rstd"][:, :0],
                                  a["num_groups"], channel_axis=a["axis"])
    except ValueError:
        pass


def refcounts(cases):
    """{(case index, name): reference count} of every input object."""
    return {(i, key): sys.getrefcount(value) for i, case in enumerate(cases)
            for key, value in case.items() if not isinstance(value, int)}


LEAK_CALLS_BY_NAME = {"group_norm": call_forward, "group_norm_options": call_forward_options,
                      "group_norm_backward": call_backward, "GroupNorm": call_layer,
                      "errors": call_errors}


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                    reason="reads the resident set from Linux's /proc/self/statm")
@pytest.mark.skipif(under_asan(), reason="AddressSanitizer's quarantine grows the "
                                         "resident set; tools/sanitize.sh checks memory "
                                         "safety, not leaks")
@pytest.mark.parametrize("name", LEAK_CALLS_BY_NAME)
def test_no_leak(name):
    """RSS before and after 100,000 calls (after a warm-up), and every input's refcount."""
    call = LEAK_CALLS_BY_NAME[name]
    cases = [leak_inputs(case) for case in LEAK_CASES]
    for i in range(20 * len(cases)):
        call(cases[i % len(cases)])
    gc.collect()
    refs = refcounts(cases)
    before = resident_bytes()
    for i in range(LEAK_CALLS):
        call(cases[i % len(cases)])
    gc.collect()
    growth = resident_bytes() - before
    print(f"{name}: resident {before / 2**20:.1f} MiB before, {(before + growth) / 2**20:.1f} "
          f"MiB after {LEAK_CALLS} calls")
    assert growth < LEAK_BOUND, f"{name}: resident set grew by {growth / 2**20:.1f} MiB " \
                                f"over {LEAK_CALLS} calls"
    after = refcounts(cases)
    changed = {key: (refs[key], after[key]) for key in refs if after[key] != refs[key]}
    assert not changed, f"{name}: reference counts changed (before, after): {changed}"


# ---------------------------------------------------------------------------------------
# Peak memory.

# Allowance for Python objects (tuples, the array headers) on top of the counted bytes.
SLACK = 16 << 10
CHUNK = 2048  # elements per chunk (channels-first), as in _kernels.pxi
MAX_SPANS = 64  # chunks are merged in at most this many spans, as in _kernels.pxi
ROW_CHUNK = 64  # rows per chunk (channels-last), as in _kernels.pxi


def peak_during(func):
    """(result, bytes allocated at the peak of func() beyond what was allocated before)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = func()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return result, peak


def spans(chunks):
    """How many spans `chunks` chunks are merged in: at most MAX_SPANS, as in _kernels.pxi."""
    per = max(1, -(-chunks // MAX_SPANS))
    return -(-chunks // per)


def split_scratch(shape, num_groups, threads):
    """Bytes of the channels-first split path's partials: with fewer (sample, group) pairs
    than twice the threads, 3 float64 per span of each pair (forward) or 2 per span of each
    channel (backward), so that they merge in a fixed order."""
    n, c, s = shape[0], shape[1], int(np.prod(shape[2:]))
    if threads == 1 or n * num_groups >= 2 * threads:
        return 0, 0
    forward = 3 * 8 * n * num_groups * spans(-(-(c // num_groups * s) // CHUNK))
    backward = 2 * 8 * n * c * spans(-(-s // CHUNK))
    return forward, backward


PEAK_CASES = [((8, 32, 64, 64), 8, 1), ((8, 32, 64, 64), 8, 2), ((1, 32, 128, 128), 1, 2),
              ((4, 64, 4096), 32, 2), ((1, 4, 1 << 20), 1, 2)]


def channels_last_scratch(shape, threads):
    """Bytes of the channels-last kernels' scratch, forward or backward: for each thread, or
    for each sample when there are fewer than twice as many as threads (split), a row
    chunk's and a span's per-channel partials, the channels' merged moments (forward) and
    the coefficients, 9 float64 per channel; when split, 2 per channel for each span of
    64-row chunks of each sample and for each thread."""
    n, c, s = shape[0], shape[1], int(np.prod(shape[2:]))
    split = threads > 1 and n < 2 * threads
    tasks = n if split else threads
    parts = 2 * 8 * c * (n * spans(-(-s // ROW_CHUNK)) + threads) if split else 0
    return 9 * 8 * c * tasks + parts


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", PEAK_CASES, ids=lambda c: f"{c[0]}-G{c[1]}-t{c[2]}")
def test_peak_memory(rng, case, dtype, channels_last):
    shape, num_groups, threads = case
    n, c = shape[:2]
    x = random_array(rng, shape, dtype)
    grad_out = random_array(rng, shape, dtype)
    weight, bias = random_affine(rng, c, np.float32)
    axis = 1
    if channels_last:
        x, grad_out = (np.ascontiguousarray(np.moveaxis(a, 1, -1)) for a in (x, grad_out))
        axis = -1
    if channels_last:
        split_forward = split_backward = channels_last_scratch(shape, threads)
    else:
        split_forward, split_backward = split_scratch(shape, num_groups, threads)

    (y, mean, rstd), peak = peak_during(lambda: gncpu.group_norm(
        x, num_groups, weight, bias, channel_axis=axis, return_stats=True, num_threads=threads))
    allowed = y.nbytes + mean.nbytes + rstd.nbytes + split_forward + SLACK
    assert peak <= allowed, f"forward: peak {peak} bytes, output {y.nbytes} + stats " \
                            f"{mean.nbytes + rstd.nbytes} + scratch {split_forward}"

    grads, peak = peak_during(lambda: gncpu.group_norm_backward(
        grad_out, x, mean, rstd, num_groups, weight, channel_axis=axis, num_threads=threads))
    outputs = sum(g.nbytes for g in grads)
    partials = 8 * (2 * n * c + 2 * n * num_groups)  # db, ds per (n, c); 2 terms per pair
    allowed = outputs + partials + split_backward + SLACK
    assert peak <= allowed, f"backward: peak {peak} bytes, outputs {outputs} + partials " \
                            f"{partials} + scratch {split_backward}"


# ---------------------------------------------------------------------------------------
# Concurrency.

STRESS_SECONDS = float(os.environ.get("GNCPU_STRESS_SECONDS", "10"))
STRESS_THREADS = 8
# The main thread sleeps 0.1 s at a time; a wake-up later than this is a stall.
HEARTBEAT_BOUND = 2.0


def stress_cases():
    """Mixed calls with their serial (num_threads=1) results: small and OpenMP-sized shapes
    (the latter take the split path with 2 threads), every dtype, both layouts, options."""
    rng = seeded_rng("stress")
    dtypes = [np.float32, np.float64, np.float16] + ([ml_dtypes.bfloat16] if ml_dtypes else [])
    shapes = [((3, 6, 5), 3), ((2, 8, 33, 17), 4), ((1, 4, 128, 128), 2), ((4, 16, 4099), 16)]
    cases = []
    for k, (shape, num_groups) in enumerate(shapes * 2):
        turn = k + k // len(shapes)  # the second round pairs each shape differently
        dtype = dtypes[turn % len(dtypes)]
        last = turn % 2 == 1
        x = random_array(rng, shape, np.float64)
        grad_out = random_array(rng, shape, np.float64)
        if last:
            x, grad_out = np.moveaxis(x, 1, -1), np.moveaxis(grad_out, 1, -1)
        x, grad_out = x.astype(dtype), grad_out.astype(dtype)
        weight, bias = random_affine(rng, shape[1], np.float32)
        kwargs = {"channel_axis": -1 if last else 1, "activation": (None, "silu", "relu")[k % 3]}
        forward = gncpu.group_norm(x, num_groups, weight, bias, return_stats=True,
                                   num_threads=1, **kwargs)
        backward = gncpu.group_norm_backward(grad_out, x, forward[1], forward[2], num_groups,
                                             weight, bias=bias, num_threads=1, **kwargs)
        cases.append(((x, grad_out, num_groups, weight, bias, kwargs), forward + backward))
    return cases


def stress_worker(index, cases, go, deadline, counts, failures):
    """Thread `index` walks the cases from its own start, with 1, 2 and default threads,
    from when `go` is set until deadline[0]."""
    k = index
    go.wait()
    try:
        while time.monotonic() < deadline[0] and not failures:
            (x, grad_out, num_groups, weight, bias, kwargs), expected = cases[k % len(cases)]
            threads = (1, 2, None)[k % 3]
            forward = gncpu.group_norm(x, num_groups, weight, bias, return_stats=True,
                                       num_threads=threads, **kwargs)
            backward = gncpu.group_norm_backward(grad_out, x, forward[1], forward[2],
                                                 num_groups, weight, bias=bias,
                                                 num_threads=threads, **kwargs)
            for name, got, want in zip(("y", "mean", "rstd", "grad_x", "grad_weight",
                                        "grad_bias"), forward + backward, expected):
                assert_bitwise(got, want, f"case {k % len(cases)}, {threads} threads, {name}")
            counts[index] += 1
            k += 1
    except BaseException as exc:  # reported by the main thread
        failures.append(f"thread {index}: {exc!r}")


def test_threads_stress():
    cases = stress_cases()
    counts = [0] * STRESS_THREADS
    failures = []
    go, deadline = threading.Event(), []
    workers = [threading.Thread(target=stress_worker,
                                args=(i, cases, go, deadline, counts, failures), daemon=True)
               for i in range(STRESS_THREADS)]
    for worker in workers:
        worker.start()
    start = time.monotonic()
    deadline.append(start + STRESS_SECONDS)
    go.set()
    worst, last = 0.0, start
    while any(worker.is_alive() for worker in workers):
        time.sleep(0.1)
        now = time.monotonic()
        worst = max(worst, now - last - 0.1)
        last = now
        assert now - start < STRESS_SECONDS + 60, "the workers did not stop"
    print(f"{STRESS_THREADS} threads x {STRESS_SECONDS:g} s: {sum(counts)} forward+backward "
          f"pairs {counts}, heartbeat late by at most {worst:.3f} s")
    assert not failures, failures[:3]
    assert worst < HEARTBEAT_BOUND, f"the main thread stalled for {worst:.2f} s"
    assert all(counts), f"a thread made no call: {counts}"


# ---------------------------------------------------------------------------------------
# Bounds. AddressSanitizer does not check AVX2's masked loads and stores (the kernels'
# partial vectors), so here every array lies against an inaccessible page: a byte touched
# just before or after it faults.

GUARD_CASES = [((1, 2, 1), 1), ((2, 4, 7), 2), ((1, 6, 9), 3), ((1, 5, 17), 5),
               ((1, 12, 3), 4), ((2, 10, 13, 3), 2)]
NAMES = ("y", "mean", "rstd", "grad_x", "grad_weight", "grad_bias")


def guarded(arrays, shape, dtype, at_end):
    """A C-contiguous array starting just after an inaccessible page, or (at_end) ending
    just before one; the mapping is kept in `arrays`."""
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    inner = -(-nbytes // page) * page
    region = mmap.mmap(-1, inner + 2 * page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(region))
    for guard in (start, start + page + inner):
        assert libc.mprotect(guard, page, 0) == 0  # PROT_NONE
    offset = page + (inner - nbytes if at_end else 0)
    arrays.append(region)
    return np.frombuffer(region, dtype, int(np.prod(shape)), offset).reshape(shape)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through ctypes")
@pytest.mark.parametrize("at_end", [False, True], ids=["after_guard", "before_guard"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16] +
                         ([ml_dtypes.bfloat16] if ml_dtypes else []),
                         ids=lambda t: np.dtype(t).name)
def test_no_access_outside_the_arrays(dtype, channels_last, at_end):
    """Forward (residual, residual_out, out; then in place) and backward on small odd
    shapes, where most vectors are partial: no fault, and the bits of ordinary arrays."""
    rng = seeded_rng(f"guard{np.dtype(dtype).name}{channels_last}{at_end}")
    maps = []
    for shape, num_groups in GUARD_CASES:
        if channels_last:
            shape = (shape[0],) + shape[2:] + (shape[1],)
        kwargs = {"channel_axis": -1 if channels_last else 1, "activation": "silu"}
        weight, bias = random_affine(rng, shape[kwargs["channel_axis"]],
                                     np.float64 if dtype == np.float64 else np.float32)
        plain = {name: random_array(rng, shape, dtype) for name in ("x", "res", "grad")}
        fenced = {name: guarded(maps, shape, dtype, at_end)
                  for name in ("x", "res", "grad", "out", "sum")}
        for name in plain:
            fenced[name][...] = plain[name]
        plain["sum"] = np.empty(shape, dtype)
        want = gncpu.group_norm(plain["x"], num_groups, weight, bias, residual=plain["res"],
                                residual_out=plain["sum"], return_stats=True, **kwargs)
        got = gncpu.group_norm(fenced["x"], num_groups, weight, bias, residual=fenced["res"],
                               residual_out=fenced["sum"], out=fenced["out"],
                               return_stats=True, **kwargs)
        for name, a, b in zip(NAMES[:3] + ("x + residual",), got + (fenced["sum"],),
                              want + (plain["sum"],)):
            assert_bitwise(a, b, f"{shape} {name}")
        want = gncpu.group_norm_backward(plain["grad"], plain["sum"], got[1], got[2],
                                         num_groups, weight, bias=bias, **kwargs)
        got = gncpu.group_norm_backward(fenced["grad"], fenced["sum"], got[1], got[2],
                                        num_groups, weight, bias=bias, **kwargs)
        for name, a, b in zip(NAMES[3:], got, want):
            assert_bitwise(a, b, f"{shape} {name}")
        gncpu.group_norm(fenced["x"], num_groups, weight, bias, out=fenced["x"], **kwargs)
        assert_bitwise(fenced["x"], gncpu.group_norm(plain["x"], num_groups, weight, bias,
                                                     **kwargs), f"{shape} y in place")


# ---------------------------------------------------------------------------------------
# More than 2^31 elements.

SLOW = os.environ.get("GNCPU_SLOW") == "1"
slow = pytest.mark.skipif(not SLOW, reason="needs ~9 GB of memory and 20 s or more: set "
                                           "GNCPU_SLOW=1 to run")

# x: (1, 2, S) float16, 2 * S > 2^31 + 50 elements, each channel a block of PERIOD random
# values repeated (channel 1 shifted and scaled), so that exact float64 sums cost O(PERIOD).
# S is odd (no chunk size divides it) and a multiple of 49: channels-last, the same memory
# is read as rows of 98 channels (rows of very few channels are slow, ~50 ns per row).
HUGE_S = 2**30 + 27
HUGE_ROW = 98
PERIOD = 2**20 + 7


def tiled_sum(block, count, f):
    """sum(f(v)) in float64 over `count` elements of `block` repeated."""
    q, r = divmod(count, block.size)
    return q * np.sum(f(block)) + np.sum(f(block[:r]))


@pytest.fixture(scope="module")
def huge():
    """(x of shape (1, 2, HUGE_S) float16, its two channel blocks as float64)."""
    available = 0
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("reads the available memory from Linux's /proc/meminfo")
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if available < 10 * 2**30:
        pytest.skip(f"needs 10 GiB of available memory, {available / 2**30:.1f} GiB free")
    rng = seeded_rng("huge")
    blocks = [rng.standard_normal(PERIOD).astype(np.float16),
              (rng.standard_normal(PERIOD) * 2 + 3).astype(np.float16)]
    x = np.empty((1, 2, HUGE_S), np.float16)
    q, r = divmod(HUGE_S, PERIOD)
    for channel, block in enumerate(blocks):
        x[0, channel, :q * PERIOD].reshape(q, PERIOD)[...] = block
        x[0, channel, q * PERIOD:] = block[:r]
    yield x, [b.astype(np.float64) for b in blocks]


def huge_view(x, channels_last):
    """x itself, or its memory read as (1, 2 * HUGE_S / HUGE_ROW, HUGE_ROW) channels-last:
    the same values in one group (G = 1), so the same statistics."""
    return x.reshape(1, -1, HUGE_ROW) if channels_last else x


def huge_samples(size):
    """Flat indices to check: both ends, both sides of 2^31 and of the channel boundary,
    and one every 4099 elements (8 KiB apart: every stretch of the output is looked at)."""
    edges = [0, 1, HUGE_S - 1, HUGE_S, 2**31 - 1, 2**31, 2**31 + 1, size - 2, size - 1]
    return np.unique(np.concatenate([np.arange(0, size, 4099), edges]))


def huge_stats(blocks):
    """Exact (mean, variance) of the whole tensor, which is one group."""
    count = 2 * HUGE_S
    mean = sum(tiled_sum(b, HUGE_S, lambda v: v) for b in blocks) / count
    var = sum(tiled_sum(b, HUGE_S, lambda v: (v - mean) ** 2) for b in blocks) / count
    return mean, var


@slow
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_huge_forward(huge, channels_last):
    x, blocks = huge
    mean_ref, var_ref = huge_stats(blocks)
    rstd_ref = 1 / np.sqrt(var_ref + 1e-5)
    data = huge_view(x, channels_last)
    y, mean, rstd = gncpu.group_norm(data, 1, channel_axis=-1 if channels_last else 1,
                                     return_stats=True)
    assert y.shape == data.shape and y.dtype == np.float16
    assert_stats_close(mean, rstd, np.array([[mean_ref]]), np.array([[rstd_ref]]), 2e-5)
    where = huge_samples(x.size)
    expected = (x.reshape(-1)[where].astype(np.float64) - mean_ref) * rstd_ref
    got = y.reshape(-1)[where].astype(np.float64)
    bad = np.flatnonzero(~(np.abs(got - expected) <= 2e-3 * np.maximum(np.abs(expected), 1)))
    assert bad.size == 0, f"y wrong at flat indices {where[bad[:5]]}: {got[bad[:5]]} " \
                          f"instead of {expected[bad[:5]]}"


@slow
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_huge_backward(huge, channels_last):
    """grad_out = x and ReLU: g = x where x > mean, else 0, which is not affine in x (so
    grad_x is not the 0 that a projection of x leaves)."""
    x, blocks = huge
    data = huge_view(x, channels_last)
    axis = -1 if channels_last else 1
    mean_ref, var_ref = huge_stats(blocks)
    mean = np.array([[mean_ref]], np.float32)
    rstd = np.array([[1 / np.sqrt(var_ref + 1e-5)]], np.float32)
    grad_x, grad_weight, grad_bias = gncpu.group_norm_backward(
        data, data, mean, rstd, 1, activation="relu", channel_axis=axis)
    m, r = float(mean[0, 0]), float(rstd[0, 0])
    db = [tiled_sum(b, HUGE_S, lambda v: np.where(v > m, v, 0)) for b in blocks]
    ds = [tiled_sum(b, HUGE_S, lambda v: np.where(v > m, v * (v - m), 0)) for b in blocks]
    if channels_last:  # the channels interleave: only their totals are known in O(PERIOD)
        assert abs(grad_bias.sum(dtype=np.float64) - sum(db)) <= 1e-4 * abs(sum(db))
        assert abs(grad_weight.sum(dtype=np.float64) - r * sum(ds)) <= 1e-4 * abs(r * sum(ds))
    else:
        np.testing.assert_allclose(grad_bias, db, rtol=1e-4)
        np.testing.assert_allclose(grad_weight, np.multiply(r, ds), rtol=1e-4)
    count = 2 * HUGE_S
    c1 = -r ** 3 * sum(ds) / count
    c0 = -r * sum(db) / count
    where = huge_samples(x.size)
    v = x.reshape(-1)[where].astype(np.float64)
    expected = r * np.where(v > m, v, 0) + c1 * (v - m) + c0
    got = grad_x.reshape(-1)[where].astype(np.float64)
    scale = np.max(np.abs(expected))
    bad = np.flatnonzero(~(np.abs(got - expected) <= 2e-3 * np.maximum(np.abs(expected), scale
                                                                         / 64)))
    assert bad.size == 0, f"grad_x wrong at flat indices {where[bad[:5]]}: {got[bad[:5]]} " \
                          f"instead of {expected[bad[:5]]}"
