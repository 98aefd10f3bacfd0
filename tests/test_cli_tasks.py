"""The image commands end to end on PNG files: invert/decode bit-exact, reconstruct, edit, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from injcert.cli import main
from injcert.data.images import load_image, save_image
from injcert.io import save_checkpoint

from helpers import tiny_unet


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    model = tiny_unet(lipschitz_budget=5.0, data_variance=0.25)
    save_checkpoint(model, d / "m.ckpt")
    img = torch.rand(3, 20, 24) * 2 - 1
    save_image(img, d / "img.png")
    mask = torch.zeros(1, 20, 24)
    mask[:, 5:12, 6:15] = 1
    save_image(mask * 2 - 1, d / "mask.png")
    return {"dir": d, "model": d / "m.ckpt", "img": d / "img.png", "mask": d / "mask.png"}


def _run(capsys, args: list[str]) -> tuple[int, dict]:
    code = main(args)
    out = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(out[-1]) if out and out[-1].startswith("{") else {})


def test_invert_then_decode_is_bit_exact(files, capsys) -> None:
    d = files["dir"]
    code, info = _run(capsys, ["invert", str(files["img"]), "--out", str(d / "lat.safetensors"), "--model",
                               str(files["model"]), "--steps", "6", "--quiet", "--tile", "16", "--figure", str(d / "f.png")])
    assert code == 0 and info["round_trip_max_abs"] == 0.0 and (d / "f.png").exists()
    code, info = _run(capsys, ["decode", str(d / "lat.safetensors"), "--out", str(d / "back.png"), "--model",
                               str(files["model"]), "--compare", str(files["img"]), "--quiet"])
    assert code == 0 and info["max_abs_vs_compare"] == 0.0
    assert torch.equal(load_image(d / "back.png"), load_image(files["img"]))


def test_reconstruct_and_edit(files, capsys) -> None:
    d = files["dir"]
    code, info = _run(capsys, ["reconstruct", str(files["img"]), "--corruption", "box", "--out", str(d / "r.png"),
                               "--model", str(files["model"]), "--steps", "4", "--quiet"])
    assert code == 0 and "psnr" in info and (d / "r.png").exists()
    # the holdout gate's record; the image is the ungated one (--no-gate) where the flow was kept, the
    # one started at GATE_OFF (--sigma-start 1e-6, which runs no gate) where it was not
    gate, sim = info["holdout_rms"], info["holdout_ssim"]
    assert gate["flow_kept"] == (gate["flow"] < gate["start"] and sim["flow"] >= sim["start"])
    same_as = ["--no-gate"] if gate["flow_kept"] else ["--sigma-start", "1e-6"]
    code, other = _run(capsys, ["reconstruct", str(files["img"]), "--corruption", "box", "--out",
                                str(d / "r_other.png"), "--model", str(files["model"]), "--steps", "4", "--quiet",
                                *same_as])
    assert code == 0 and "holdout_rms" not in other and "holdout_ssim" not in other
    assert torch.equal(load_image(d / "r_other.png"), load_image(d / "r.png"))
    code, info = _run(capsys, ["reconstruct", str(files["img"]), "--mask", str(files["mask"]), "--out",
                               str(d / "r2.png"), "--model", str(files["model"]), "--steps", "4", "--quiet"])
    assert code == 0
    # noise: the gate's record is the two SURE estimates (no SSIM); --no-gate records none
    code, info = _run(capsys, ["reconstruct", str(files["img"]), "--corruption", "noise", "--out", str(d / "rn.png"),
                               "--model", str(files["model"]), "--steps", "4", "--quiet"])
    sure = info["sure_rms"]
    assert code == 0 and "holdout_rms" not in info and sure["flow_kept"] == (sure["flow"] < sure["start"])
    code, other = _run(capsys, ["reconstruct", str(files["img"]), "--corruption", "noise", "--out",
                                str(d / "rn_other.png"), "--model", str(files["model"]), "--steps", "4", "--quiet",
                                "--no-gate"])
    assert code == 0 and "sure_rms" not in other
    assert torch.equal(load_image(d / "rn_other.png"), load_image(d / "rn.png")) == sure["flow_kept"]
    code, info = _run(capsys, ["edit", str(files["img"]), "--mask", str(files["mask"]), "--op", "recolor",
                               "--out", str(d / "e.png"), "--model", str(files["model"]), "--steps", "4", "--quiet"])
    assert code == 0 and info["outside_max_abs"] == 0.0


@pytest.mark.parametrize("args", [
    ["invert", "/no/such/image.png", "--out", "/tmp/x.safetensors"],
    ["decode", "/no/such/latent.safetensors", "--out", "/tmp/x.png"],
    ["reconstruct", "chelsea", "--corruption", "random", "--ratio", "1.5", "--out", "/tmp/x.png"],
])
def test_bad_input_is_one_line_and_exit_2(files, capsys, args) -> None:
    code = main(args + ["--model", str(files["model"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
