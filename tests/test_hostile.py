"""Every command under hostile input: unsafe output paths, bad devices, limits, malformed files,
I/O errors, concurrent runs: each fails with one clear line and leaves no partial output.

For every refusal the contract is checked the same way (:func:`_refused`): exit status 2, exactly
one line on stderr (what a terminal shows: a progress bar redrawn with ``\\r`` is one line), no
traceback, and no file written or changed in the folder of the outputs (fifo, device node, symlink
and its target, directory: all untouched). Pickle payloads must never run: their marker file is
checked after every command that reads them.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from injcert import limits
from injcert.cli import main
from injcert.data.images import load_image, save_image
from injcert.io import atomic_write_bytes, clean_orphan_temps, load_state, save_checkpoint, save_state

from helpers import subprocess_env, tiny_config, tiny_unet

TINY = tiny_config()


# ============================================================================ helpers


def _lines(err: str) -> list[str]:
    """The lines a terminal shows: a progress bar redrawn with ``\\r`` counts once (its last state)."""
    shown = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
    return [s for s in shown if s.strip()]


def _cli(capsys, args: list) -> tuple[int, list[str], str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, _lines(cap.err), cap.out


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (hidden ones too) with its kind, size and mtime; links not followed."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            snap[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return snap


def _refused(code: int, lines: list[str], *, what: str = "") -> None:
    assert code == 2, (code, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("injcert ") and ": error: " in lines[0], lines
    assert "Traceback" not in lines[0]
    if what:
        assert what in lines[0], lines[0]


def _payload_bytes(marker: Path, kind: str) -> bytes:
    class _Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    if kind == "torch":
        import io as _io

        buf = _io.BytesIO()
        torch.save({"w": _Payload()}, buf)
        return buf.getvalue()
    return pickle.dumps({"w": _Payload()}, protocol=int(kind[1:]))


def _tiny_model(seed: int):
    return tiny_unet(seed, lipschitz_budget=5.0, data_variance=0.25)


def _safetensors_ckpt(path: Path, config, tensors: dict) -> Path:
    from safetensors.torch import save_file

    text = config if isinstance(config, str) else json.dumps(config)
    save_file(tensors, str(path), metadata={"format": "injcert-checkpoint", "version": "1", "config": text})
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """Inputs shared by the tests (read-only for them): models, images, a latent, a training state."""
    d = tmp_path_factory.mktemp("hostile")
    m = _tiny_model(0)
    save_checkpoint(m, d / "m.ckpt")
    save_checkpoint(_tiny_model(1), d / "m2.ckpt")
    torch.manual_seed(2)
    save_image(torch.rand(3, 20, 24) * 2 - 1, d / "img.png")
    save_image(torch.rand(3, 20, 24) * 2 - 1, d / "img2.png")
    mask = -torch.ones(1, 20, 24)
    mask[:, 5:12, 6:15] = 1
    save_image(mask, d / "mask.png")
    save_image(-torch.ones(1, 20, 24), d / "empty.png")
    cfg = dict(TINY, steps=1, checkpoint_every=1, val_batches=0)
    (d / "tiny.json").write_text(json.dumps(cfg))
    # a latent of img.png by m.ckpt, and one of img2.png
    assert main(["invert", str(d / "img.png"), "--out", str(d / "lat.st"), "--model", str(d / "m.ckpt"),
                 "--steps", "4", "--quiet"]) == 0
    assert main(["invert", str(d / "img2.png"), "--out", str(d / "lat2.st"), "--model", str(d / "m.ckpt"),
                 "--steps", "4", "--quiet"]) == 0
    # a one-step training run (its state is the resume input of the state tests)
    from injcert.tasks.train import TrainConfig, train

    train(TrainConfig.from_dict(dict(cfg, log=str(d / "run.jsonl"))), d / "run.ckpt", progress=False)
    # malformed checkpoints
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    good = {"model": type(m)._injcert_model_name, "model_config": m.config, "metadata": {}}
    bad = d / "bad"
    bad.mkdir()
    _safetensors_ckpt(bad / "list.ckpt", [1, 2], sd)
    _safetensors_ckpt(bad / "deep.ckpt", "[" * 100_000 + "]" * 100_000, sd)
    _safetensors_ckpt(bad / "model_config_list.ckpt", dict(good, model_config=[1]), sd)
    _safetensors_ckpt(bad / "huge.ckpt", dict(good, model_config=dict(m.config, base_channels=1500)), sd)
    for name, conv in (("int32", lambda t: t.to(torch.int32)), ("float16", lambda t: t.half()),
                       ("bool", lambda t: t.bool())):
        _safetensors_ckpt(bad / f"{name}.ckpt", good, {k: conv(v) if v.is_floating_point() else v for k, v in sd.items()})
    for name, value in (("nan", float("nan")), ("big", 1e30)):
        mm = _tiny_model(0)
        with torch.no_grad():
            next(iter(mm.parameters())).fill_(value)
        save_checkpoint(mm, bad / f"{name}.ckpt")
    (bad / "truncated.ckpt").write_bytes((d / "m.ckpt").read_bytes()[:5000])
    return {"dir": d, "m": d / "m.ckpt", "m2": d / "m2.ckpt", "img": d / "img.png", "img2": d / "img2.png",
            "mask": d / "mask.png", "empty": d / "empty.png", "lat": d / "lat.st", "lat2": d / "lat2.st",
            "cfg": d / "tiny.json", "run": d / "run.ckpt", "bad": bad}


@pytest.fixture(autouse=True)
def _no_limit_leaks():
    yield
    limits.reset()


# Every output option of every command, as (args builder, is an image output). The builder gets the
# shared inputs, the output under test and a scratch folder for the command's other outputs.
Builder = Callable[[dict, Path, Path], list]
_Q = ["--quiet"]
OUTPUTS: dict[str, tuple[Builder, bool]] = {
    "invert --out": (lambda e, o, s: ["invert", e["img"], "--out", o, "--model", e["m"], "--steps", 4] + _Q, False),
    "invert --figure": (lambda e, o, s: ["invert", e["img"], "--out", s / "l.st", "--figure", o, "--model", e["m"],
                                         "--steps", 4] + _Q, True),
    "decode --out": (lambda e, o, s: ["decode", e["lat"], "--out", o, "--model", e["m"]] + _Q, True),
    "reconstruct --out": (lambda e, o, s: ["reconstruct", e["img"], "--out", o, "--model", e["m"], "--steps", 4] + _Q,
                          True),
    "reconstruct --corrupted-out": (lambda e, o, s: ["reconstruct", e["img"], "--out", s / "r.png", "--corrupted-out",
                                                     o, "--model", e["m"], "--steps", 4] + _Q, True),
    "reconstruct --figure": (lambda e, o, s: ["reconstruct", e["img"], "--out", s / "r.png", "--figure", o, "--model",
                                              e["m"], "--steps", 4] + _Q, True),
    "edit --out": (lambda e, o, s: ["edit", e["img"], "--mask", e["mask"], "--op", "recolor", "--out", o, "--model",
                                    e["m"], "--steps", 4] + _Q, True),
    "edit --figure": (lambda e, o, s: ["edit", e["img"], "--mask", e["mask"], "--op", "recolor", "--out", s / "e.png",
                                       "--figure", o, "--model", e["m"], "--steps", 4] + _Q, True),
    "certify --json": (lambda e, o, s: ["certify", e["m"], "--json", o, "--steps", 4, "--samples", 0] + _Q, False),
    "certify --markdown": (lambda e, o, s: ["certify", e["m"], "--markdown", o, "--steps", 4, "--samples", 0] + _Q,
                           False),
    "train --out": (lambda e, o, s: ["train", "--config", e["cfg"], "--out", o] + _Q, False),
    "train --log": (lambda e, o, s: ["train", "--config", e["cfg"], "--out", s / "t.ckpt", "--log", o] + _Q, False),
}


def _make_hostile(kind: str, folder: Path, suffix: str) -> tuple[Path, Callable[[], None]]:
    """An output path of the given kind under ``folder``, and a check that it is untouched."""
    p = folder / f"out{suffix}"
    if kind == "fifo":
        os.mkfifo(p)
        return p, lambda: stat.S_ISFIFO(os.lstat(p).st_mode) or pytest.fail("fifo replaced")
    if kind == "device":
        try:
            os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a copy of /dev/null
        except (PermissionError, OSError):
            pytest.skip("cannot make a device node here (needs root)")
        return p, lambda: stat.S_ISCHR(os.lstat(p).st_mode) or pytest.fail("device node replaced")
    if kind == "symlink":
        target = folder / "precious.txt"
        target.write_bytes(b"precious")
        os.symlink(target, p)

        def check() -> None:
            assert os.path.islink(p) and target.read_bytes() == b"precious"
        return p, check
    if kind == "dangling_symlink":
        os.symlink(folder / "nowhere", p)
        return p, lambda: (os.path.islink(p) and not (folder / "nowhere").exists()) or pytest.fail("link followed")
    if kind == "directory":
        p.mkdir()
        return p, lambda: (p.is_dir() and not any(p.iterdir())) or pytest.fail("directory changed")
    if kind == "parent_is_file":
        (folder / "afile").write_bytes(b"x")
        return folder / "afile" / f"out{suffix}", lambda: None
    if kind == "name_too_long":
        return folder / ("a" * (256 - len(suffix)) + suffix), lambda: None
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink", "dangling_symlink", "directory", "parent_is_file",
                                  "name_too_long"])
@pytest.mark.parametrize("output", sorted(OUTPUTS))
def test_unsafe_output_paths_are_refused_and_untouched(env, tmp_path, capsys, output, kind) -> None:
    build, image = OUTPUTS[output]
    out, untouched = _make_hostile(kind, tmp_path, ".png" if image else ".out")
    before = _snapshot(tmp_path)
    code, lines, stdout = _cli(capsys, build(env, out, tmp_path))
    _refused(code, lines)
    untouched()
    assert _snapshot(tmp_path) == before
    assert "PASS" not in stdout  # certify: refused before it runs, not after printing a verdict


@pytest.mark.parametrize("output", sorted(OUTPUTS))
def test_an_output_that_is_an_input_is_refused(env, tmp_path, capsys, output) -> None:
    """The output is a hard link to one of the command's inputs (``os.path.samefile``)."""
    build, image = OUTPUTS[output]
    args = [str(a) for a in build(env, tmp_path / "placeholder", tmp_path)]
    inp = Path(args[2]) if output.startswith(("train",)) else Path(args[1])
    if output.startswith("train"):
        inp = env["cfg"]
    link = tmp_path / ("in.png" if image else "in.out")
    os.link(inp, link)
    before = _snapshot(tmp_path)
    digest = inp.read_bytes()
    code, lines, _ = _cli(capsys, build(env, link, tmp_path))
    _refused(code, lines, what="same file as the input")
    assert inp.read_bytes() == digest and _snapshot(tmp_path) == before


