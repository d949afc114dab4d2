"""Side-by-side benchmark: gncpu vs the NumPy reference, and vs PyTorch when importable.

Contenders run in one process, interleaved (each round times every contender once, in
turn), and the median of the rounds is reported, so that the drift of a shared machine
hits all of them alike. Run it as ``python -m gncpu bench``.
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

from . import _reference, build_info, group_norm, group_norm_backward

# (label, shape, num_groups): the workloads the performance goals are set on.
SUITE = [
    ("resnet50 stage 1", (1, 256, 56, 56), 32),
    ("resnet50 stage 2", (1, 512, 28, 28), 32),
    ("resnet50 stage 3", (1, 1024, 14, 14), 32),
    ("resnet50 stage 4", (1, 2048, 7, 7), 32),
    ("resnet50 batch 8", (8, 256, 56, 56), 32),
    ("sd unet 64x64", (1, 320, 64, 64), 32),
    ("sd unet 32x32", (2, 640, 32, 32), 32),
    ("sd unet 16x16", (1, 1280, 16, 16), 32),
    ("sd unet 8x8", (2, 1280, 8, 8), 32),
    ("small", (1, 64, 32, 32), 32),
    ("small G=8", (1, 32, 16, 16), 8),
    ("tiny G=8", (1, 32, 4, 4), 8),
    ("video", (1, 64, 8, 56, 56), 32),
    ("sequence", (4, 128, 1024), 32),
]
QUICK = ["resnet50 stage 1", "sd unet 16x16", "small G=8", "tiny G=8", "sequence"]
# The memory floor: a forward into a preallocated out= against np.copyto of the same array
# (each byte read once and written once).
FLOOR = ("memory floor", (16, 256, 64, 64), 32)


def cpu_name():
    """The CPU's model name, as the OS reports it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def contenders(shape, groups, dtype, op, threads, torch, with_reference, layout="nchw",
               activation=None):
    """{name: zero-argument callable} doing one forward or backward call each.

    layout "nhwc" hands gncpu the channels-last array (channel_axis=-1) and torch the same
    memory as a channels_last tensor; activation "silu"/"relu" fuses it in gncpu and runs
    torch's F.silu/F.relu (in place) after its group_norm, and in the backward torch's
    activation backward (on the group_norm output autograd would have kept), then its
    group_norm backward.
    """
    rng = np.random.default_rng(0)
    c = shape[1]
    last = layout == "nhwc"
    x = rng.standard_normal(shape).astype(dtype)
    if last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    weight = rng.standard_normal(c).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    axis = -1 if last else 1
    calls = {}
    if op == "floor":
        out = np.empty_like(x)
        calls["gncpu"] = lambda: group_norm(x, groups, weight, bias, out=out, num_threads=threads)
        calls["np.copyto"] = lambda: np.copyto(out, x)
        return calls
    if op == "forward":
        out = np.empty_like(x)
        calls["gncpu"] = lambda: group_norm(x, groups, weight, bias, out=out, channel_axis=axis,
                                            activation=activation, num_threads=threads)
        if with_reference and not last and activation is None:
            calls["numpy"] = lambda: _reference.group_norm(x, groups, weight, bias)
    else:
        dy = rng.standard_normal(x.shape).astype(dtype)
        _, mean, rstd = group_norm(x, groups, weight, bias, channel_axis=axis, return_stats=True)
        calls["gncpu"] = lambda: group_norm_backward(dy, x, mean, rstd, groups, weight, bias=bias,
                                                     activation=activation, channel_axis=axis,
                                                     num_threads=threads)
        if with_reference and not last and activation is None:
            calls["numpy"] = lambda: _reference.group_norm_backward(dy, x, mean, rstd, groups, weight)
    if torch is None:
        return calls
    tx, tw, tb = (torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)) if last else x),
                  torch.from_numpy(weight), torch.from_numpy(bias))
    layout = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    if last:
        tx = tx.contiguous(memory_format=layout)
    if op == "forward":
        fn = torch.nn.functional.group_norm
        act = {None: None, "silu": torch.nn.functional.silu,
               "relu": torch.nn.functional.relu}[activation]
        if act is None:
            calls["torch"] = lambda: fn(tx, groups, tw, tb, 1e-5)
        else:
            calls["torch"] = lambda: act(fn(tx, groups, tw, tb, 1e-5), inplace=True)
    else:
        tdy = torch.from_numpy(np.ascontiguousarray(np.moveaxis(dy, -1, 1)) if last else dy)
        if last:
            tdy = tdy.contiguous(memory_format=layout)
        tmean = torch.from_numpy(np.ascontiguousarray(mean, dtype=dtype))
        trstd = torch.from_numpy(np.ascontiguousarray(rstd, dtype=dtype))
        hxw = int(np.prod(shape[2:], dtype=np.int64))
        bwd = torch.ops.aten.native_group_norm_backward

        def gn_bwd(grad):
            return bwd(grad, tx, tmean, trstd, tw, shape[0], c, hxw, groups, [True, True, True])

        if activation is None:
            calls["torch"] = lambda: gn_bwd(tdy)
        else:
            pre = torch.nn.functional.group_norm(tx, groups, tw, tb, 1e-5)
            act_bwd = {"silu": torch.ops.aten.silu_backward,
                       "relu": lambda grad, p: torch.ops.aten.threshold_backward(grad, p, 0)}
            calls["torch"] = lambda: gn_bwd(act_bwd[activation](tdy, pre))
    return calls


