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


# ------------------------------------------------------------------------------ the import graph
# The layers, bottom to top: a module may import its own layer and the layers below it. The
# package root (the public API) sits above the library and below the command line; ``testing``
# uses the public API (test_testing_imports_only_the_public_api) and is not layered.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "limits", "_compat", "threads", "_progress"),
    ("io", "registry", "_atomic", "_device"),
    ("theory",),
    ("data", "metrics"),
    ("model",),
    ("solvers",),
    ("tasks",),
    ("certify",),
    ("benchlib",),
    ("",),  # injcert itself: the public API
    ("cli", "__main__"),
)
LAZY = "layout: lazy"  # marks an import inside a function that may go against the layers (say why)

# Edges still against the rules, each to be removed (the test fails when one is gone, so the list
# only shrinks). Empty: a new exception needs a reason here.
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _edges(path: Path, modules: dict[str, Path]) -> list[tuple[int, str, bool]]:
    """``(line, imported injcert module, marked lazy)`` of every import in ``path`` (module level,
    inside functions and under ``TYPE_CHECKING``); ``from P import m`` of a submodule ``m`` names
    ``P.m``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")
                mod = ".".join([*base[: len(base) - node.level + 1], *([mod] if mod else [])])
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        lazy = LAZY in "\n".join(lines[node.lineno - 1: node.end_lineno])
        for t in targets:
            if t != "injcert" and not t.startswith("injcert."):
                continue
            while t not in modules and "." in t:
                t = t.rpartition(".")[0]
            if t != name:
                out.append((node.lineno, t, lazy))
    return out


def _layer(module: str) -> int | None:
    """The layer of ``module``; ``None`` for ``injcert.testing``."""
    top = module.split(".")[1] if "." in module else ""
    if top == "testing":
        return None
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer: add its top-level name to LAYERS")


def _graph() -> dict[str, set[str]]:
    """Module -> the modules it imports, without lazy-marked imports and without the edges from
    ``injcert.testing`` to the public API (the root imports ``testing`` last, by design)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, path in modules.items():
        for _, t, lazy in _edges(path, modules):
            if lazy or (m.startswith("injcert.testing") and t == "injcert"):
                continue
            graph[m].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def test_no_import_cycle_between_modules():
    cycles = set(_cycles(_graph()))
    new = sorted(sorted(c) for c in cycles - KNOWN_CYCLES)
    assert not new, f"import cycles (move the shared piece to the lower module): {new}"
    gone = sorted(sorted(c) for c in KNOWN_CYCLES - cycles)
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_imports_flow_down_the_layers():
    modules = _modules()
    bad, seen = [], set()
    for m, path in sorted(modules.items()):
        lm = _layer(m)
        if lm is None:
            continue
        for line, t, lazy in _edges(path, modules):
            lt = _layer(t)
            if lazy or lt is None or lt <= lm:
                continue
            key = (m, t)
            if key in KNOWN_UPWARD:
                seen.add(key)
                continue
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {m} imports {t} (a higher layer)")
    assert not bad, ("upward imports (move the piece down, or mark a lazy optional import "
                     f"'# {LAZY} (why)'):\n" + "\n".join(bad))
    assert seen == KNOWN_UPWARD, f"gone: remove from KNOWN_UPWARD: {sorted(KNOWN_UPWARD - seen)}"


def test_the_graph_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [frozenset({"a", "b", "c"})]


MAX_FUNCTION_LINES = 60  # a whole def: end_lineno - lineno + 1 (signature, docstring, body)
MAX_MODULE_LINES = 600  # longer only with a reason: "Long because ..." in the module docstring


def _long_functions(tree: ast.Module) -> list[tuple[int, str, int]]:
    """``(line, qualified name, lines)`` of every function (methods and nested ones too) over the limit."""
    out = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = child.end_lineno - child.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append((child.lineno, prefix + child.name, n))
                walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


def test_no_function_is_longer_than_sixty_lines():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bad += [f"{path.relative_to(PACKAGE.parent)}:{line}: {name} is {n} lines"
                for line, name, n in _long_functions(tree)]
    assert not bad, (f"functions over {MAX_FUNCTION_LINES} lines (split them into named helpers):\n"
                     + "\n".join(bad))


def test_a_long_module_says_why():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES and "Long because" not in (ast.get_docstring(ast.parse(text)) or ""):
            bad.append(f"{path.relative_to(PACKAGE.parent)}: {n} lines")
    assert not bad, (f"modules over {MAX_MODULE_LINES} lines without 'Long because ...' in their docstring "
                     "(split them along a seam, or say in one sentence why they belong together):\n"
                     + "\n".join(bad))


def test_the_length_rules_see_a_long_function():
    def source(name: str, lines: int) -> str:  # a method of ``lines`` lines, its def included
        return f"    def {name}(self):\n" + "".join(f"        x{i} = {i}\n" for i in range(lines - 1))

    tree = ast.parse("class A:\n" + source("f", MAX_FUNCTION_LINES + 1) + source("g", MAX_FUNCTION_LINES))
    assert [(name, n) for _, name, n in _long_functions(tree)] == [("A.f", MAX_FUNCTION_LINES + 1)]