def test_named_in_place_overwrites_are_refused(env, tmp_path, capsys) -> None:
    img = tmp_path / "img.png"
    shutil.copy(env["img"], img)
    ckpt = tmp_path / "m.ckpt"
    shutil.copy(env["m"], ckpt)
    before = _snapshot(tmp_path)
    for args in (["invert", img, "--out", img, "--model", ckpt, "--steps", 4, "--quiet"],
                 ["certify", ckpt, "--json", ckpt, "--steps", 4, "--samples", 0, "--quiet"],
                 ["reconstruct", img, "--out", img, "--model", ckpt, "--steps", 4, "--quiet"],
                 ["decode", env["lat"], "--out", img, "--compare", img, "--model", env["m"], "--quiet"]):
        _refused(*_cli(capsys, args)[:2], what="same file")
    assert _snapshot(tmp_path) == before


def test_image_outputs_need_an_image_suffix(env, tmp_path, capsys) -> None:
    for args in (["decode", env["lat"], "--out", tmp_path / "noext", "--model", env["m"], "--quiet"],
                 ["reconstruct", env["img"], "--out", tmp_path / "r.unknownext", "--model", env["m"], "--steps", 4],
                 ["edit", env["img"], "--mask", env["mask"], "--op", "remove", "--out", tmp_path / "e",
                  "--model", env["m"], "--steps", 4]):
        _refused(*_cli(capsys, args)[:2], what="image format")
    assert list(tmp_path.iterdir()) == []