def time_interleaved(calls, rounds, budget, settle=0.0):
    """Median seconds per call of each callable, interleaved over rounds.

    settle: seconds to sleep before each contender's batch. With several threads, two
    OpenMP runtimes in one process (torch bundles its own) each keep their workers
    spinning for a while after a parallel region; on a machine with few cores those
    spinners starve the other runtime's threads, so each batch starts after they idle.
    """
    loops = {}
    for name, fn in calls.items():
        fn()
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        loops[name] = max(1, int(budget / rounds / max(once, 1e-7) / len(calls)))
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            n = loops[name]
            if settle:
                time.sleep(settle)
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def geomean(values):
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def run(suite, dtype, ops, thread_counts, rounds, budget, with_reference, progress,
        layout="nchw", activation=None):
    torch = import_torch()
    rows = []
    total = sum(1 if op == "floor" else len(suite) for op in ops) * len(thread_counts)
    done = 0
    for op in ops:
        for threads in thread_counts:
            if torch is not None:
                torch.set_num_threads(threads)
            for label, shape, groups in ([FLOOR] if op == "floor" else suite):
                done += 1
                if progress:
                    print(f"\r[{done}/{total}] {op} {threads}T {label:20s}", end="",
                          file=sys.stderr, flush=True)
                calls = contenders(shape, groups, dtype, op, threads, torch, with_reference,
                                   layout, activation)
                times = time_interleaved(calls, rounds, budget,
                                         settle=0.005 if threads > 1 else 0.0)
                rows.append({"op": op, "threads": threads, "label": label, "shape": list(shape),
                             "groups": groups, "dtype": np.dtype(dtype).name, "layout": layout,
                             "activation": activation, "seconds": times})
    if progress:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    return rows


def format_table(rows):
    """Markdown tables, one per (op, threads), with ratios (other time / gncpu time)."""
    lines = []
    groups = {}
    for row in rows:
        groups.setdefault((row["op"], row["threads"]), []).append(row)
    for (op, threads), block in groups.items():
        others = [n for n in block[0]["seconds"] if n != "gncpu"]
        extras = "".join(f", {v}" for v in (block[0].get("layout"), block[0].get("activation"))
                         if v not in (None, "nchw"))
        lines.append(f"\n{op}, {block[0]['dtype']}{extras}, {threads} thread(s)")
        header = "| shape | G | gncpu us |" + "".join(f" {n} us | {n}/gncpu |" for n in others)
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        ratios = {n: [] for n in others}
        for row in block:
            t = row["seconds"]
            cells = f"| {tuple(row['shape'])} | {row['groups']} | {t['gncpu'] * 1e6:.1f} |"
            for n in others:
                ratio = t[n] / t["gncpu"]
                ratios[n].append(ratio)
                cells += f" {t[n] * 1e6:.1f} | {ratio:.2f}x |"
            lines.append(cells)
        summary = "| geomean | | |" + "".join(f" | {geomean(ratios[n]):.2f}x |" for n in others)
        lines.append(summary)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gncpu bench", description=__doc__)
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts (default: 1 and the OpenMP maximum)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16"])
    parser.add_argument("--layout", default="nchw", choices=["nchw", "nhwc"],
                        help="nhwc: channels-last arrays (4-D and 5-D shapes of the suite)")
    parser.add_argument("--activation", default=None, choices=["silu", "relu"],
                        help="fuse an activation (torch runs it in place after group_norm; "
                             "backward: its activation backward, then group_norm's)")
    parser.add_argument("--op", default="all", choices=["forward", "backward", "floor", "all"],
                        help="floor: forward with out= vs np.copyto on a large tensor")
    parser.add_argument("--quick", action="store_true", help="a few shapes, short timings")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the (slow) NumPy reference")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    info = build_info()
    if args.threads is None:
        thread_counts = sorted({1, info["max_threads"]})
    else:
        try:
            thread_counts = [int(t) for t in args.threads.split(",")]
        except ValueError:
            parser.error(f"--threads={args.threads!r}: expected integers like 1,2")
        if min(thread_counts) < 1:
            parser.error(f"--threads={args.threads!r}: thread counts must be at least 1")
    suite = [s for s in SUITE if s[0] in QUICK] if args.quick else SUITE
    if args.layout == "nhwc":
        suite = [s for s in suite if len(s[1]) in (4, 5)]
    if args.op != "all":
        ops = [args.op]
    else:
        ops = ["forward", "backward"] + ([] if args.quick else ["floor"])
    rounds, budget = (5, 0.05) if args.quick else (15, 0.3)
    torch = import_torch()
    print(f"gncpu {info['simd']}, OpenMP {'on' if info['openmp'] else 'off'}; "
          f"CPU: {cpu_name()} ({os.cpu_count()} logical cores); NumPy {np.__version__}"
          + (f"; torch {torch.__version__}" if torch else "; torch not installed"))
    print(f"median of {rounds} interleaved rounds; ratio > 1 means gncpu is faster")
    if args.layout != "nchw" or args.activation:
        ops = [op for op in ops if op != "floor"]
    rows = run(suite, np.dtype(args.dtype), ops, thread_counts, rounds, budget,
               not args.no_reference, not args.no_progress and sys.stderr.isatty(),
               args.layout, args.activation)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "build": info, "numpy": np.__version__,
                       "torch": torch.__version__ if torch else None, "rows": rows}, f, indent=1)
    return 0
