"""Figures and generated snippets for gncpu's documentation, made at build time.

``docs/conf.py`` calls :func:`generate` when Sphinx starts; everything lands in
``docs/generated/`` (git-ignored). Run it by hand with::

    python docs/figures.py                      # (re)make everything into docs/generated/
    python docs/figures.py --tables bench.json  # print reST tables of a bench --json file

What is drawn:

- ``axes_{bn,ln,in,gn}.png``, ``axes_all.png``: the (N, C, H*W) activation block with the
  cells that share one mean highlighted, for Batch, Layer, Instance and Group Norm.
- ``batch_independence.png``: one sample normalized alone and inside batches of 1..64 by
  gncpu (identical), beside Batch Norm's batch statistics drifting with the batch size.
- ``variance_error.png``: the relative error of the variance, E[x^2] - E[x]^2 against gncpu,
  as the data's offset grows; ``variance_example.inc``: one such case as a table.
- ``bench_chart.png`` and ``bench_chart.inc``: from ``python -m gncpu bench --json PATH``
  (``docs/bench.json``, or ``$GNCPU_BENCH_JSON``); without that file the ``.inc``
  holds a note instead of the chart. No number is ever made up.
- ``bench_help.txt``: the output of ``python -m gncpu bench --help``.

Every figure that shows a computed number computes it here, at build time, with gncpu
itself or with NumPy (for Batch Norm and the naive variance, which gncpu does not offer).
Matplotlib is imported only when drawing, so :func:`norm_sets` works without it.
"""
import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "generated")
DEFAULT_BENCH_JSON = os.path.join(HERE, "bench.json")

MODES = ("BN", "LN", "IN", "GN")
MODE_NAMES = {"BN": "Batch Norm", "LN": "Layer Norm", "IN": "Instance Norm", "GN": "Group Norm"}
HIGHLIGHT = "#e66100"
OTHER = "#d0d7de"
COLORS = {"gncpu": "#0969da", "torch": "#e66100", "numpy": "#8c959f"}


# ---------------------------------------------------------------------------------------
# Which cells share a mean