def test_a_245_character_name_is_written(env, tmp_path, capsys) -> None:
    """The temporary file has a short name of its own: a target name near the limit still works."""
    out = tmp_path / ("n" * 241 + ".png")
    code, lines, _ = _cli(capsys, ["decode", env["lat"], "--out", out, "--model", env["m"], "--quiet"])
    assert code == 0 and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


# ============================================================================ devices


_DEVICE_COMMANDS: dict[str, Builder] = {
    "train": lambda e, d, s: ["train", "--config", e["cfg"], "--out", s / "t.ckpt", "--device", d] + _Q,
    "certify": lambda e, d, s: ["certify", e["m"], "--device", d, "--steps", 4, "--samples", 0] + _Q,
    "invert": lambda e, d, s: ["invert", e["img"], "--out", s / "l.st", "--model", e["m"], "--device", d] + _Q,
    "decode": lambda e, d, s: ["decode", e["lat"], "--out", s / "d.png", "--model", e["m"], "--device", d] + _Q,
    "reconstruct": lambda e, d, s: ["reconstruct", e["img"], "--out", s / "r.png", "--model", e["m"], "--device", d],
    "edit": lambda e, d, s: ["edit", e["img"], "--mask", e["mask"], "--op", "remove", "--out", s / "e.png",
                             "--model", e["m"], "--device", d],
    "demo": lambda e, d, s: ["demo", "--out", s / "demo", "--model", e["m"], "--device", d, "--skip-certify"],
}


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "meta", "mps", "nonsense", ""])
@pytest.mark.parametrize("command", sorted(_DEVICE_COMMANDS))
def test_unusable_devices_are_one_line(env, tmp_path, capsys, command, device) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    mps = getattr(torch.backends, "mps", None)
    if device == "mps" and mps is not None and mps.is_available():
        pytest.skip("MPS is available here")
    code, lines, _ = _cli(capsys, _DEVICE_COMMANDS[command](env, device, tmp_path))
    _refused(code, lines, what="device")
    assert list(tmp_path.iterdir()) == []


# ============================================================================ limits


@pytest.fixture(scope="module")
def big_png(tmp_path_factory) -> Path:
    from PIL import Image

    p = tmp_path_factory.mktemp("big") / "big.png"
    Image.new("L", (8000, 8000)).save(p, optimize=True)  # ~60 KB on disk, 64 Mpx
    assert p.stat().st_size < 1_000_000
    return p


