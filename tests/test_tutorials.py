"""The Python blocks of the tutorials ``docs/tutorials/invert-reconstruct-edit.md`` and
``docs/tutorials/certify_your_network.md`` run as written.

All blocks run in order in one namespace (a later block uses what an earlier one made), in a
scratch folder, on the shipped model and the tutorial's own 64² image; only the number of
integration steps is made small (``steps=50`` becomes ``steps=STEPS``), so every assertion the
tutorial makes — bit-exact inversion, observed pixels kept, outside-mask identical — is checked as
a user would see it. The command-line blocks are checked by ``tests/test_docs_commands.py``.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorials" / "invert-reconstruct-edit.md"
STEPS = 4

pytestmark = pytest.mark.docs

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def tutorial_blocks() -> list[str]:
    return _FENCE.findall(TUTORIAL.read_text())


def test_the_tutorial_has_python_blocks_that_use_only_the_public_api() -> None:
    blocks = tutorial_blocks()
    assert len(blocks) >= 4
    for block in blocks:  # the tutorial needs no deep import: the public namespace is enough
        assert not re.search(r"^\s*from injcert\.", block, re.M), block


def test_the_tutorial_blocks_run_as_written(tmp_path: Path) -> None:
    code = "\n".join(tutorial_blocks())
    small = re.sub(r"\bsteps=50\b", f"steps={STEPS}", code)
    assert small != code  # the substitution is what keeps this test fast: the tutorial must use steps=50
    cwd, grad = os.getcwd(), torch.is_grad_enabled()
    os.chdir(tmp_path)
    try:
        namespace: dict = {"__name__": "__tutorial__"}
        exec(compile(small, str(TUTORIAL), "exec"), namespace)  # noqa: S102 - our own documentation
    finally:
        os.chdir(cwd)
        torch.set_grad_enabled(grad)  # the tutorial turns gradients off for the session
    assert (tmp_path / "latent.safetensors").is_file()
    assert namespace["res"].outside_max_abs == 0.0
    assert namespace["edited"].shape == namespace["x"].shape


# ----------------------------------------------------------------------------- certify your own network

CERTIFY_YOURS = ROOT / "docs" / "tutorials" / "certify_your_network.md"
_BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def _masked(text: str) -> list[str]:
    """The lines with every number replaced (timings and the last digits vary; words and statuses do not)."""
    return [_NUMBER.sub("#", line.rstrip()) for line in text.strip().splitlines()]


def test_certify_your_network_runs_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    """Its ``my_nets.py`` block is written to a scratch folder, every Python block runs there in order in one
    namespace, every ``python -m injcert`` command runs in-process as written, and each ``text`` block shown
    after a block is what it printed (numbers masked; for a command, its one-line summary)."""
    from injcert.cli import main

    blocks = _BLOCK.findall(CERTIFY_YOURS.read_text())
    python = [body for lang, body in blocks if lang == "python"]
    assert python and python[0].startswith("# my_nets.py\n")
    for body in python[1:]:  # the public namespace is enough
        assert not re.search(r"^\s*from injcert\.", body, re.M), body
    (tmp_path / "my_nets.py").write_text(python[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_nets", raising=False)
    grad = torch.is_grad_enabled()
    namespace: dict = {"__name__": "__tutorial__"}
    printed, commands = "", 0
    try:
        for i, (lang, body) in enumerate(blocks):
            if lang == "python" and i > 0 and body is not python[0]:
                exec(compile(body, str(CERTIFY_YOURS), "exec"), namespace)  # noqa: S102 - our own documentation
                printed = capsys.readouterr().out
            elif lang == "console":
                for line in body.strip().splitlines():
                    argv = shlex.split(line.removeprefix("$ "))
                    assert argv[:3] == ["python", "-m", "injcert"], argv
                    rc = main(argv[3:])
                    out = capsys.readouterr().out
                    assert rc == 0, out
                    printed = "\n".join(v for v in out.splitlines() if v.startswith("injcert certify: "))
                    commands += 1
            elif lang == "text":
                assert _masked(printed) == _masked(body), (printed, body)
    finally:
        torch.set_grad_enabled(grad)
        sys.modules.pop("my_nets", None)
    assert commands == 2 and (tmp_path / "score.pt2").is_file()
