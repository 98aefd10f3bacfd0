"""How the coarse-to-fine estimate was chosen: on the TRAINING images, without the network.

``python benchmarks/pyramid_blend.py [CKPT] [--size 256] [--masks 4] [--images ...] [--corruption box]
[--shipped]``

Boxes, or free-form strokes (:data:`injcert.cli.compare.CORRUPTION_SETTINGS`, widths scaled with the
size) on the training images, several masks each; ``--shipped`` runs only the shipped variant.
Every variant runs :func:`injcert.tasks.reconstruct.reconstruct_full` at ``sigma_start=1e-6`` and one
step, where the network cannot move the fill: what is measured is the pyramid of classical estimates
alone — the number of levels, when a coarse pixel counts as observed
(:data:`~injcert.tasks.reconstruct.PYRAMID_OBSERVED`) and the fade into the level's own estimate
(:data:`~injcert.tasks.reconstruct.PYRAMID_BLEND`). Prints, per variant, the mean PSNR / SSIM
difference to ``inpaint_biharmonic``, the worst PSNR difference and how many masks it wins. The
network's own contribution on the held-out images is ``restoration_by_size.py --levels auto
--ablate-flow``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import injcert
import injcert.tasks.reconstruct as rec
from injcert.cli import run_script
from injcert.cli.compare import TUNING_IMAGES, load_batch, markdown_table, scaled_settings
from injcert.data.corruptions import make_corruption
from injcert.metrics import psnr, ssim
from injcert.tasks.classical import classical_estimate



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--masks", type=int, default=4, help="masks (seeds) per image")
    p.add_argument("--images", nargs="+", default=list(TUNING_IMAGES))
    p.add_argument("--corruption", choices=["box", "freeform"], default="box",
                   help="the holes (widths scaled with the size as in the reconstruction table)")
    p.add_argument("--shipped", action="store_true",
                   help="only the shipped variant (levels auto, PYRAMID_OBSERVED, PYRAMID_BLEND)")
    args = p.parse_args()
    model = injcert.load_checkpoint(args.checkpoint)
    variants = [(levels, observed, blend) for levels in (1, 2, "auto") for observed in ("all", "any")
                for blend in (0.0, 8.0, 16.0)]
    if args.shipped:
        variants = [("auto", rec.PYRAMID_OBSERVED, rec.PYRAMID_BLEND)]
    acc: dict = {v: [] for v in variants}
    saved = rec.PYRAMID_OBSERVED, rec.PYRAMID_BLEND
    try:
        for x in load_batch(args.images, args.size)[0].split(1):
            for seed in range(args.masks):
                obs = make_corruption(args.corruption, **scaled_settings(args.corruption, args.size)).sample(x, seed)
                _, base = classical_estimate(obs.y, obs.m, "inpaint_biharmonic")
                pb, sb = psnr(base, x), ssim(base, x)
                for v in variants:
                    # blend 0 = no fade: a band of 1e-9 px gives every missing pixel the coarse fill
                    rec.PYRAMID_OBSERVED, rec.PYRAMID_BLEND = v[1], max(v[2], 1e-9)
                    with torch.no_grad():
                        img = rec.reconstruct_full(model, obs.y, obs.m, 1, seed, sigma_start=1e-6, levels=v[0]).image
                    acc[v].append((psnr(img, x) - pb, ssim(img, x) - sb))
    finally:
        rec.PYRAMID_OBSERVED, rec.PYRAMID_BLEND = saved
    rows = []
    for (levels, observed, blend), vals in acc.items():
        a = np.array(vals)
        rows.append([levels, observed, blend, a[:, 0].mean(), a[:, 0].min(), f"{int((a[:, 0] > 0).sum())}/{len(a)}",
                     a[:, 1].mean(), f"{int((a[:, 1] > 0).sum())}/{len(a)}"])
    print(f"checkpoint {args.checkpoint}; {args.corruption} at {args.size}²; images {', '.join(args.images)}; {args.masks} masks each\n")
    print(markdown_table(["levels", "coarse observed", "blend [px]", "ΔPSNR mean", "ΔPSNR worst", "PSNR wins",
                          "ΔSSIM mean", "SSIM wins"], rows))


if __name__ == "__main__":
    run_script(main)
