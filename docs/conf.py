"""Sphinx configuration for gncpu's documentation.

Build (from the repository root, with gncpu built and docs/requirements.txt installed)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W -b doctest docs docs/_build/doctest

Figures are drawn at build time by docs/figures.py into docs/generated/ (git-ignored).
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # for figures.py

import figures  # noqa: E402
from docutils import nodes  # noqa: E402
from sphinx.directives.code import container_wrapper  # noqa: E402
from sphinx.util.docutils import SphinxDirective  # noqa: E402

gncpu = figures.import_gncpu()  # installed, or built in place in this checkout

project = "gncpu"
author = "gncpu developers"
copyright = "gncpu developers"
version = release = gncpu.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
]

exclude_patterns = ["_build", "generated", "Thumbs.db", ".DS_Store"]
templates_path = []
nitpicky = False
default_role = "literal"  # `x` is code, as in the docstrings

# -- autodoc / numpydoc -------------------------------------------------------------------
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- doctest --------------------------------------------------------------------------------
# The examples in pages and docstrings run as doctests: `python -m sphinx -b doctest ...`.
doctest_global_setup = """
import numpy as np
import gncpu
from gncpu import _reference
try:
    import torch
except ImportError:
    torch = None
"""
doctest_test_doctest_blocks = "default"

# -- HTML -----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"gncpu {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"**": []}  # no left sidebar: the pages are few, the top bar lists them


# Shapes in the docstrings read like Python, "(N, C, *spatial)"; in reST a lone "*" starts
# emphasis and the build warns. Escape a "*" that starts a name closed by ")" or ",", outside
# ``literals``, before numpydoc parses the docstring (priority below numpydoc's 500).
_STAR = re.compile(r"(?<=[\s(,\[])\*(?=\w+[),\]])")
_LITERAL = re.compile(r"(``.+?``)")


def _escape_star_args(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        parts = _LITERAL.split(line)
        lines[i] = "".join(p if p.startswith("``") else _STAR.sub(r"\\*", p) for p in parts)


class CythonFunction(SphinxDirective):
    """``.. cython-function:: ../gncpu/_kernels.pxi pair_terms``: show one top-level
    ``cdef``/``def`` function of a Cython file, found by name, from its first line to the
    next top-level statement. Unlike ``literalinclude`` with line numbers or text markers, it
    survives edits around and inside the function; a rename fails the build, by name."""

    required_arguments = 2
    has_content = False

    def run(self):
        relative, name = self.arguments
        path = os.path.normpath(os.path.join(os.path.dirname(self.env.doc2path(self.env.docname)),
                                             relative))
        self.env.note_dependency(path)
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        start = re.compile(rf"^(cp?def|def)\b[^(]*\b{re.escape(name)}\(")
        first = next((i for i, line in enumerate(lines) if start.match(line)), None)
        if first is None:
            raise self.error(f"cython-function: no top-level function {name!r} in {relative}")
        last = first + 1
        while last < len(lines) and (not lines[last].strip() or lines[last][0] in " \t"):
            last += 1
        while not lines[last - 1].strip():
            last -= 1
        text = "\n".join(lines[first:last])
        node = nodes.literal_block(text, text, language="cython")
        self.set_source_info(node)
        return [container_wrapper(self, node, f"{relative.lstrip('./')}: ``{name}``")]


def _generate_figures(app):
    """Draw the figures before any page is read (their images must exist by then)."""
    from sphinx.util import logging
    figures.generate(os.path.join(app.srcdir, "generated"),
                     log=logging.getLogger("gncpu.docs").info)


def setup(app):
    app.connect("builder-inited", _generate_figures)
    app.connect("autodoc-process-docstring", _escape_star_args, priority=400)
    app.add_directive("cython-function", CythonFunction)