def test_pixel_limit_is_checked_before_decoding(env, big_png, tmp_path, capsys) -> None:
    import tracemalloc

    for args in (["invert", big_png, "--out", tmp_path / "l.st", "--model", env["m"]],
                 ["reconstruct", big_png, "--out", tmp_path / "r.png", "--model", env["m"]],
                 ["edit", env["img"], "--mask", big_png, "--op", "remove", "--out", tmp_path / "e.png", "--model",
                  env["m"]],
                 ["edit", big_png, "--mask", env["mask"], "--op", "remove", "--out", tmp_path / "e.png", "--model",
                  env["m"]]):
        tracemalloc.start()
        code, lines, _ = _cli(capsys, args)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        _refused(code, lines, what="pixels")
        assert "--limit pixels=" in lines[0]
        assert peak < 50e6  # nothing near 64 Mpx was allocated by Python/numpy
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["certify", "{m}", "--steps", "20000"],
    ["certify", "{m}", "--samples", "1000000000"],
    ["invert", "{img}", "--out", "{tmp}/l.st", "--model", "{m}", "--steps", "20000"],
    ["reconstruct", "{img}", "--out", "{tmp}/r.png", "--model", "{m}", "--steps", "1000000000"],
    ["edit", "{img}", "--mask", "{mask}", "--op", "remove", "--out", "{tmp}/e.png", "--model", "{m}", "--steps",
     "20000"],
    ["demo", "--out", "{tmp}/demo", "--model", "{m}", "--steps", "20000", "--skip-certify"],
    ["demo", "--out", "{tmp}/demo", "--model", "{m}", "--size", "100000", "--skip-certify"],
    ["bench", "--out", "{tmp}/bench", "--steps", "10", "20000"],
    ["train", "--config", "{cfg}", "--out", "{tmp}/t.ckpt", "--batch-size", "1000000000"],
])
def test_resource_limits_are_checked_first(env, tmp_path, capsys, args) -> None:
    subst = {k: str(v) for k, v in env.items()} | {"tmp": str(tmp_path)}
    code, lines, _ = _cli(capsys, [a.format(**subst) for a in args] + ["--quiet"] * (args[0] != "bench"))
    _refused(code, lines, what="exceeds the limit")
    assert list(tmp_path.iterdir()) == []


def test_limits_can_be_raised_or_lowered(env, tmp_path, capsys, monkeypatch) -> None:
    # --limit lowers (and so raises) a limit for one run; INJCERT_MAX_* for every run
    code, lines, _ = _cli(capsys, ["invert", env["img"], "--out", tmp_path / "l.st", "--model", env["m"],
                                   "--steps", 4, "--limit", "steps=3", "--quiet"])
    _refused(code, lines, what="--limit steps=")
    monkeypatch.setenv("INJCERT_MAX_STEPS", "3")
    _refused(*_cli(capsys, ["invert", env["img"], "--out", tmp_path / "l.st", "--model", env["m"], "--steps", 4,
                            "--quiet"])[:2], what="INJCERT_MAX_STEPS")
    code, _, _ = _cli(capsys, ["invert", env["img"], "--out", tmp_path / "l.st", "--model", env["m"], "--steps", 4,
                               "--limit", "steps=5", "--quiet"])
    assert code == 0 and (tmp_path / "l.st").is_file()
    assert limits.get("steps") == 3  # the --limit override did not outlive its run
    _refused(*_cli(capsys, ["invert", env["img"], "--out", tmp_path / "x.st", "--limit", "nosuch=3"])[:2])


def test_a_latent_asking_for_too_many_steps_is_refused(env, tmp_path, capsys) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(env["lat"]), framework="pt") as f:
        meta = json.loads(f.metadata()["injcert_latent"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "long.st"), metadata={"injcert_latent": json.dumps(dict(meta, steps=10**9))})
    before = _snapshot(tmp_path)
    _refused(*_cli(capsys, ["decode", tmp_path / "long.st", "--out", tmp_path / "d.png", "--model", env["m"],
                            "--quiet"])[:2], what="exceeds the limit steps")
    assert _snapshot(tmp_path) == before


# ============================================================================ malformed checkpoints


_MODEL_COMMANDS: dict[str, Builder] = {
    "certify": lambda e, c, s: ["certify", c, "--steps", 4, "--samples", 0] + _Q,
    "invert": lambda e, c, s: ["invert", e["img"], "--out", s / "l.st", "--model", c, "--steps", 4] + _Q,
    "decode": lambda e, c, s: ["decode", e["lat"], "--out", s / "d.png", "--model", c, "--force"] + _Q,
    "reconstruct": lambda e, c, s: ["reconstruct", e["img"], "--out", s / "r.png", "--model", c, "--steps", 4] + _Q,
    "edit": lambda e, c, s: ["edit", e["img"], "--mask", e["mask"], "--op", "remove", "--out", s / "e.png",
                             "--model", c, "--steps", 4] + _Q,
    "demo": lambda e, c, s: ["demo", "--out", s / "demo", "--model", c, "--skip-certify", "--size", 16, "--steps", 3],
    "bench": lambda e, c, s: ["bench", "--out", s / "bench", "--checkpoint", c, "--quick"],
}
_BAD_CHECKPOINTS = ["list", "deep", "model_config_list", "huge", "int32", "float16", "bool", "nan", "big", "truncated"]


@pytest.mark.parametrize("kind", _BAD_CHECKPOINTS)
@pytest.mark.parametrize("command", sorted(_MODEL_COMMANDS))
def test_malformed_checkpoints_are_one_line(env, tmp_path, capsys, command, kind) -> None:
    if command == "certify" and kind in ("nan", "big"):
        pytest.skip("certify reports non-finite weights as a failed property (exit 1): test_certify_nan_weights")
    code, lines, _ = _cli(capsys, _MODEL_COMMANDS[command](env, env["bad"] / f"{kind}.ckpt", tmp_path))
    _refused(code, lines)
    assert list(tmp_path.iterdir()) == []