def norm_sets(mode, n, c, s, g=None):
    """Set index of every cell of an (n, c, s) activation block under a normalization.

    Cells with the same index share one mean and one variance. Sets are numbered as the
    interactive explainer steps through them: BN per channel; LN per sample; IN per
    (sample, channel); GN per (sample, group), ``g`` groups of ``c // g`` channels.

    >>> norm_sets("GN", 2, 4, 3, g=2)[1]
    array([[2, 2, 2],
           [2, 2, 2],
           [3, 3, 3],
           [3, 3, 3]])
    """
    sample = np.arange(n)[:, None, None]
    channel = np.arange(c)[None, :, None]
    if mode == "BN":
        ids = np.broadcast_to(channel, (n, c, s))
    else:
        groups = {"LN": 1, "IN": c}.get(mode, g)
        if mode not in MODES or not groups or c % groups:
            raise ValueError(f"mode={mode!r}, c={c}, g={g}: no such normalization")
        ids = np.broadcast_to(sample * groups + channel // (c // groups), (n, c, s))
    return np.array(ids)


def import_gncpu():
    """gncpu as installed, else as built in place in this checkout, else a clear error."""
    try:
        import gncpu
    except ImportError:
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        try:
            import gncpu
        except ImportError as exc:
            raise ImportError(
                "the docs need gncpu built: `pip install -e .` or "
                "`python setup.py build_ext --inplace` in " + ROOT) from exc
    return gncpu


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "font.size": 10,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _replace(path, write):
    """Write through a temporary file and rename it into place, so that a build running at
    the same time (the test suite builds the docs too) never reads a half-written file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _replace(path, write)


def _save(fig, path):
    _replace(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight",
                                           metadata={"Software": None}))
    import matplotlib.pyplot as plt
    plt.close(fig)


def _draw_block(ax, mode, n=4, c=6, s=5, g=3):
    """The (N, C, H*W) block as voxels, with the set of the front-right column highlighted
    (the last sample, channel 0: a cell on the faces the viewer sees)."""
    ids = norm_sets(mode, n, c, s, g)
    chosen = ids[n - 1, 0, 0]
    filled = np.ones((n, c, s), bool)
    face = np.where((ids == chosen)[..., None], np.array([0.90, 0.38, 0.0, 1.0]),
                    np.array([0.82, 0.85, 0.88, 0.25]))
    edge = np.where((ids == chosen)[..., None], np.array([0.35, 0.12, 0.0, 0.9]),
                    np.array([0.45, 0.5, 0.55, 0.35]))
    # x: N (left to right), y: C (front to back), z: H*W (up).
    ax.voxels(filled, facecolors=face, edgecolors=edge, linewidth=0.4)
    ax.set_box_aspect((n, c, s))
    ax.view_init(elev=22, azim=-62)
    ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
    ax.set_xlabel("N", labelpad=-12)
    ax.set_ylabel("C", labelpad=-12)
    ax.set_zlabel("H, W", labelpad=-12)
    ax.xaxis.pane.set_visible(False), ax.yaxis.pane.set_visible(False)
    ax.zaxis.pane.set_visible(False)
    ax.grid(False)
    count = int((ids == chosen).sum())
    sub = f"G = {g}: {c // g} channels per group" if mode == "GN" else {
        "BN": "one mean per channel", "LN": "one mean per sample",
        "IN": "one mean per (sample, channel)"}[mode]
    ax.set_title(f"{MODE_NAMES[mode]}\n{sub}\n{count} of {ids.size} cells share a mean",
                 fontsize=10)


def draw_axes(out):
    """axes_{bn,ln,in,gn}.png and axes_all.png."""
    plt = _plt()
    fig = plt.figure(figsize=(13, 3.6))
    for i, mode in enumerate(MODES):
        _draw_block(fig.add_subplot(1, 4, i + 1, projection="3d"), mode)
    fig.subplots_adjust(wspace=0.02)
    _save(fig, os.path.join(out, "axes_all.png"))
    for mode in MODES:
        fig = plt.figure(figsize=(3.6, 3.6))
        _draw_block(fig.add_subplot(projection="3d"), mode)
        _save(fig, os.path.join(out, f"axes_{mode.lower()}.png"))


# ---------------------------------------------------------------------------------------
# Batch independence, computed by gncpu


def batch_independence_data(batch_sizes=(1, 2, 4, 8, 16, 32, 64), draws=8, seed=0):
    """Normalize one sample alone and inside random batches, with gncpu and Batch Norm.

    Samples have their own per-channel offsets (as images differ in content), so the
    statistics of a batch depend on which samples are in it. Returns a dict of NumPy arrays.
    """
    gncpu = import_gncpu()

    rng = np.random.default_rng(seed)
    c, g, h, w = 32, 8, 8, 8

    def samples(k):
        offset = rng.standard_normal((k, c, 1, 1))
        scale = rng.uniform(0.5, 2.0, (k, c, 1, 1))
        return (offset + scale * rng.standard_normal((k, c, h, w))).astype(np.float32)

    x0 = samples(1)
    weight = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    alone = gncpu.group_norm(x0, g, weight, bias)

    # Batch Norm's "ideal" statistics: per channel over a very large population.
    population = np.concatenate([x0, samples(4095)])
    pop_mean = population.mean(axis=(0, 2, 3), dtype=np.float64)
    pop_var = population.var(axis=(0, 2, 3), dtype=np.float64)
    bn_ideal = (x0[0] - pop_mean[:, None, None]) / np.sqrt(pop_var[:, None, None] + 1e-5)

    gn_diff = np.zeros((len(batch_sizes), draws))
    bn_diff = np.zeros((len(batch_sizes), draws))
    bn_mean = np.zeros((len(batch_sizes), draws))
    bitwise = 0
    for i, b in enumerate(batch_sizes):
        for j in range(draws):
            others = population[rng.choice(np.arange(1, len(population)), b - 1, replace=False)]
            pos = int(rng.integers(0, b))
            batch = np.concatenate([others[:pos], x0, others[pos:]])
            y = gncpu.group_norm(batch, g, weight, bias)
            gn_diff[i, j] = np.max(np.abs(y[pos].astype(np.float64) - alone[0]))
            bitwise += y[pos].tobytes() == alone[0].tobytes()
            mean = batch.mean(axis=(0, 2, 3), dtype=np.float64)
            var = batch.var(axis=(0, 2, 3), dtype=np.float64)
            bn = (x0[0] - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
            bn_diff[i, j] = np.max(np.abs(bn - bn_ideal))
            bn_mean[i, j] = mean[0]
    return {"batch_sizes": np.array(batch_sizes), "gn_diff": gn_diff, "bn_diff": bn_diff,
            "bn_mean": bn_mean, "pop_mean": pop_mean[0], "bitwise": bitwise,
            "total": len(batch_sizes) * draws, "threads": gncpu.build_info()["max_threads"]}


def draw_batch_independence(out):
    plt = _plt()
    d = batch_independence_data()
    b = d["batch_sizes"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for j in range(d["bn_diff"].shape[1]):
        ax1.plot(b, d["bn_diff"][:, j], "o", color=COLORS["torch"], alpha=0.35, ms=4,
                 label="Batch Norm (batch statistics)" if j == 0 else None)
        ax1.plot(b, d["gn_diff"][:, j], "s", color=COLORS["gncpu"], ms=5,
                 label="gncpu.group_norm" if j == 0 else None)
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(b, [str(v) for v in b])
    ax1.set_xlabel("batch size the sample is normalized in")
    ax1.set_ylabel("max |change in the sample's output|")
    ax1.set_title("Same sample, different batches")
    ax1.annotate(f"Group Norm: exactly 0 - bitwise identical\nto the sample alone in "
                 f"{d['bitwise']} of {d['total']} batches", xy=(b[len(b) // 2], 0),
                 xytext=(b[1], 0.35 * max(d["bn_diff"].max(), 1e-9)),
                 arrowprops={"arrowstyle": "->", "color": COLORS["gncpu"]},
                 color=COLORS["gncpu"])
    ax1.legend(loc="upper right", frameon=False)
    for j in range(d["bn_mean"].shape[1]):
        ax2.plot(b, d["bn_mean"][:, j], "o", color=COLORS["torch"], alpha=0.45, ms=4)
    ax2.axhline(d["pop_mean"], color="k", lw=1, ls="--", label="population mean")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(b, [str(v) for v in b])
    ax2.set_xlabel("batch size")
    ax2.set_ylabel("Batch Norm's mean of channel 0")
    ax2.set_title("Batch Norm's statistics drift with the batch")
    ax2.legend(loc="upper right", frameon=False)
    fig.tight_layout()
    _save(fig, os.path.join(out, "batch_independence.png"))
    return d


# ---------------------------------------------------------------------------------------
# Numerics: the variance of offset data


def _exact_variance(x):
    """The variance of ``x`` to about 1e-16 relative: correctly rounded sums (math.fsum);
    x - mean is exact in float64 for data within a factor 2 of the mean (Sterbenz)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    mean = math.fsum(x) / x.size
    return math.fsum((x - mean) ** 2) / x.size


def variance_error_data(offsets=None, size=4096, seed=0):
    """Relative error of the variance of ``offset + N(0, 1)`` data, per method."""
    gncpu = import_gncpu()

    offsets = np.logspace(0, 8, 17) if offsets is None else np.asarray(offsets)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(size)
    rows = {"naive float32": [], "naive float64": [], "gncpu float32": [], "gncpu float64": []}
    for offset in offsets:
        for dtype, bits in ((np.float32, "32"), (np.float64, "64")):
            x = (offset + noise).astype(dtype)
            exact = _exact_variance(x)
            naive = float(np.mean(x * x) - np.mean(x) ** 2)  # E[x^2] - E[x]^2 in dtype
            _, _, rstd = gncpu.group_norm(x.reshape(1, 1, -1), 1, eps=0.0, return_stats=True)
            ours = 1.0 / float(rstd[0, 0]) ** 2
            for name, value in (("naive", naive), ("gncpu", ours)):
                err = abs(value - exact) / exact if exact > 0 else abs(value)
                rows[f"{name} float{bits}"].append(err)
    return offsets, {k: np.array(v) for k, v in rows.items()}


VARIANCE_EXAMPLE = """\
.. Generated by docs/figures.py when the pages were built: measured, not typed in.

.. list-table:: The variance of ``1e4 + N(0, 1)``, 4096 values in float32, measured when
   these pages were built
   :header-rows: 1

   * - method
     - variance
     - relative error
   * - exact (float64, correctly rounded sums)
     - {exact:.6g}
     -
   * - E[x²] − E[x]², float32 (NumPy)
     - {naive:.6g}
     - {naive_err:.2g}
   * - gncpu, float32 (``1 / rstd**2`` with ``eps=0``)
     - {ours:.6g}
     - {ours_err:.2g}
"""


def variance_example(seed=0):
    """The measured example of the numerics page: exact, naive and gncpu variances."""
    gncpu = import_gncpu()
    x = (1e4 + np.random.default_rng(seed).standard_normal((1, 1, 4096))).astype(np.float32)
    exact = _exact_variance(x)
    naive = float(np.mean(x * x) - np.mean(x) ** 2)
    _, _, rstd = gncpu.group_norm(x, 1, eps=0.0, return_stats=True)
    ours = 1.0 / float(rstd[0, 0]) ** 2
    return {"exact": exact, "naive": naive, "ours": ours,
            "naive_err": abs(naive - exact) / exact, "ours_err": abs(ours - exact) / exact}


def draw_variance_error(out):
    _write_if_changed(os.path.join(out, "variance_example.inc"),
                      VARIANCE_EXAMPLE.format(**variance_example()))
    plt = _plt()
    offsets, rows = variance_error_data()
    floor = 1e-17
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    styles = {"naive float32": ("o-", COLORS["torch"]), "naive float64": ("o--", "#a0522d"),
              "gncpu float32": ("s-", COLORS["gncpu"]), "gncpu float64": ("s--", "#54aeff")}
    for name, err in rows.items():
        fmt, color = styles[name]
        label = name.replace("naive", "E[x²] − E[x]²,")
        ax.loglog(offsets, np.clip(err, floor, 10), fmt, color=color, ms=4, label=label)
    ax.axhline(1, color="k", lw=0.8, ls=":")
    ax.text(offsets[0], 1.4, "100% error: the variance is garbage", fontsize=8)
    ax.set_xlabel("offset of the data (x = offset + N(0, 1), 4096 values)")
    ax.set_ylabel("relative error of the variance")
    ax.set_ylim(floor / 3, 30)
    ax.set_title("Variance: E[x²] − E[x]² against gncpu (shifted chunk moments + Chan)")
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    _save(fig, os.path.join(out, "variance_error.png"))
    return offsets, rows


# ---------------------------------------------------------------------------------------
# Benchmarks, from `python -m gncpu bench --json PATH`


def load_bench(path):
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{path}: not the output of `python -m gncpu bench --json`")
    return data


def _machine(data):
    build = data.get("build", {})
    parts = [data.get("cpu", "unknown CPU"), f"gncpu {build.get('simd', '?')}",
             f"OpenMP {'on' if build.get('openmp') else 'off'}",
             f"NumPy {data.get('numpy', '?')}"]
    if data.get("torch"):
        parts.append(f"torch {data['torch']}")
    return ", ".join(parts)


def draw_bench_chart(out, path):
    """bench_chart.png from ``path``; returns a one-line description of the machine."""
    plt = _plt()
    data = load_bench(path)
    rows_all = [r for r in data["rows"] if r["op"] in ("forward", "backward")]
    if not rows_all:
        raise ValueError(f"{path}: no forward or backward results to chart")
    blocks = {}
    for row in rows_all:
        blocks.setdefault((row["op"], row["threads"]), []).append(row)
    ops = [op for op in ("forward", "backward") if any(op == o for o, _ in blocks)]
    threads = sorted({t for _, t in blocks})
    labels = list(dict.fromkeys(r["label"] for r in rows_all))
    others = list(dict.fromkeys(name for r in rows_all for name in r["seconds"]
                                if name != "gncpu"))
    size = (4.8 * len(threads) + 1.5, 0.32 * len(labels) * len(ops) + 1.6)
    fig, axes = plt.subplots(len(ops), len(threads), squeeze=False, sharey=True, sharex=True,
                             figsize=size)
    height = 0.8 / max(1, len(others))
    for i, op in enumerate(ops):
        for j, t in enumerate(threads):
            ax = axes[i][j]
            rows = {r["label"]: r for r in blocks.get((op, t), [])}
            for k, name in enumerate(others):
                ratios = [rows[lab]["seconds"][name] / rows[lab]["seconds"]["gncpu"]
                          if lab in rows and name in rows[lab]["seconds"] else np.nan
                          for lab in labels]
                pos = np.arange(len(labels)) + (k - (len(others) - 1) / 2) * height
                ratios = np.array(ratios)
                # Bars grow from 1 (same speed): right where gncpu is faster, left where slower.
                ax.barh(pos, ratios - 1, left=1, height=height, color=COLORS.get(name),
                        label=f"{name} time / gncpu time")
                for y, r in zip(pos, ratios):
                    if np.isfinite(r):
                        ax.text(r, y, f" {r:.0f}x " if r >= 10 else f" {r:.2g}x ", fontsize=6,
                                va="center", ha="left" if r >= 1 else "right")
            ax.axvline(1, color="k", lw=0.8)
            ax.set_xscale("log")
            ax.set_title(f"{op}, {t} thread{'s' if t > 1 else ''}", fontsize=10)
    ylabels = []
    for lab in labels:
        row = next(r for r in rows_all if r["label"] == lab)
        ylabels.append(f"{lab} {tuple(row['shape'])} G={row['groups']}")
    for i in range(len(ops)):
        axes[i][0].set_yticks(np.arange(len(labels)), ylabels, fontsize=8)
    axes[0][0].invert_yaxis()  # shared: the first workload on top in every panel
    for ax in axes[-1]:
        ax.set_xlabel("other / gncpu  (> 1: gncpu faster)")
    fig.suptitle(_machine(data), fontsize=9, y=0.995)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", frameon=False,
               fontsize=8, ncol=len(others), bbox_to_anchor=(0.5, 0.965))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    _save(fig, os.path.join(out, "bench_chart.png"))
    return _machine(data)


