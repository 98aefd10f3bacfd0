"""The Python blocks of the tutorial ``docs/tutorials/invert-reconstruct-edit.md`` run as written.

All blocks run in order in one namespace (a later block uses what an earlier one made), in a
scratch folder, on the shipped model and the tutorial's own 64² image; only the number of
integration steps is made small (``steps=50`` becomes ``steps=STEPS``), so every assertion the
tutorial makes — bit-exact inversion, observed pixels kept, outside-mask identical — is checked as
a user would see it. The command-line blocks are checked by ``tests/test_docs_commands.py``.
"""

from __future__ import annotations

import os
import re
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
