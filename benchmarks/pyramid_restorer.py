"""Should a coarse-to-fine start compete with the restorer R(c)? On the TRAINING images.

``python benchmarks/pyramid_restorer.py [CKPT] [--sizes 256 512] [--masks 1] [--steps 20]
[--corruptions box] [--first 0]``

Holes far from observed pixels start from the coarse-to-fine pyramid. With
:data:`~injcert.tasks.reconstruct.PYRAMID_VS_RESTORER` the pyramid's hold-out gate also scores
$R(c)$ of the same hidden observation on the same hidden pixels, and where $R(c)$ restores them
better (a lower RMS error, an SSIM no lower) the image is restored from $R(c)$ without the pyramid.
For every mask that starts from the pyramid (:data:`~injcert.benchlib.TUNING_IMAGES`, masks of
:func:`~injcert.benchlib.tuning_observations`) this prints the hole PSNR of the pyramid result (the
rule off), of the restorer's route, of the rule, and of the classical fill; then, per corruption
and size, the sums over the classical fill and how often the rule chose the better of the two.
"""

from __future__ import annotations

import argparse

import torch

import injcert
import injcert.tasks.reconstruct as rec
from injcert.benchlib import TUNING_IMAGES, markdown_table, tuning_observations
from injcert.cli import run_script
from injcert.metrics import region_psnr
from injcert.tasks.classical import classical_estimate


def _one(model, x, y, m, steps, seed):
    """``(pyramid, restorer route, rule, classical)`` hole PSNRs, or ``None`` without a pyramid start."""
    hole = 1 - m[:, :1]
    rule = rec.reconstruct_full(model, y, m, steps, seed)
    switched = rule.pyramid_holdout is not None
    if not switched and not (rule.estimate_method or "").startswith("pyramid"):
        return None
    other = rec.reconstruct_full(model, y, m, steps, seed, **(
        {"levels": 0, "estimate": rec.RESTORER} if not switched else {}))
    if switched:  # the rule took R(c): compute the pyramid result with the rule off
        flag, rec.PYRAMID_VS_RESTORER = rec.PYRAMID_VS_RESTORER, False
        try:
            other = rec.reconstruct_full(model, y, m, steps, seed)
        finally:
            rec.PYRAMID_VS_RESTORER = flag
    pyr, route = (other, rule) if switched else (rule, other)
    score = [region_psnr(r.image, x, hole) for r in (pyr, route, rule)]
    return (*score, region_psnr(classical_estimate(y, m, "auto")[1], x, hole))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--masks", type=int, default=1, help="masks (seeds) per image")
    p.add_argument("--first", type=int, default=0, help="skip the masks before this index")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", nargs="+", default=list(TUNING_IMAGES))
    p.add_argument("--corruptions", nargs="+", default=["box"])
    args = p.parse_args()
    model = injcert.load_checkpoint(args.checkpoint)
    rows = []
    for size in args.sizes:
        for corr in args.corruptions:
            got = []
            for i, (x, y, m) in enumerate(tuning_observations(corr, size, args.masks, args.images)):
                if i < args.first:
                    continue
                with torch.no_grad():
                    one = _one(model, x, y, m, args.steps, seed=i)
                if one is not None:
                    got.append(one)
                    print(f"{size} {corr} #{i}: pyramid {one[0]:.2f} restorer {one[1]:.2f} rule {one[2]:.2f} "
                          f"classical {one[3]:.2f}", flush=True)
            if got:
                rows.append([f"{size}²", corr, len(got)] + [f"{sum(o[k] - o[3] for o in got):+.2f}" for k in range(3)]
                            + [sum(o[2] >= max(o[0], o[1]) - 0.005 for o in got)])
    print(markdown_table(["size", "corruption", "pyramid masks", "Σ pyramid − classical [dB]",
                          "Σ restorer − classical", "Σ rule − classical", "rule chose the better"], rows))


if __name__ == "__main__":
    run_script(main)
