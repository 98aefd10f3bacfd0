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
# Generated Markdown that is included into docs/benchmarks/index.md (not a page of its own).
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "benchmarks/compare/*.md"]
suppress_warnings = ["myst.header"]

autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
# "Arguments" and "Raises" are napoleon built-ins ("raises_style" is no napoleon style: it would
# turn Raises into a generic section).
napoleon_custom_sections = [("Arguments", "params_style")]

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


# Docstrings write math as $...$ and $$...$$ (Markdown style, as in the proofs); autodoc reads
# them as reStructuredText, where "$" means nothing and "|x|" is a substitution. Rewrite the math
# into :math: roles and math blocks before napoleon and docutils see it.
import re  # noqa: E402

_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$])\$(?!\$)((?:[^$\n]|\n(?![ \t]*\n))+?)(?<!\\)\$(?!\$)")  # within a paragraph


def _math_to_rst(app, what, name, obj, options, lines) -> None:
    text = "\n".join(lines)
    if "$" not in text:
        return

    def display(m: "re.Match[str]") -> str:
        start = text.rfind("\n", 0, m.start()) + 1
        indent = re.match(r"[ \t]*", text[start:]).group(0)
        body = " ".join(part.strip() for part in m.group(1).strip().splitlines())
        return f"\n\n{indent}.. math::\n\n{indent}   {body}\n\n{indent}"

    text = _DISPLAY.sub(display, text)
    text = _INLINE.sub(lambda m: "\\ :math:`" + " ".join(m.group(1).replace("`", "'").split()) + "`\\ ", text)
    lines[:] = text.split("\n")


# The bundled MathJax 3 (sphinx-mathjax-offline) still *names* CDN addresses as remote fallbacks:
# speech-rule-engine's mathmaps URL (only fetched by the optional speech explorer, whose maps ship
# in _static/mathjax/sre/) and latest.js, a loader that fetches "the latest MathJax" from a CDN and
# that no page uses (nor the AsciiMath input, whose loader keeps a "cdnFileVersions" table: the
# pages use TeX input). Delete those two and point the fallback URLs at the local copy, so the built
# site neither loads nor names any CDN (`make docs` greps for them).
_CDN_FALLBACKS = (
    ("https://cdn.jsdelivr.net/npm/sre-mathmaps-ie@", "./sre/mathmaps-ie@"),
    ("https://cdn.jsdelivr.net/npm/speech-rule-engine@", "./sre/speech-rule-engine@"),
    ("https://cdn.jsdelivr.net/npm/wicked-good-xpath@", "./sre/wicked-good-xpath@"),
)


def _strip_cdn_fallbacks(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    root = Path(app.outdir) / "_static" / "mathjax"
    if not root.is_dir():
        return
    (root / "latest.js").unlink(missing_ok=True)
    (root / "input" / "asciimath.js").unlink(missing_ok=True)
    for path in root.rglob("*.js"):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        new = text
        for old, local in _CDN_FALLBACKS:
            new = new.replace(old, local)
        if new != text:
            path.write_text(new, encoding="utf-8", errors="surrogateescape")


def setup(app):
    app.connect("autodoc-process-docstring", _math_to_rst, priority=400)
    app.connect("build-finished", _strip_cdn_fallbacks)
