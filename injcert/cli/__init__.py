"""The command line: ``python -m injcert <command> ...`` (the ``injcert`` script).

This package holds the command line and its applications; the library operations they call stay
in the package (:mod:`injcert.tasks`, :mod:`injcert.certify`, ...):

* :mod:`injcert.cli.commands`: ``invert``, ``decode``, ``reconstruct``, ``edit``;
* :mod:`injcert.cli.demo`: ``demo``, the whole pipeline on the bundled images;
* :mod:`injcert.cli.compare`: ``bench``, the comparison against the baselines;
* :mod:`injcert.cli.train`: ``train`` (the loop is :mod:`injcert.tasks.train`);
* ``certify`` (:mod:`injcert.certify.command`) registers its arguments from its own module.

This module wires them together and enforces the command-line contract in one place:

* exit 0: done; exit 1: only ``certify``'s "a property fails";
* exit 2 with exactly one line on stderr (no traceback) for every unusable input or environment
  error: injcert's own errors (:class:`~injcert.errors.InjcertError`: bad files, options, limits,
  devices, non-finite data, refused output paths), any ``OSError`` (read-only folder, full disk,
  a parent that is a file, a name too long) and running out of memory; an argument error is one
  line too. ``--debug`` (or ``INJCERT_DEBUG=1``) adds the traceback;
* any other exception is a bug and keeps its traceback;
* before a command runs, the options every command shares are checked (:func:`_preflight`): the
  device, step counts and sample counts against :mod:`injcert.limits` (``--limit NAME=VALUE``
  raises one), and every output path (:func:`injcert.io.check_output_path`: no symlink, device
  node, fifo or directory, not one of the command's inputs, a writable folder, an image suffix
  for images) — so nothing is computed for an output that cannot be written.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from .. import __version__
from ..errors import ConfigError, InjcertError

__all__ = ["main", "build_parser", "HelpFormatter", "add_threads_argument", "run_script"]

# (name, help, module, add-arguments function, run function)
_COMMANDS: list[tuple[str, str, str, str, str]] = [
    ("train", "train a conditional score network on the bundled images", "injcert.cli.train", "add_train_arguments", "run_train"),
    ("certify", "certify a checkpoint: Lipschitz bounds, injectivity, stability, log-determinants", "injcert.certify.command", "add_arguments", "run"),
    ("invert", "encode an image to its latent (image -> noise), exactly invertible", "injcert.cli.commands", "add_invert_arguments", "run_invert"),
    ("decode", "decode a latent back to an image (noise -> image)", "injcert.cli.commands", "add_decode_arguments", "run_decode"),
    ("reconstruct", "corrupt an image (or read a corrupted one) and reconstruct it", "injcert.cli.commands", "add_reconstruct_arguments", "run_reconstruct"),
    ("edit", "edit an image inside a mask, leaving every pixel outside it identical", "injcert.cli.commands", "add_edit_arguments", "run_edit"),
    ("demo", "run the whole pipeline on the bundled images and write a report folder", "injcert.cli.demo", "add_arguments", "run"),
    ("bench", "side-by-side comparison against the baselines (Markdown table and figures)", "injcert.cli.compare", "add_arguments", "run"),
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


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default: appends ``(default: X)`` unless the help already states one
    (``default`` in its text) or there is nothing to show (a flag, ``None``, a positional)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings or action.default is None
                or action.default is False or action.default is argparse.SUPPRESS):
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {default})"


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads N``, common to every command (applied by :func:`main` before the command runs)."""
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: $OMP_NUM_THREADS if set, else min(CPUs, 4); "
                        "fewer threads degrade gracefully on a shared machine)")


