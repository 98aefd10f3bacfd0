"""Thin argparse front end: ``python -m injcert <command> ...``.

Every sub-command lives in the module that implements it and registers its arguments here;
this file only wires them together and turns injcert's own errors into one line on stderr and
exit status 2 (no traceback), as the design requires for unusable input.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from . import __version__

__all__ = ["main", "build_parser"]

# (name, help, module, add-arguments function, run function)
_COMMANDS: list[tuple[str, str, str, str, str]] = [
    ("train", "train a conditional score network on the bundled images", "injcert.tasks.train", "add_train_arguments", "run_train"),
    ("certify", "certify a checkpoint: Lipschitz bounds, injectivity, stability, log-determinants", "injcert.certify.command", "add_arguments", "run"),
    ("invert", "encode an image to its latent (image -> noise), exactly invertible", "injcert.tasks.commands", "add_invert_arguments", "run_invert"),
    ("decode", "decode a latent back to an image (noise -> image)", "injcert.tasks.commands", "add_decode_arguments", "run_decode"),
    ("reconstruct", "corrupt an image (or read a corrupted one) and reconstruct it", "injcert.tasks.commands", "add_reconstruct_arguments", "run_reconstruct"),
    ("edit", "edit an image inside a mask, leaving every pixel outside it identical", "injcert.tasks.commands", "add_edit_arguments", "run_edit"),
    ("demo", "run the whole pipeline on the bundled images and write a report folder", "injcert.tasks.demo", "add_arguments", "run"),
    ("bench", "side-by-side comparison against the baselines (Markdown table and figures)", "injcert.tasks.compare", "add_arguments", "run"),
]


def _available() -> list[tuple[str, str, Callable, Callable]]:
    """Every sub-command with its argument and run functions (imported here, so a broken module
    fails loudly instead of silently disappearing from ``--help``)."""
    import importlib

    found = []
    for name, help_, module, add, run in _COMMANDS:
        mod = importlib.import_module(module)
        found.append((name, help_, getattr(mod, add), getattr(mod, run)))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m injcert",
        description="Injective Neural-ODE conditional diffusion: exact inversion, reconstruction, "
        "localized editing and certified bounds.",
    )
    parser.add_argument("--version", action="version", version=f"injcert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_, add, run in _available():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import InjcertError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (InjcertError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"injcert {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"injcert {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
