"""How the start level of reconstruction was chosen: on the TRAINING images (coffee, camera).

``python benchmarks/tune_start_levels.py [CKPT] [KIND ...]`` prints (for the named kinds only, if given), per corruption, the PSNR of every
classical baseline and of ``reconstruct_full(..., sigma_start=s)`` for a few start levels ``s``
(64² and 128²), and for noise the start from a classical denoiser's estimate (BM3D, nl-means) at
``s`` = 0.01, 0.02, 0.05 against BM3D itself (64²). The defaults in
:data:`injcert.tasks.reconstruct.START_SIGMA` are the best of these; the held-out images are
measured separately by ``benchmarks/restoration_by_size.py``.
"""

from __future__ import annotations

import argparse

import torch

import injcert
from injcert.cli import run_script
from injcert.data.corruptions import make_corruption
from injcert.data.grid import square_image
from injcert.metrics import psnr
from injcert.cli.compare import CORRUPTION_SETTINGS, classical_baselines
from injcert.tasks.reconstruct import reconstruct_full

TRAIN = ["coffee", "camera"]


def _image(name: str, size: int) -> torch.Tensor:
    x = square_image(name, size).unsqueeze(0)
    return x.expand(1, 3, size, size).contiguous() if x.shape[1] == 1 else x


def _mean(res: dict) -> dict:
    return {k: round(sum(v) / len(v), 3) for k, v in sorted(res.items())}


KINDS = ("box", "random", "gaps", "blur", "noise")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    ap.add_argument("kinds", nargs="*", metavar="KIND", help=f"any of {', '.join(KINDS)} (default: all)")
    args = ap.parse_args()
    kinds = args.kinds
    if set(kinds) - set(KINDS):  # not choices=: argparse < 3.12 rejects an empty nargs="*" list with choices
        ap.error(f"unknown kind(s) {sorted(set(kinds) - set(KINDS))}; choose from {', '.join(KINDS)}")
    model = injcert.load_checkpoint(args.checkpoint)
    grid = {"box": [0.02, 0.05, 0.1, 0.2, 0.5, 1.0], "random": [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1],
            "gaps": [0.001, 0.002, 0.005, 0.01, 0.02], "blur": [0.005, 0.01, 0.02, 0.05, 0.1, 0.2]}
    for kind, sigmas in grid.items():
        if kinds and kind not in kinds:
            continue
        res: dict = {}
        for size in (64, 128):
            for name in TRAIN:
                x = _image(name, size)
                obs = make_corruption(kind, **CORRUPTION_SETTINGS[kind]).sample(x, 0)
                for lab, img in classical_baselines(kind, obs.y, obs.m):
                    res.setdefault(f"{lab}@{size}", []).append(psnr(img, x))
                for s in sigmas:
                    r = reconstruct_full(model, obs.y, obs.m, 20, 0, sigma_start=s)
                    res.setdefault(f"s={s}@{size}", []).append(psnr(r.image, x))
        print(kind, _mean(res), flush=True)
    if kinds and "noise" not in kinds:
        return
    res = {}
    for name in TRAIN:
        x = _image(name, 64)
        obs = make_corruption("noise", sigma=0.1).sample(x, 0)
        res.setdefault("bm3d", []).append(psnr(classical_baselines("noise", obs.y, obs.m)[2][1], x))
        r = reconstruct_full(model, obs.y, obs.m, 20, 0, start="observation")
        res.setdefault("from the observation", []).append(psnr(r.image, x))
        for s in (0.01, 0.02, 0.05, 0.1):
            for est in ("bm3d", "denoise_nl_means"):
                r = reconstruct_full(model, obs.y, obs.m, 20, 0, start="estimate", estimate=est, sigma_start=s)
                res.setdefault(f"{est} s={s}", []).append(psnr(r.image, x))
    print("noise", _mean(res), flush=True)


if __name__ == "__main__":
    run_script(main)