def test_certify_nan_weights_is_a_failed_property(env, capsys) -> None:
    code, lines, out = _cli(capsys, ["certify", env["bad"] / "nan.ckpt", "--steps", 4, "--samples", 0])
    assert code == 1 and "finite_weights" in out


def test_certify_1e30_weights_is_a_failed_property_not_a_traceback(env, capsys) -> None:
    """Finite but huge weights drive the reversible state off the int64 lattice: certify says which
    property fails (exit 1) instead of an OverflowError traceback."""
    code, lines, out = _cli(capsys, ["certify", env["bad"] / "big.ckpt", "--steps", 4, "--samples", 0])
    assert code == 1 and "Traceback" not in "\n".join(lines)
    assert "left the int64 lattice" in out and "VERDICT: FAIL" in out


def test_a_huge_config_is_refused_before_it_is_allocated(env) -> None:
    import tracemalloc

    from injcert.errors import CheckpointError
    from injcert.io import load_checkpoint

    tracemalloc.start()
    with pytest.raises(CheckpointError, match="far larger"):
        load_checkpoint(env["bad"] / "huge.ckpt")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200e6  # base_channels=1500 would take gigabytes


@pytest.mark.parametrize("pickle_kind", ["torch", "p0", "p2", "p5"])
def test_pickle_payloads_never_run_under_any_command(env, tmp_path, capsys, pickle_kind) -> None:
    marker = tmp_path / "pwned"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    data = _payload_bytes(marker, pickle_kind)
    for suffix in (".ckpt", ".safetensors", ".pt", ".state", ".st", ".png", ".npy", ".json"):
        evil = tmp_path / f"evil{suffix}"
        evil.write_bytes(data)
        runs = [builder(env, evil, scratch) for builder in _MODEL_COMMANDS.values()]
        runs += [
            ["decode", evil, "--out", scratch / "d.png", "--model", env["m"]],
            ["invert", evil, "--out", scratch / "l.st", "--model", env["m"]],
            ["edit", env["img"], "--mask", evil, "--op", "remove", "--out", scratch / "e.png", "--model", env["m"]],
            ["train", "--resume", evil, "--out", scratch / "t.ckpt"],
            ["train", "--config", evil, "--out", scratch / "t.ckpt"],
        ]
        for args in runs:
            code, lines, _ = _cli(capsys, args)
            _refused(code, lines)
            assert not marker.exists(), (args, "a pickle payload ran")
    assert list(scratch.iterdir()) == []


# ============================================================================ malformed inputs


def _write_png16(a, path: Path) -> None:
    """A 16-bit PNG with every filter type (Pillow cannot write 16-bit colour)."""
    import struct
    import zlib

    import numpy as np

    h, w = a.shape[:2]
    c = 1 if a.ndim == 2 else a.shape[2]
    bpp = 2 * c
    data = a.astype(">u2").reshape(h, -1).view(np.uint8).reshape(h, w * bpp).astype(np.int64)
    out = b""
    prev = np.zeros(w * bpp, np.int64)
    for r in range(h):
        f = r % 5
        cur = data[r]
        res = np.zeros_like(cur)
        for i in range(len(cur)):
            left = cur[i - bpp] if i >= bpp else 0
            up = prev[i]
            ul = prev[i - bpp] if i >= bpp else 0
            p = left + up - ul
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
            paeth = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
            res[i] = (cur[i] - [0, left, up, (left + up) >> 1, paeth][f]) & 255
        out += bytes([f]) + res.astype(np.uint8).tobytes()
        prev = cur

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(out)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_png_is_read_at_full_precision(tmp_path, capsys, channels) -> None:
    import numpy as np

    a = (np.random.default_rng(0).random((7, 9, channels)) * 65535).astype(np.uint16)
    _write_png16(a, tmp_path / "deep.png")
    x = load_image(tmp_path / "deep.png", dtype=torch.float64)
    ref = torch.from_numpy(a[..., :3].astype(np.float64) / 65535).permute(2, 0, 1) * 2 - 1
    assert float((x - ref).abs().max()) < 1e-6  # 8-bit would be off by up to 2/255
    notes = _lines(capsys.readouterr().err)
    assert all(n.startswith("injcert: note: ") for n in notes) and sum("16-bit" in n for n in notes) == 1


def test_nonfinite_images_are_refused(env, tmp_path, capsys) -> None:
    import numpy as np
    import tifffile

    a = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    a[3, 3, 0] = np.nan
    nan_img = tmp_path / "nan.tif"
    tifffile.imwrite(nan_img, a, photometric="rgb")
    scratch = tmp_path / "s"
    scratch.mkdir()
    for args in (["invert", nan_img, "--out", scratch / "l.st", "--model", env["m"]],
                 ["reconstruct", nan_img, "--out", scratch / "r.png", "--model", env["m"]],
                 ["edit", nan_img, "--mask", env["mask"], "--op", "remove", "--out", scratch / "e.png", "--model", env["m"]],
                 ["edit", env["img"], "--mask", env["mask"], "--target", nan_img, "--out", scratch / "e.png",
                  "--model", env["m"]],
                 ["reconstruct", env["img"], "--mask", nan_img, "--out", scratch / "r.png", "--model", env["m"]]):
        _refused(*_cli(capsys, args)[:2], what="NaN")
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("case", ["empty_mask", "fixed_point_undecodable", "tile", "strength", "ratio", "levels",
                                  "box_ratio", "method", "not_an_image", "fifo_input", "missing_image",
                                  "mask_size", "sigma_start", "start_observation", "noise_sigma", "blur_sigma",
                                  "compare_missing"])