class _Parser(argparse.ArgumentParser):
    """An argument error is one line on stderr and exit status 2 (the usage is in ``--help``)."""
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def add_contract_arguments(p: argparse.ArgumentParser) -> None:
    """``--debug`` and ``--limit NAME=VALUE``, common to every command (see :func:`main`)."""
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, show the traceback too (also: INJCERT_DEBUG=1)")
    p.add_argument("--limit", action="append", default=argparse.SUPPRESS, metavar="NAME=VALUE",
                   help="raise (or lower) a resource limit for this run: pixels, params, steps, samples, "
                        "batch_size (defaults and INJCERT_MAX_* variables: injcert/limits.py)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m injcert",
        description="Injective Neural-ODE conditional diffusion: exact inversion, reconstruction, "
        "localized editing and certified bounds.",
    )
    parser.add_argument("--version", action="version", version=f"injcert {__version__}")
    add_contract_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_, add, run in _available():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        add(p)
        if not any("--threads" in a.option_strings for a in p._actions):
            add_threads_argument(p)
        add_contract_arguments(p)
        p.set_defaults(_run=run)
    return parser


# ------------------------------------------------------------------------------------------ the contract
# What every command reads and writes, by argparse ``dest``: checked here, before a command runs, so
# that a bad output path or option fails at once and nothing is written before the inputs are valid.
_INPUTS = ("checkpoint", "image", "latent", "mask", "target", "compare", "model", "config", "resume")
_FILE_OUTPUTS = ("out", "json", "markdown", "figure", "corrupted_out", "log")
_DIR_OUTPUTS = {"certify": ("figures",), "demo": ("out",), "bench": ("out",)}
_IMAGE_OUTPUTS = {"decode": ("out",), "reconstruct": ("out", "corrupted_out", "figure"),
                  "edit": ("out", "figure"), "invert": ("figure",)}
_STEP_OPTIONS = {"certify": ("steps",), "invert": ("steps",), "reconstruct": ("steps",), "edit": ("steps",),
                 "demo": ("steps", "reconstruct_steps"), "bench": ("steps", "recon_steps")}
_MIN_SIZE = {"bench": 8, "demo": 16}


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _preflight(args: argparse.Namespace) -> None:
    """Check the options every command shares, before it runs (raises one-line InjcertErrors)."""
    from .. import limits
    from ..io import check_device, check_output_path

    cmd = args.command
    for text in getattr(args, "limit", None) or []:
        limits.set_limit(*limits.parse_assignment(text))
    if isinstance(getattr(args, "device", None), str):
        check_device(args.device)
    for dest in _STEP_OPTIONS.get(cmd, ()):
        value = getattr(args, dest, None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{_option(dest)} must be an int >= 1, got {v!r}")
            limits.check("steps", v, _option(dest))
    samples = getattr(args, "samples", None)
    if cmd == "certify" and samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ConfigError(f"--samples must be an int >= 0, got {samples!r}")
        limits.check("samples", samples, "--samples")
    tile = getattr(args, "tile", None)
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 0):
        raise ConfigError(f"--tile must be an int >= 0 (0: no tiling), got {tile!r}")
    size = getattr(args, "size", None)
    if cmd in _MIN_SIZE and size is not None and not getattr(args, "full", False):
        if isinstance(size, bool) or not isinstance(size, int) or size < _MIN_SIZE[cmd]:
            raise ConfigError(f"--size must be an int >= {_MIN_SIZE[cmd]}, got {size!r}")
        limits.check("pixels", size * size, "--size squared")
    if cmd in ("demo", "bench"):  # they load the model themselves: refuse NaN/overflowing weights here
        ckpt = getattr(args, "model", None) or getattr(args, "checkpoint", None)
        if isinstance(ckpt, str):
            from ..io import load_checkpoint
            from .commands import check_usable_model

            check_usable_model(load_checkpoint(ckpt), f"checkpoint {ckpt!r}")
    inputs = [v for v in (getattr(args, k, None) for k in _INPUTS) if isinstance(v, str) and v]
    if cmd == "train":  # --out X --resume X continues a run in place; the state file is checked by train
        inputs = [v for v in inputs if v != getattr(args, "resume", None)]
    dirs = _DIR_OUTPUTS.get(cmd, ())
    for dest in _FILE_OUTPUTS + dirs:
        value = getattr(args, dest, None)
        if not isinstance(value, str):
            continue
        if dest in dirs:
            check_output_path(value, inputs=inputs, directory=True, what=_option(dest))
            continue
        check_output_path(value, inputs=inputs, what=_option(dest))
        if dest in _IMAGE_OUTPUTS.get(cmd, ()):
            from ..data.images import image_format

            image_format(value)


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message; an OSError as ``strerror: 'filename'``."""
    if isinstance(exc, OSError) and not isinstance(exc, InjcertError) and exc.strerror:
        names = [repr(os.fspath(f)) if isinstance(f, (str, bytes, os.PathLike)) else str(f)
                 for f in (exc.filename, exc.filename2) if f is not None]
        return exc.strerror + (": " + " -> ".join(names) if names else "")
    if isinstance(exc, MemoryError):
        return "out of memory" + (f" ({str(exc).splitlines()[0]})" if str(exc).strip() else "") + \
            "; use a smaller input or a machine with more memory"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_environment_error(exc: BaseException) -> bool:
    """Unusable input or environment: injcert's own errors, I/O errors, running out of memory."""
    if isinstance(exc, (InjcertError, OSError, MemoryError)):
        return True
    return type(exc).__name__ == "OutOfMemoryError"  # torch.OutOfMemoryError (a RuntimeError)