def memory_floor(data):
    """'gncpu forward takes 1.3x the time of np.copyto (16 threads)'-style sentences from
    the `floor` rows of a bench JSON: Group Norm against a plain copy of the same array."""
    notes = []
    for r in data["rows"]:
        t = r["seconds"]
        if r["op"] == "floor" and "gncpu" in t and "np.copyto" in t:
            notes.append(f"{t['gncpu'] / t['np.copyto']:.2f}x on {r['threads']} "
                         f"thread{'s' if r['threads'] > 1 else ''}")
    if not notes:
        return ""
    shape = next(tuple(r["shape"]) for r in data["rows"] if r["op"] == "floor")
    return (f" Memory floor, the time of a forward pass on {shape} into ``out=`` divided by "
            f"that of ``np.copyto`` of the same array (one read, one write): "
            + ", ".join(notes) + ".")


def bench_tables(path):
    """reST list-tables of a bench JSON file, one per (op, threads): for benchmarks.inc."""
    data = load_bench(path)
    lines = [f".. Measured on: {_machine(data)}", ""]
    blocks = {}
    for row in data["rows"]:
        blocks.setdefault((row["op"], row["threads"]), []).append(row)
    for (op, threads), rows in blocks.items():
        others = [n for n in rows[0]["seconds"] if n != "gncpu"]
        lines += [f".. list-table:: {op}, {rows[0]['dtype']}, {threads} thread(s); "
                  "times in microseconds (median)", "   :header-rows: 1", "",
                  "   * - workload", "     - shape, G", "     - gncpu"]
        lines += [f"     - {n} (x gncpu)" for n in others]
        for r in rows:
            t = r["seconds"]
            lines += [f"   * - {r['label']}", f"     - {tuple(r['shape'])}, {r['groups']}",
                      f"     - {t['gncpu'] * 1e6:.1f}"]
            lines += [f"     - {t[n] * 1e6:.1f} ({t[n] / t['gncpu']:.2f}x)" for n in others]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Orchestration