def test_bad_inputs_write_nothing(env, tmp_path, capsys, case) -> None:
    m, img = env["m"], env["img"]
    s = tmp_path / "s"
    s.mkdir()
    if case == "fifo_input":
        os.mkfifo(tmp_path / "in.png")
    (tmp_path / "text.png").write_text("not an image")
    small = tmp_path / "small.png"
    save_image(torch.zeros(3, 8, 8), small)
    args = {
        "empty_mask": ["edit", img, "--mask", env["empty"], "--op", "recolor", "--out", s / "e.png", "--model", m,
                       "--figure", s / "f.png"],
        "fixed_point_undecodable": ["invert", img, "--out", s / "l.st", "--model", m, "--method", "fixed_point",
                                    "--steps", 3],
        "tile": ["invert", img, "--out", s / "l.st", "--model", m, "--tile", -5],
        "strength": ["edit", img, "--mask", env["mask"], "--op", "recolor", "--out", s / "e.png", "--strength", 2],
        "ratio": ["reconstruct", img, "--corruption", "random", "--ratio", 1.5, "--out", s / "r.png", "--model", m],
        "levels": ["reconstruct", img, "--levels", "many", "--out", s / "r.png", "--model", m],
        "box_ratio": ["reconstruct", img, "--corruption", "box", "--ratio", 0.3, "--out", s / "r.png", "--model", m],
        "method": ["invert", img, "--out", s / "l.st", "--model", m, "--method", "nonsense"],
        "not_an_image": ["invert", tmp_path / "text.png", "--out", s / "l.st", "--model", m],
        "fifo_input": ["invert", tmp_path / "in.png", "--out", s / "l.st", "--model", m],
        "missing_image": ["invert", tmp_path / "nope.png", "--out", s / "l.st", "--model", m],
        "mask_size": ["edit", img, "--mask", small, "--op", "recolor", "--out", s / "e.png", "--model", m],
        "sigma_start": ["reconstruct", img, "--sigma-start", -1, "--out", s / "r.png", "--model", m],
        "start_observation": ["reconstruct", img, "--start", "observation", "--out", s / "r.png", "--model", m],
        "noise_sigma": ["reconstruct", img, "--corruption", "noise", "--sigma", 1e300, "--out", s / "r.png",
                        "--model", m],
        "blur_sigma": ["reconstruct", img, "--corruption", "blur", "--sigma", 1e9, "--out", s / "r.png", "--model", m],
        "compare_missing": ["decode", env["lat"], "--out", s / "d.png", "--compare", tmp_path / "nope.png",
                            "--model", m],
    }[case]
    _refused(*_cli(capsys, args + ["--quiet"])[:2])
    assert list(s.iterdir()) == []


def test_fixed_point_latents_that_are_written_decode(env, tmp_path, capsys) -> None:
    code, _, _ = _cli(capsys, ["invert", env["img"], "--out", tmp_path / "fp.st", "--model", env["m"], "--method",
                               "fixed_point", "--steps", 50, "--tile", 0, "--quiet"])
    assert code == 0
    code, lines, _ = _cli(capsys, ["decode", tmp_path / "fp.st", "--out", tmp_path / "fp.png", "--model", env["m"],
                                   "--tile", 0, "--quiet"])
    assert code == 0, lines


def test_latents_record_their_model(env, tmp_path, capsys) -> None:
    from injcert.io import weights_fingerprint
    from injcert.tasks.invert import Latent

    lat = Latent.load(env["lat"])
    from injcert.io import load_checkpoint

    assert lat.model_sha256 == weights_fingerprint(load_checkpoint(env["m"]))
    assert (lat.method, lat.steps, lat.grid) == ("reversible", 4, "geometric")
    # another checkpoint: refused with one line, nothing written; --force decodes anyway
    _refused(*_cli(capsys, ["decode", env["lat"], "--out", tmp_path / "d.png", "--model", env["m2"], "--quiet"])[:2],
             what="--force")
    assert list(tmp_path.iterdir()) == []
    code, _, _ = _cli(capsys, ["decode", env["lat"], "--out", tmp_path / "d.png", "--model", env["m2"], "--force",
                               "--quiet"])
    assert code == 0 and (tmp_path / "d.png").is_file()
    # a latent without a fingerprint (format /2): refused unless --force
    lat.model_sha256 = None
    lat.save(tmp_path / "old.st")
    _refused(*_cli(capsys, ["decode", tmp_path / "old.st", "--out", tmp_path / "o.png", "--model", env["m"]])[:2],
             what="--force")
    assert _cli(capsys, ["decode", tmp_path / "old.st", "--out", tmp_path / "o.png", "--model", env["m"],
                         "--force", "--quiet"])[0] == 0
    # --dtype is not silently ignored
    _refused(*_cli(capsys, ["decode", env["lat"], "--out", tmp_path / "x.png", "--model", env["m"], "--dtype",
                            "float64"])[:2], what="--dtype")
    assert torch.equal(load_image(tmp_path / "o.png"), load_image(env["img"]))


