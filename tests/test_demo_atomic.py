"""The demo's report folder is all or nothing: a demo that fails at any stage leaves no ``--out``
folder (or an earlier report untouched) and no temporary folder; a demo that succeeds writes the
same files as before, with paths in its report and log pointing at ``--out``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from injcert.cli import demo
from injcert.io import save_checkpoint

from helpers import tiny_unet

FAST = dict(size=16, steps=2, reconstruct_steps=2, certify=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.ckpt"
    save_checkpoint(tiny_unet(), path)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.name.startswith(".injcert-"))


@pytest.mark.parametrize("stage", ["_stage_corruptions", "_stage_round_trip", "_stage_editing", "_write_report"])
def test_a_failing_demo_leaves_nothing(tmp_path, ckpt, monkeypatch, stage):
    def boom(*args, **kwargs):
        raise RuntimeError(f"injected failure in {stage}")

    monkeypatch.setattr(demo, stage, boom)
    out = tmp_path / "demo_out"
    with pytest.raises(RuntimeError, match="injected"):
        demo.run_demo(out, model_path=str(ckpt), log=lambda m: None, **FAST)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_a_failing_demo_keeps_the_earlier_report_and_a_success_replaces_it(tmp_path, ckpt, monkeypatch):
    out = tmp_path / "demo_out"
    lines: list[str] = []
    summary = demo.run_demo(out, model_path=str(ckpt), log=lines.append, **FAST)
    names = sorted(p.name for p in out.iterdir())
    assert {"report.md", "summary.json", "corruptions.png", "round_trip.png", "edit_recolor.png"} <= set(names)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "mine.txt").write_text("a file of the user's")
    # the build folder's name never shows: the log, the summary and the report name --out
    assert all(".injcert-" not in line for line in lines) and str(out) in "".join(lines)
    assert ".injcert-" not in json.dumps(summary) and ".injcert-" not in (out / "summary.json").read_text()
    # the report and the log say at which size the held-out images ran
    assert summary["size"] == FAST["size"] and "held-out chelsea, 16²" in (out / "report.md").read_text()
    assert any("reconstruction (chelsea 16²)" in line for line in lines)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of a run

    monkeypatch.setattr(demo, "_stage_editing", boom)
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(out, model_path=str(ckpt), log=lambda m: None, **FAST)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "mine.txt"} == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    demo.run_demo(out, model_path=str(ckpt), log=lambda m: None, **FAST)
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["mine.txt"])  # files not ours stay
    assert (out / "mine.txt").read_text() == "a file of the user's"
    assert _leftovers(tmp_path) == []


def test_a_symlinked_out_folder_is_refused_before_anything_runs(tmp_path, ckpt):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(Exception, match="symbolic link"):
        demo.run_demo(link, model_path=str(ckpt), log=lambda m: None, **FAST)
    assert list(real.iterdir()) == [] and _leftovers(tmp_path) == []