def _write_if_changed(path, text):
    """Write only when the content changes, so Sphinx does not re-read the pages."""
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    _write_text(path, text)


def _fingerprint(*paths):
    """Hash of this script and the given files' sizes and times: redraw when one changes."""
    h = hashlib.sha256()
    with open(__file__, "rb") as f:
        h.update(f.read())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{p}:missing".encode())
    return h.hexdigest()


def _cached(out, name, files, key, make, log):
    """Run ``make`` unless every file exists and the stored key matches."""
    stamp = os.path.join(out, f".{name}.stamp")
    try:
        with open(stamp) as f:
            fresh = f.read() == key and all(os.path.exists(os.path.join(out, x)) for x in files)
    except OSError:
        fresh = False
    if fresh:
        return
    start = time.perf_counter()
    make()
    _write_text(stamp, key)
    log(f"gncpu docs: made {', '.join(files)} in {time.perf_counter() - start:.1f} s")


def _kernel_files():
    gncpu = import_gncpu()
    folder = os.path.dirname(gncpu.__file__)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.startswith("_kernels") and f.endswith((".so", ".pyd")))


BENCH_NOTE = """\
.. note::

   No benchmark results were found when these pages were built (looked for
   ``{path}``), so the chart is left out. Make them and rebuild::

      python -m gncpu bench --json docs/bench.json
      python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

BENCH_FIGURE = """\
.. figure:: /generated/bench_chart.png
   :alt: Bar chart of how many times longer NumPy and PyTorch take than gncpu, per workload,
         forward and backward, one panel per thread count.
   :width: 100%

   Time of each contender divided by gncpu's time (log scale; right of the line: gncpu is
   faster). Measured by ``python -m gncpu bench --json`` on {machine}.{floor}