# ============================================================================ I/O errors and the contract


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("output", ["decode --out", "certify --json", "invert --out", "reconstruct --out"])
def test_full_disk_is_one_line_and_leaves_no_temp_file(env, tmp_path, capsys, monkeypatch, output) -> None:
    build, image = OUTPUTS[output]
    out = tmp_path / ("o.png" if image else "o.out")
    out.write_bytes(b"old")  # an existing file stays as it was
    monkeypatch.setattr("injcert.io.os.fsync", _enospc)
    code, lines, _ = _cli(capsys, build(env, out, tmp_path))
    _refused(code, lines, what="No space left")
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(env, tmp_path, capsys) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for output, (build, image) in OUTPUTS.items():
            out = ro / ("o.png" if image else "o.out")
            code, lines, stdout = _cli(capsys, build(env, out, tmp_path))
            _refused(code, lines, what="not writable")
            assert "PASS" not in stdout
    finally:
        ro.chmod(0o755)


def test_debug_shows_the_traceback(env, tmp_path, capsys, monkeypatch) -> None:
    args = ["invert", env["img"], "--out", tmp_path / "l.st", "--model", env["bad"] / "list.ckpt", "--quiet"]
    code, lines, _ = _cli(capsys, args + ["--debug"])
    assert code == 2 and any("Traceback" in line for line in lines) and lines[-1].startswith("injcert invert: error")
    monkeypatch.setenv("INJCERT_DEBUG", "1")
    code, lines, _ = _cli(capsys, args)
    assert code == 2 and any("Traceback" in line for line in lines)


@pytest.mark.parametrize("exc", [ZeroDivisionError, ValueError, KeyError, RuntimeError])
def test_a_bug_keeps_its_traceback(env, tmp_path, monkeypatch, exc) -> None:
    """Only unusable input is exit 2: an exception injcert did not raise on purpose is a bug."""
    import injcert.cli.commands as commands

    def broken(*a, **k):
        raise exc("a bug")

    monkeypatch.setattr(commands, "encode", broken, raising=False)
    monkeypatch.setattr("injcert.tasks.invert.encode", broken)
    with pytest.raises(exc):
        main(["invert", str(env["img"]), "--out", str(tmp_path / "l.st"), "--model", str(env["m"]), "--quiet"])
    assert list(tmp_path.iterdir()) == []


def test_argument_errors_are_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["invert", "img.png", "--out", "x", "--steps", "many"])
    assert e.value.code == 2 and len(_lines(capsys.readouterr().err)) == 1


def test_orphan_temp_files_of_dead_processes_are_removed(tmp_path) -> None:
    dead = tmp_path / ".injcert-999999999-0123456789ab.tmp"
    live = tmp_path / f".injcert-{os.getpid()}-0123456789ab.tmp"
    other = tmp_path / ".injcert-notours.tmp"
    for p in (dead, live, other):
        p.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "f.txt", b"data")
    assert not dead.exists() and live.exists() and other.exists()
    assert clean_orphan_temps(tmp_path) == []


# ============================================================================ training runs


def _refuse_train(capsys, args: list, what: str = "") -> None:
    _refused(*_cli(capsys, ["train"] + args + ["--quiet"])[:2], what=what)


def test_malformed_training_configs(env, tmp_path, capsys) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "cfgdir").mkdir()
    scratch = tmp_path / "s"
    scratch.mkdir()
    for cfg, what in (("list.json", "JSON object"), ("deep.json", "nested too deeply"), ("bad.json", "not valid JSON"),
                      ("cfgdir", "not a regular file"), ("missing.json", "not found")):
        _refuse_train(capsys, ["--config", tmp_path / cfg, "--out", scratch / "t.ckpt"], what)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("damage", ["no_step", "negative_step", "bool_step", "rng", "no_rng", "no_config",
                                    "no_weights", "nan_weights", "changed_seed", "changed_model"])
def test_malformed_or_changed_resume_states(env, tmp_path, capsys, damage) -> None:
    tensors, meta = load_state(str(env["run"]) + ".state")
    meta = dict(meta)
    args: list = []
    if damage == "no_step":
        del meta["step"]
    elif damage == "negative_step":
        meta["step"] = -50
    elif damage == "bool_step":
        meta["step"] = True
    elif damage == "rng":
        tensors["rng/torch"] = tensors["rng/torch"][:10]
    elif damage == "no_rng":
        del tensors["rng/torch"]
    elif damage == "no_config":
        del meta["config"]
    elif damage == "no_weights":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("model/")}
    elif damage == "nan_weights":
        k = next(k for k in tensors if k.startswith("model/") and tensors[k].is_floating_point())
        tensors[k] = torch.full_like(tensors[k], float("nan"))
    elif damage == "changed_seed":
        args = ["--seed", "7"]
    elif damage == "changed_model":
        cfg = dict(TINY, steps=1, checkpoint_every=1, val_batches=0)
        cfg["model"] = dict(cfg["model"], emb_dim=8)
        (tmp_path / "other.json").write_text(json.dumps(cfg))
        args = ["--config", tmp_path / "other.json"]
    state = tmp_path / "r.ckpt.state"
    save_state(state, tensors, meta)
    before = _snapshot(tmp_path)
    _refuse_train(capsys, ["--resume", state, "--steps", 2] + args)
    assert _snapshot(tmp_path) == before


