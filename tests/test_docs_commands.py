"""The README's commands and Python snippet run as written (at tiny settings); every command line in
the docs parses with the current CLI.

Each ``python -m injcert …`` line of the README's shell blocks runs in-process in a scratch folder,
in order (a later command reads what an earlier one wrote), with options appended that make it
tiny (argparse: the last occurrence wins): a small untrained checkpoint instead of the shipped
model, a few integration steps, ``--quiet``. ``python -c`` lines run as written in a subprocess;
``torchrun … -m injcert ARGS`` runs ``ARGS`` in-process (one process: DDP itself is tested in
tests/test_train.py); ``make`` targets and lines that need CUDA on a machine without it are skipped.
The Python snippet runs with ``injcert.DEFAULT_CHECKPOINT`` pointing at the small checkpoint and
``injcert.certify`` at tiny settings.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import injcert
from injcert.cli import build_parser, main

from helpers import ROOT, tiny_unet

README = ROOT / "README.md"
DOCS = ROOT / "docs"

pytestmark = pytest.mark.docs

_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)

#: Options appended to each command to make it tiny (the checkpoint is added separately).
TINY: dict[str, list[str]] = {
    "certify": ["--steps", "4", "--samples", "0"],
    "invert": ["--steps", "2", "--tile", "0"],
    "decode": ["--tile", "0"],
    "reconstruct": ["--steps", "2", "--tile", "0"],
    "edit": ["--steps", "2", "--tile", "0"],
    "train": ["--steps", "2", "--batch-size", "2", "--device", "cpu"],
    "demo": ["--size", "16", "--steps", "2", "--reconstruct-steps", "2", "--skip-certify"],
    "bench": ["--quick", "--size", "8", "--images", "astronaut", "--steps", "2", "--recon-steps", "2",
              "--skip", "sampling", "--methods", "ddim", "reversible"],
}
READS_CHECKPOINT = {"certify", "invert", "decode", "reconstruct", "edit", "demo", "bench"}


def code_blocks(path: Path, langs: tuple[str, ...]) -> list[str]:
    """The bodies of the fenced blocks of ``path`` in one of ``langs``."""
    return [body for lang, body in _FENCE.findall(path.read_text()) if lang in langs]


def command_lines(block: str) -> list[list[str]]:
    """Shell lines of a block as argv lists: ``\\`` continuations joined, ``$ `` prompts and
    comments dropped, leading ``VAR=value`` assignments removed."""
    out, buf = [], ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if line.startswith("$ "):
            line = line[2:]
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line, buf = buf + line, ""
        argv = shlex.split(line, comments=True)
        while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


def injcert_args(argv: list[str]) -> list[str] | None:
    """The arguments after ``-m injcert`` (``python -m injcert …``, ``torchrun … -m injcert …``)."""
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "injcert":
            return argv[i + 2:]
    return None


def readme_commands() -> list[list[str]]:
    return [c for b in code_blocks(README, ("sh", "console", "bash")) for c in command_lines(b)]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    model = tiny_unet(lipschitz_budget=5.0, data_variance=0.25)
    path = tmp_path_factory.mktemp("docs_ckpt") / "tiny.ckpt"
    injcert.save_checkpoint(model, path)
    return path


def _tiny(args: list[str], ckpt: Path) -> list[str]:
    cmd = args[0] if args else ""
    extra = list(TINY.get(cmd, []))
    if cmd in READS_CHECKPOINT:
        extra += ["--model", str(ckpt)]
    if cmd == "train":
        extra += ["--config", str(ROOT / "configs" / "tiny.json")] if "--config" not in args else []
    return args + extra + (["--quiet"] if cmd in TINY else [])


def test_readme_commands_run_as_written(tiny_ckpt, tmp_path, monkeypatch, capsys) -> None:
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert len(commands) >= 10, commands
    ran = []
    for argv in commands:
        if argv[0] == "make":
            continue  # make targets: `make test` is the suite itself, `make demo` is `demo` below
        if argv[:2] == ["python", "-c"]:
            subprocess.run([sys.executable, "-c", argv[2]], check=True, cwd=tmp_path)
            ran.append(argv)
            continue
        if argv[0] == "python" and len(argv) > 1 and argv[1].startswith(("scripts/", "benchmarks/")):
            # a project script on the files of a long earlier run: it exists and its --help works
            script = ROOT / argv[1]
            assert script.is_file(), argv
            subprocess.run([sys.executable, str(script), "--help"], check=True, cwd=tmp_path, capture_output=True)
            ran.append(argv)
            continue
        args = injcert_args(argv)
        assert args is not None, f"README command is neither make, python -c, a project script nor injcert: {argv}"
        if "cuda" in " ".join(args) and not torch.cuda.is_available():
            continue
        if args in (["--help"], ["-h"]):
            with pytest.raises(SystemExit) as exc:
                main(args)
            assert exc.value.code == 0
            ran.append(argv)
            continue
        if "--resume" in args:
            continue  # needs the state of a long earlier run (tests/test_train.py covers --resume)
        if "--init" in args and not Path(args[args.index("--init") + 1]).exists():
            continue  # continues the model of a long earlier run (tests/test_train.py covers --init)
        full = _tiny(args, tiny_ckpt)
        rc = main(full)
        out, err = capsys.readouterr()
        assert rc == 0, f"{' '.join(argv)} -> exit {rc}: {err[-2000:]}"
        # every command ends with its one-line summary; --quiet shows no progress bar
        assert any(line.startswith(f"injcert {args[0]}: ") for line in (out + err).splitlines()), (argv, out, err)
        assert "it/s]" not in err and "stages |" not in err, (argv, err)
        ran.append(argv)
    names = {injcert_args(a)[0] for a in ran if injcert_args(a)}
    assert {"certify", "invert", "decode", "reconstruct", "edit", "train", "demo", "bench"} <= names, names


def test_readme_python_snippet_runs(tiny_ckpt, monkeypatch, tmp_path) -> None:
    blocks = code_blocks(README, ("python",))
    assert blocks, "the README has no python block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(injcert, "DEFAULT_CHECKPOINT", tiny_ckpt)
    monkeypatch.setattr(injcert, "certify", functools.partial(
        injcert.certify, steps=4, samples=0, patch_size=16, logdet_size=4, hutchpp_steps=2, hutchpp_queries=4))
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme_snippet"})


def _doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md")), *sorted(DOCS.glob("tutorials/*.md")), *sorted(DOCS.glob("benchmarks/*.md"))]


@pytest.mark.parametrize("path", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_parses(path: Path) -> None:
    """Options, names and spellings in the docs are those of the current parser."""
    parser = build_parser()
    for block in code_blocks(path, ("sh", "console", "bash", "yaml")):
        for argv in command_lines(block):
            if argv and argv[0] == "-":  # a YAML list item: `- run: python -m injcert ...`
                argv = argv[1:]
            if argv and argv[0] == "run:":
                argv = argv[1:]
            args = injcert_args(argv)
            if not args:
                continue
            try:
                parser.parse_args(args)
            except SystemExit as exc:
                if exc.code != 0:
                    pytest.fail(f"{path.name}: `{' '.join(argv)}` does not parse")


def test_ci_tutorial_installs_from_the_repo_with_constraints() -> None:
    text = (DOCS / "tutorials" / "certify-in-ci.md").read_text()
    installs = [line for block in code_blocks(DOCS / "tutorials" / "certify-in-ci.md", ("yaml",))
                for line in block.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert "pip install injcert" not in text


def test_certify_path_runs_under_warnings_as_errors(tiny_ckpt) -> None:
    """A user's CI with ``-W error`` (certify-in-ci tutorial, step 3): injcert's certify path emits no
    warning of its own (PyTorch's ``torch.jit.script is deprecated``, raised when forward-mode AD
    first loads its decompositions, is silenced at that import only)."""
    code = ("import injcert.testing as t; "
            f"c = t.assert_certified({str(tiny_ckpt)!r}, steps=4, samples=2, patch_size=16, logdet_size=4, "
            "hutchpp_steps=2, hutchpp_queries=4, lipschitz_iters=2); print(c.verdict)")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "PASS", proc.stderr[-3000:]


# ----------------------------------------------------------------------------- documented behaviours


def test_a_red_mask_counts_and_alpha_is_dropped_with_a_note(tiny_ckpt, tmp_path, capsys) -> None:
    """README: a mask pixel is set where any channel is brighter than 50 % (pure red too); an alpha
    channel is dropped with a one-line note."""
    import numpy as np
    from PIL import Image

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = np.random.default_rng(0).integers(0, 256, (16, 16, 3))
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "img.png")
    red = np.zeros((16, 16, 3), np.uint8)
    red[4:10, 4:10] = (255, 0, 0)
    Image.fromarray(red).save(tmp_path / "red.png")
    rc = main(["edit", str(tmp_path / "img.png"), "--mask", str(tmp_path / "red.png"), "--op", "recolor",
               "--out", str(tmp_path / "e.png"), "--model", str(tiny_ckpt), "--steps", "2", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    notes = [line for line in err.splitlines() if "alpha channel" in line]
    assert len(notes) == 1 and notes[0].startswith("injcert: note:"), err
    edited = np.asarray(Image.open(tmp_path / "e.png")).astype(int)
    base = rgba[..., :3].astype(int)
    changed = np.abs(edited - base).max(axis=2) > 0
    assert changed[4:10, 4:10].any() and not changed[:4].any() and not changed[10:].any()


def test_train_refuses_zero_steps(tmp_path, capsys) -> None:
    rc = main(["train", "--config", str(ROOT / "configs" / "tiny.json"), "--steps", "0",
               "--out", str(tmp_path / "m.ckpt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--steps" in err[0]
    assert not (tmp_path / "m.ckpt").exists()


def test_one_vocabulary(tiny_ckpt) -> None:
    """--model everywhere (alias --checkpoint), certify's positional too; --quiet, --threads and
    --device in every command; every option's default in --help; train writes model.ckpt."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction)).choices
    for name, p in sub.items():
        opts = {o for a in p._actions for o in a.option_strings}
        assert {"--quiet", "--threads", "--device"} <= opts, (name, opts)
        if name != "train":
            assert {"--model", "--checkpoint"} <= opts, (name, opts)
        assert "default" in p.format_help()
    a = parser.parse_args(["bench", "--checkpoint", "x.ckpt", "--device", "cpu"])
    assert a.model == "x.ckpt" and a.device == "cpu"
    a = parser.parse_args(["certify", str(tiny_ckpt)])
    assert a.checkpoint == str(tiny_ckpt)
    assert "model.ckpt" in sub["train"].format_help()