def _debug_env() -> bool:
    """``INJCERT_DEBUG`` is set (and not ``0``): show the traceback of a reported error."""
    return os.environ.get("INJCERT_DEBUG", "") not in ("", "0")


def _error_status(exc: BaseException, prefix: str, debug: bool) -> int | None:
    """Report ``exc`` on stderr under the exit contract and return the exit status: 130 for Ctrl-C,
    2 (one ``PREFIX: error: ...`` line, the traceback too if ``debug``) for an unusable input or
    environment; ``None`` for anything else, a bug, which the caller re-raises."""
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    if not _is_environment_error(exc):
        return None
    if debug:
        import traceback

        traceback.print_exc()
    print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
    return 2


def run_script(main: Callable[[], object], name: str | None = None) -> None:
    """Run a script's ``main()`` under the command line's exit contract and exit: 0 ok (or the int
    ``main`` returns); 2 with one line ``NAME: error: ...`` on stderr for an unusable input or
    environment (a missing, corrupt or untrusted checkpoint, an unknown image, out of memory; set
    ``INJCERT_DEBUG=1`` for the traceback); 130 on Ctrl-C. Any other exception is a bug and shows its
    traceback. The benchmark scripts end with ``run_script(main)``."""
    name = name or os.path.basename(sys.argv[0] or "script")
    try:
        rc = main()
    except BaseException as exc:
        status = _error_status(exc, name, _debug_env())
        if status is None:
            raise  # a bug (or argparse's own SystemExit): as it is
        raise SystemExit(status) from None
    raise SystemExit(int(rc) if isinstance(rc, int) else 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 ok; 1 only for ``certify``'s "a property fails"; 2 with one
    line on stderr for every unusable input or environment error (``--debug`` or ``INJCERT_DEBUG=1``
    adds the traceback); 130 on Ctrl-C. Any other exception is a bug and shows its traceback."""
    from .. import limits

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False)) or _debug_env()
    try:
        from ..threads import threads

        # the default thread count applies to the command line; main([...]) called from Python
        # (tests, notebooks) keeps the caller's setting unless --threads is given
        with threads(getattr(args, "threads", None), default=argv is None):
            _preflight(args)
            return int(args._run(args) or 0)
    except BaseException as exc:
        status = _error_status(exc, f"injcert {args.command}", debug)
        if status is None:
            raise  # a bug: the traceback is the report
        return status
    finally:
        limits.reset()