"""


def generate(out=OUT, bench_json=None, log=print):
    """Make every figure and snippet into ``out``; reuse the ones whose inputs are unchanged."""
    os.makedirs(out, exist_ok=True)
    bench_json = bench_json or os.environ.get("GNCPU_BENCH_JSON") or DEFAULT_BENCH_JSON
    kernels = _kernel_files()
    _cached(out, "axes", [f"axes_{m.lower()}.png" for m in MODES] + ["axes_all.png"],
            _fingerprint(), lambda: draw_axes(out), log)
    _cached(out, "batch", ["batch_independence.png"], _fingerprint(*kernels),
            lambda: draw_batch_independence(out), log)
    _cached(out, "variance", ["variance_error.png", "variance_example.inc"], _fingerprint(*kernels),
            lambda: draw_variance_error(out), log)

    def bench_help():
        from gncpu.bench import main as bench
        buffer, columns = io.StringIO(), os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal; make it fixed
        try:
            with contextlib.redirect_stdout(buffer):
                bench(["--help"])
        except SystemExit:
            pass
        finally:
            if columns is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = columns
        _write_if_changed(os.path.join(out, "bench_help.txt"), buffer.getvalue())

    gncpu = import_gncpu()
    bench_py = os.path.join(os.path.dirname(gncpu.__file__), "bench.py")
    _cached(out, "help", ["bench_help.txt"], _fingerprint(bench_py), bench_help, log)

    if os.path.exists(bench_json):
        def chart():
            try:
                machine = draw_bench_chart(out, bench_json)
            except (ValueError, KeyError) as exc:  # not a usable bench file: say so, no chart
                log(f"gncpu docs: no chart from {bench_json}: {exc!r}")
                shown = os.path.relpath(bench_json, os.path.dirname(HERE))
                _write_if_changed(os.path.join(out, "bench_chart.inc"),
                                  BENCH_NOTE.format(path=shown).replace(
                                      "No benchmark results were found",
                                      "No forward/backward benchmark results were usable"))
                return
            floor = memory_floor(load_bench(bench_json))
            _write_if_changed(os.path.join(out, "bench_chart.inc"),
                              BENCH_FIGURE.format(machine=machine, floor=floor))
        _cached(out, "bench", ["bench_chart.png", "bench_chart.inc"],
                _fingerprint(bench_json), chart, log)
    else:
        log(f"gncpu docs: no {bench_json}; the performance page shows a note, not a chart")
        shown = os.path.relpath(bench_json, os.path.dirname(HERE))
        _write_if_changed(os.path.join(out, "bench_chart.inc"), BENCH_NOTE.format(path=shown))
        for stale in ("bench_chart.png", ".bench.stamp"):
            try:
                os.remove(os.path.join(out, stale))
            except FileNotFoundError:
                pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=OUT, help="output folder (default: docs/generated)")
    parser.add_argument("--bench-json", default=None, help="bench --json file for the chart")
    parser.add_argument("--tables", metavar="JSON",
                        help="print reST tables of a bench --json file (for benchmarks.inc)")
    args = parser.parse_args(argv)
    if args.tables:
        print(bench_tables(args.tables))
        return 0
    generate(args.out, args.bench_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
