"""A tiny Sphinx extension: ``.. cliref::`` renders the argparse parser of ``python -m injcert``.

The reference is generated from :func:`injcert.cli.build_parser` at build time, so it cannot
drift from the code.
"""

from __future__ import annotations

import argparse

from docutils import nodes
from docutils.parsers.rst import Directive


def _help_text(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    pages = [("python -m injcert", parser.format_help())]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                pages.append((f"python -m injcert {name}", sub.format_help()))
    return pages


class CliRef(Directive):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from injcert.cli import build_parser

        out: list[nodes.Node] = []
        for title, text in _help_text(build_parser()):
            section = nodes.section(ids=[nodes.make_id(title)])
            section += nodes.title(text=title)
            section += nodes.literal_block(text, text)
            out.append(section)
        return out


def setup(app):
    app.add_directive("cliref", CliRef)
    return {"parallel_read_safe": True, "version": "1"}
