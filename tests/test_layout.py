"""The package layout: library operations in the package, the command line and its applications
under ``injcert.cli``, ``injcert.testing`` on the public API only (tests/test_errors_contract.py
checks the error contract)."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import injcert

PACKAGE = Path(injcert.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, absolute module, names)`` of every import statement in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            out.append((node.lineno, mod, [a.name for a in node.names]))
    return out


def test_testing_imports_only_the_public_api():
    bad = []
    for path in sorted((PACKAGE / "testing").glob("*.py")):
        for line, mod, names in _imports(path):
            if mod != "injcert" and not mod.startswith("injcert."):
                continue  # the standard library, torch, hypothesis, ...
            if mod == "injcert":
                bad += [f"{path.name}:{line}: injcert.{n}" for n in names if n not in injcert.__all__]
            elif mod.startswith("injcert.testing"):
                continue  # its own modules
            elif any(part.startswith("_") for part in mod.split(".")):
                bad.append(f"{path.name}:{line}: {mod} (private)")
            elif mod.split(".")[1] in ("cli", "tasks", "certify"):
                bad.append(f"{path.name}:{line}: {mod} (use the names injcert re-exports)")
    assert not bad, "injcert.testing must use the public API only:\n" + "\n".join(bad)


def test_only_testing_and_the_package_root_import_testing():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name == "injcert" or name.startswith("injcert.testing"):
            continue
        for line, mod, names in _imports(path):
            if mod.startswith("injcert.testing") or (mod == "injcert" and "testing" in names):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {mod}")
    assert not bad, "production code must not depend on injcert.testing:\n" + "\n".join(bad)


def test_the_applications_live_under_cli():
    from injcert import cli

    for sub in ("commands", "demo", "compare"):
        assert importlib.import_module(f"injcert.cli.{sub}").__name__ == f"injcert.cli.{sub}"
        assert not (PACKAGE / "tasks" / f"{sub}.py").exists()
    assert callable(cli.main) and callable(cli.build_parser)


def test_the_script_entry_point_resolves():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    pyproject = PACKAGE.parent / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    target = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"]["injcert"]
    module, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    main_src = (PACKAGE / "__main__.py").read_text(encoding="utf-8")
    assert "from .cli import main" in main_src
