"""Tests of the documentation: the interactive explainer, the figure script, the Sphinx build.

- The explainer (docs/_static/explainer.html) is opened in headless Chromium with
  ``?selftest=1``: the page clicks through its own controls (mode buttons, G selector, Step,
  Play) and writes what it highlighted into ``<pre id="selftest-result">``, which
  ``--dump-dom`` returns. Without Chromium these tests skip and say how to get it (Debian:
  ``apt-get install -y chromium``; or set ``GNCPU_CHROMIUM`` to a Chrome/Chromium binary).
- The sets the pictures highlight (``docs/figures.py: norm_sets``) are checked against the
  statistics gncpu computes, and against the explainer.
- When the documentation's requirements are installed (docs/requirements.txt), the site is
  built with warnings as errors and every example in it runs as a doctest.
"""
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gncpu

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXPLAINER = DOCS / "_static" / "explainer.html"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
            "chrome", "headless_shell")


def load_figures():
    """docs/figures.py as a module (it needs only NumPy until it draws)."""
    spec = importlib.util.spec_from_file_location("gncpu_docs_figures", DOCS / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_chromium():
    path = os.environ.get("GNCPU_CHROMIUM")
    if path:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.fail(f"GNCPU_CHROMIUM={path!r} is not an executable file")
        return path
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium not found (looked for " + ", ".join(BROWSERS) + " on PATH);"
                " install Debian's chromium (`apt-get install -y chromium`) or set "
                "GNCPU_CHROMIUM=/path/to/chromium to run the explainer tests")


@pytest.fixture(scope="module")
def chromium():
    return find_chromium()


def run_selftest(chromium, tmp_path, **params):
    """Open the explainer with ?selftest=1 and the given parameters; return its report."""
    query = "&".join(["selftest=1", "speed=100"] + [f"{k}={v}" for k, v in params.items()])
    url = EXPLAINER.as_uri() + "?" + query
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-extensions", "--disable-background-networking",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
               "--dump-dom", url]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.findall(r'<pre id="selftest-result"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    assert found and found[-1].strip(), (
        f"no self-test result in the page (exit status {proc.returncode}); "
        f"stderr tail: {proc.stderr[-2000:]}")
    report = json.loads(html.unescape(found[-1]))
    assert "exception" not in report, report["exception"]
    return report


def divisors(c):
    return [d for d in range(1, c + 1) if c % d == 0]


# (n, c, h, w, g): the default view, several groups per sample, the accidental Instance Norm
# (G = C), odd sizes, a single cell.
CONFIGS = [(2, 6, 3, 3, 3), (3, 8, 2, 2, 4), (1, 4, 4, 4, 4), (4, 12, 2, 3, 6), (1, 1, 1, 1, 1)]


