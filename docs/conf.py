"""Sphinx configuration for injcert: theory pages from proofs/, API via autodoc, CLI from argparse.

Math is rendered offline: sphinx-mathjax-offline copies MathJax 3 into the build and points
``mathjax_path`` at it, so the built HTML references no CDN.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

project = "injcert"
author = "the injcert developers"
copyright = "2026, the injcert developers"

import injcert  # noqa: E402

release = injcert.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "_ext.cliref",
]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_dmath_double_inline = True
myst_heading_anchors = 3
math_number_all = True
math_eqref_format = "({number})"
numfig = True

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
suppress_warnings = ["myst.header"]

autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_custom_sections = [("Arguments", "params_style"), ("Raises", "raises_style")]

html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {"description": "certified injective diffusion", "fixed_sidebar": True}


# Theory pages are the proofs/ folder itself, included (not copied) so there is one source.
def _write_theory_stubs() -> None:
    out = Path(__file__).parent / "theory"
    out.mkdir(exist_ok=True)
    for page in sorted((ROOT / "proofs").glob("[0-9]*.md")):
        stub = out / page.name
        text = f"```{{include}} ../../proofs/{page.name}\n```\n"
        if not stub.exists() or stub.read_text() != text:
            stub.write_text(text)


_write_theory_stubs()
