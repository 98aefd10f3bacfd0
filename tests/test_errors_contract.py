"""The error contract of :mod:`injcert.errors`: every error raised on purpose derives from
:class:`~injcert.errors.InjcertError`, so the command line (and any caller) can tell a user-facing
failure from a bug. A bare ``raise ValueError(...)`` / ``raise TypeError(...)`` anywhere in the
package breaks it: use :class:`~injcert.errors.ArgumentError` (an argument outside its domain),
:class:`~injcert.errors.ArgumentTypeError` (a wrong type or dtype), :class:`~injcert.errors.InputError`
(unusable data), :class:`~injcert.errors.ConfigError` (a configuration), ... instead — they are
``ValueError``/``TypeError`` subclasses, so callers that caught the builtins keep working."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import injcert
from injcert import errors

PACKAGE = Path(injcert.__file__).resolve().parent
BARE = {"ValueError", "TypeError"}


def _raised_name(node: ast.Raise) -> str | None:
    """The name of the class a ``raise`` statement raises when it is written literally
    (``raise X``, ``raise X(...)``, ``raise builtins.X(...)``); ``None`` otherwise."""
    exc = node.exc
    if isinstance(exc, ast.Call):
        exc = exc.func
    if isinstance(exc, ast.Name):
        return exc.id
    if isinstance(exc, ast.Attribute) and isinstance(exc.value, ast.Name) and exc.value.id == "builtins":
        return exc.attr
    return None


def bare_raises(root: Path = PACKAGE) -> list[str]:
    """``path:line: raise Name`` for every literal ``raise ValueError``/``raise TypeError`` under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and _raised_name(node) in BARE:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: raise {_raised_name(node)}")
    return found


def test_no_bare_value_or_type_error_is_raised():
    found = bare_raises()
    assert not found, (
        "raise an InjcertError subclass (ArgumentError, ArgumentTypeError, InputError, ConfigError, ...) "
        "instead of a bare builtin:\n" + "\n".join(found)
    )


def test_the_scan_sees_every_form(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        "import builtins\n"
        "def f(x):\n"
        "    if x == 1:\n        raise ValueError('a')\n"
        "    if x == 2:\n        raise TypeError\n"
        "    if x == 3:\n        raise builtins.ValueError('b') from None\n"
        "    try:\n        pass\n    except ValueError:\n        raise\n"  # a re-raise is fine
        "    raise RuntimeError('not in the contract scan')\n"
    )
    assert [s.split(": ", 1)[1] for s in bare_raises(tmp_path / "pkg")] == [
        "raise ValueError", "raise TypeError", "raise ValueError"]


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_derives_from_injcert_error(name):
    assert issubclass(getattr(errors, name), errors.InjcertError)


def test_argument_errors_keep_the_builtin_bases():
    assert issubclass(errors.ArgumentError, ValueError)
    assert issubclass(errors.ArgumentTypeError, TypeError)
    for cls in (errors.InputError, errors.ConfigError, errors.CheckpointError, errors.LimitError):
        assert issubclass(cls, ValueError)