@pytest.mark.parametrize("config", CONFIGS, ids=["x".join(map(str, c)) for c in CONFIGS])
def test_explainer_highlights_each_normalization_set(chromium, tmp_path, config):
    n, c, h, w, g = config
    report = run_selftest(chromium, tmp_path, n=n, c=c, h=h, w=w, g=g)
    s = h * w
    assert report["errors"] == []
    assert report["config"] == {"n": n, "c": c, "h": h, "w": w, "g": g, "cells": n * c * s}
    assert report["groupOptions"] == divisors(c), "the G selector must offer the divisors of C"

    expected = {"BN": (c, n * s), "LN": (n, c * s), "IN": (n * c, s), "GN": (n * g, c // g * s)}
    figures = load_figures()
    for mode, (sets, cells) in expected.items():
        got = report["modes"][mode]
        assert got["pressed"] == mode
        assert got["groupsDisabled"] == (mode != "GN"), "G applies to Group Norm only"
        assert got["sets"] == sets, f"{mode}: {got['sets']} sets, expected {sets}"
        assert got["counts"] == [cells] * sets, f"{mode}: highlighted {got['counts']}"
        # Stepping visits every cell exactly once, then starts over.
        assert got["covered"] == n * c * s and not got["overlap"] and got["wraps"]
        # The static figures draw the same sets.
        ids = figures.norm_sets(mode, n, c, s, g)
        assert np.bincount(ids.ravel()).tolist() == got["counts"]

    for g_option in divisors(c):
        got = report["gn"][str(g_option)]
        assert got["sets"] == n * g_option
        assert got["counts"] == [c // g_option * s] * (n * g_option)
        assert got["covered"] == n * c * s and not got["overlap"]
    # G = 1 is Layer Norm and G = C is Instance Norm, cell for cell.
    assert report["gn"]["1"]["counts"] == report["modes"]["LN"]["counts"]
    assert report["gn"][str(c)]["counts"] == report["modes"]["IN"]["counts"]

    # Play (with G = C) shows a set at the click and one more per tick (3 ticks here), and
    # stops by itself at the last set (at once when there is only one); Pause freezes it.
    play = report["play"]
    assert play["g"] == c
    assert play["started"] == (n * c > 1)
    assert play["index"] == min(4, n * c)
    assert play["running"] == (n * c > 4)
    assert play["paused"] and play["indexAfterPause"] == play["index"]
    assert play["highlighted"] == s


def test_explainer_is_self_contained():
    """No network: nothing loaded from elsewhere, no requests made from script."""
    text = EXPLAINER.read_text(encoding="utf-8")
    for pattern in (r"<script[^>]+src=", r"<link\b", r"<img\b", r"<iframe\b", r"@import",
                    r"url\(", r"\bfetch\(", r"XMLHttpRequest", r"WebSocket", r"\bimport\(",
                    r"https?://"):
        assert not re.search(pattern, text, re.I), f"explainer.html contains {pattern!r}"


@pytest.mark.parametrize("mode", ["LN", "IN", "GN"])
def test_figure_sets_are_the_ones_gncpu_averages(mode):
    """The highlighted cells of the pictures are exactly the cells behind gncpu's mean."""
    figures = load_figures()
    n, c, s, g = 3, 8, 5, 4
    x = np.random.default_rng(0).standard_normal((n, c, s))
    groups = {"LN": 1, "IN": c, "GN": g}[mode]
    _, mean, _ = gncpu.group_norm(x, groups, return_stats=True)
    ids = figures.norm_sets(mode, n, c, s, g).ravel()
    by_set = np.bincount(ids, weights=x.ravel()) / np.bincount(ids)
    np.testing.assert_allclose(mean.ravel(), by_set, rtol=1e-12, atol=1e-14)


def test_figure_sets_batch_norm():
    figures = load_figures()
    n, c, s = 3, 4, 5
    x = np.random.default_rng(1).standard_normal((n, c, s))
    ids = figures.norm_sets("BN", n, c, s).ravel()
    by_set = np.bincount(ids, weights=x.ravel()) / np.bincount(ids)
    np.testing.assert_allclose(by_set, x.mean(axis=(0, 2)), rtol=1e-12)
    with pytest.raises(ValueError):
        figures.norm_sets("GN", n, c, s, 3)


def test_bench_chart_reads_bench_json(tmp_path):
    """The performance chart and tables are made from a real `bench --json` file."""
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib "
                        "(pip install -r docs/requirements.txt)")
    from gncpu.bench import main as bench
    path = tmp_path / "bench.json"
    assert bench(["--quick", "--threads", "1", "--op", "forward", "--no-reference",
                  "--no-progress", "--json", str(path)]) == 0
    figures = load_figures()
    machine = figures.draw_bench_chart(str(tmp_path), str(path))
    assert (tmp_path / "bench_chart.png").stat().st_size > 0
    assert "gncpu" in machine
    tables = figures.bench_tables(str(path))
    assert ".. list-table:: forward" in tables


def docs_requirements_missing():
    for module in ("sphinx", "numpydoc", "pydata_sphinx_theme", "matplotlib"):
        if importlib.util.find_spec(module) is None:
            return module
    return None


@pytest.mark.skipif(docs_requirements_missing() is not None,
                    reason=f"docs requirements not installed ({docs_requirements_missing()} "
                    "missing): pip install -r docs/requirements.txt")
@pytest.mark.parametrize("builder", ["html", "doctest"])
def test_docs_build(tmp_path, builder):
    """The site builds with warnings as errors; with `doctest`, every example runs."""
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder,
               str(DOCS), str(tmp_path / builder)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-4000:] + "\n" + proc.stderr[-4000:])
    if builder == "html":
        assert (tmp_path / "html" / "_static" / "explainer.html").exists()
