"""How the holdout gate was chosen: on the TRAINING images, the flow with and without it.

``python benchmarks/holdout_gate.py [CKPT] [--size 64] [--masks 3] [--steps 20] [--corruptions ...]``

For every mask (:data:`injcert.cli.compare.CORRUPTION_SETTINGS`, pixel sizes scaled as in the
reconstruction table) on the training images, the PSNR and SSIM differences to the classical
estimate the flow starts from (``inpaint_biharmonic``; ``lsmr_local`` for ``blur``) of the
reconstruction without the gate (``gate=False``: the flow always kept) and with it: the rule on the
RMS error alone or also on the SSIM (:data:`~injcert.tasks.reconstruct.GATE_SSIM`), the missing
pixels near observed ones validated on hidden random pixels
(:data:`~injcert.tasks.reconstruct.GATE_NEAR` ``"pixels"``) or on the hole moved by half the image
(``"shifted"``, what larger holes always use). Prints the sums over masks per corruption and how many
masks each variant loses by more than :data:`LOSS` dB (PSNR) and :data:`LOSS_SSIM` (SSIM). The
held-out images are measured by ``restoration_by_size.py --ablate-gate``. Blur is gated here by the
same rule (:data:`~injcert.tasks.reconstruct.BLUR_FLOW` on); its row is why the shipped default
does not run the blur flow at all.
"""

from __future__ import annotations

import argparse

import torch

import injcert
import injcert.tasks.reconstruct as rec
from injcert.cli import run_script
from injcert.cli.compare import TUNING_IMAGES, markdown_table, tuning_observations
from injcert.metrics import psnr, ssim
from injcert.tasks.classical import classical_estimate

#: a mask "loses" to the estimate by more than this (dB): a gated-off flow keeps it to ~1e-6 dB
LOSS = 0.005
#: ... or by more than this SSIM
LOSS_SSIM = 1e-5
#: name: (gate, GATE_NEAR, GATE_SSIM)
VARIANTS = {"no gate": (False, "pixels", True), "RMS, pixels": (True, "pixels", False),
            "RMS + SSIM, pixels": (True, "pixels", True), "RMS + SSIM, shifted": (True, "shifted", True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--masks", type=int, default=3, help="masks (seeds) per image")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", nargs="+", default=list(TUNING_IMAGES))
    p.add_argument("--corruptions", nargs="+", default=["box", "freeform", "random", "gaps", "blur"])
    args = p.parse_args()
    model = injcert.load_checkpoint(args.checkpoint)
    rows, ssim_rows = [], []
    saved = rec.GATE_NEAR, rec.GATE_SSIM, rec.BLUR_FLOW
    rec.BLUR_FLOW = True  # the gate's own rule for blur too (shipped off: its flow is not run by default)
    try:
        for corr in args.corruptions:
            acc = {v: [] for v in VARIANTS}  # per mask: (ΔPSNR, ΔSSIM)
            for x, y, m in tuning_observations(corr, args.size, args.masks, args.images):
                est = classical_estimate(y, m, "auto")[1]
                pb, sb = psnr(est, x), ssim(est, x)
                for v, (gate, near, with_ssim) in VARIANTS.items():
                    rec.GATE_NEAR, rec.GATE_SSIM = near, with_ssim
                    with torch.no_grad():
                        img = rec.reconstruct_full(model, y, m, args.steps, 0, gate=gate).image
                    acc[v].append((psnr(img, x) - pb, ssim(img, x) - sb))
            for out, i, loss, digits in ((rows, 0, LOSS, 3), (ssim_rows, 1, LOSS_SSIM, 5)):
                out.append([corr] + [f"{sum(d[i] for d in a):+.{digits}f} ({sum(d[i] < -loss for d in a)}/{len(a)})"
                                     for a in acc.values()])
    finally:
        rec.GATE_NEAR, rec.GATE_SSIM, rec.BLUR_FLOW = saved
    print(f"checkpoint {args.checkpoint}; {args.size}²; {args.steps} steps; images {', '.join(args.images)}; "
          f"{args.masks} masks each\n")
    print(f"summed ΔPSNR over the classical estimate [dB] (masks that lose more than {LOSS} dB to it)\n")
    print(markdown_table(["corruption", *VARIANTS], rows))
    print(f"\nsummed ΔSSIM over the classical estimate (masks that lose more than {LOSS_SSIM} to it)\n")
    print(markdown_table(["corruption", *VARIANTS], ssim_rows))


if __name__ == "__main__":
    run_script(main)