def test_resume_accepts_the_model_path_and_records_changes(env, tmp_path, capsys) -> None:
    for suffix in ("", ".state"):
        shutil.copy(str(env["run"]) + suffix, str(tmp_path / "run.ckpt") + suffix)
    code, lines, _ = _cli(capsys, ["train", "--resume", tmp_path / "run.ckpt", "--steps", 2, "--lr", "0.0005",
                                   "--quiet"])
    assert code == 0, lines
    _, meta = load_state(tmp_path / "run.ckpt.state")
    assert meta["step"] == 2 and meta["config"]["lr"] == 0.0005
    changes = meta["resumed"][-1]
    assert changes["step"] == 1 and changes["changes"]["lr"] == [TINY["lr"], 0.0005]
    from injcert.io import load_checkpoint

    assert load_checkpoint(tmp_path / "run.ckpt").checkpoint_metadata["resumed"] == meta["resumed"]


def test_a_copied_state_never_writes_the_original_log(env, tmp_path, capsys) -> None:
    original_log = env["dir"] / "run.jsonl"
    before = original_log.read_bytes()
    shutil.copy(str(env["run"]) + ".state", tmp_path / "copy.ckpt.state")
    code, lines, _ = _cli(capsys, ["train", "--resume", tmp_path / "copy.ckpt.state", "--steps", 2, "--quiet"])
    assert code == 0
    assert original_log.read_bytes() == before
    own = Path(str(tmp_path / "copy.ckpt") + ".log.jsonl")
    steps = [json.loads(line)["step"] for line in own.read_text().splitlines()]
    assert steps == [1, 2]  # the copied run's lines up to the resumed step, then this run's


def _start_training(tmp_path: Path, out: Path, log: Path) -> subprocess.Popen:
    cfg = dict(TINY, steps=100_000, checkpoint_every=100_000, val_every=100_000, log=str(log))
    (tmp_path / "long.json").write_text(json.dumps(cfg))
    return subprocess.Popen([sys.executable, "-m", "injcert", "train", "--config", str(tmp_path / "long.json"),
                             "--out", str(out), "--quiet"], env=subprocess_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_log(proc: subprocess.Popen, log: Path, lines: int = 2) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < lines):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)


def test_a_second_training_to_the_same_out_is_refused(env, tmp_path, capsys) -> None:
    out, log = tmp_path / "shared.ckpt", tmp_path / "first.jsonl"
    proc = _start_training(tmp_path, out, log)
    try:
        _wait_for_log(proc, log)
        code, lines, _ = _cli(capsys, ["train", "--config", env["cfg"], "--out", out, "--log",
                                       tmp_path / "second.jsonl", "--quiet"])
        _refused(code, lines, what="another training run")
        assert not (tmp_path / "second.jsonl").exists()
        proc.send_signal(signal.SIGINT)  # Ctrl-C: stop at the step boundary and save
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    _, meta = load_state(str(out) + ".state")
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert meta["step"] == steps[-1] >= 2 and steps == list(range(1, steps[-1] + 1))
    assert not Path(str(out) + ".lock").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".injcert-")]


def test_concurrent_decodes_to_one_path_give_one_complete_image(env, tmp_path) -> None:
    """Two decodes race to one PNG: the result is one of the two complete images, never a mix."""
    refs = []
    for i, lat in enumerate((env["lat"], env["lat2"])):
        assert main(["decode", str(lat), "--out", str(tmp_path / f"ref{i}.png"), "--model", str(env["m"]),
                     "--quiet"]) == 0
        refs.append((tmp_path / f"ref{i}.png").read_bytes())
    target = tmp_path / "race.png"
    procs = [subprocess.Popen([sys.executable, "-m", "injcert", "decode", str(lat), "--out", str(target), "--model",
                               str(env["m"]), "--quiet"], env=subprocess_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for lat in (env["lat"], env["lat2"])]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    assert target.read_bytes() in refs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".injcert-")]


@pytest.mark.parametrize("kind", ["file", "fifo", "symlink_to_file", "parent_is_file"])
@pytest.mark.parametrize("command", ["certify --figures", "demo --out", "bench --out"])
def test_output_folders_must_be_folders(env, tmp_path, capsys, command, kind) -> None:
    p = tmp_path / "folder"
    if kind == "file":
        p.write_bytes(b"keep")
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "symlink_to_file":
        (tmp_path / "t.txt").write_bytes(b"keep")
        os.symlink(tmp_path / "t.txt", p)
    else:
        (tmp_path / "afile").write_bytes(b"x")
        p = tmp_path / "afile" / "folder"
    before = _snapshot(tmp_path)
    args = {"certify --figures": ["certify", env["m"], "--figures", p, "--steps", 4, "--samples", 0, "--quiet"],
            "demo --out": ["demo", "--out", p, "--model", env["m"], "--skip-certify"],
            "bench --out": ["bench", "--out", p, "--quick"]}[command]
    _refused(*_cli(capsys, args)[:2])
    assert _snapshot(tmp_path) == before
