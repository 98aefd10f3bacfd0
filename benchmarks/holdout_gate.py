"""How the holdout gate was chosen: on the TRAINING images, the flow with and without it.

``python benchmarks/holdout_gate.py [CKPT] [--size 64] [--masks 2] [--steps 20] [--corruptions ...]``

For every mask (:data:`injcert.cli.compare.CORRUPTION_SETTINGS`, pixel sizes scaled as in the
reconstruction table) on the training images, the PSNR difference to the classical estimate the flow
starts from (``inpaint_biharmonic``; ``lsmr_local`` for ``blur``) of the
reconstruction without the gate (``gate=False``: the flow always kept) and with it, where the
missing pixels near observed ones are validated on hidden random pixels
(:data:`~injcert.tasks.reconstruct.GATE_NEAR` ``"pixels"``) or on the hole moved by half the image
(``"shifted"``, what larger holes always use). Prints the sum over masks per corruption and how many
masks each variant loses to it by more than :data:`LOSS`. The held-out images are measured by
``restoration_by_size.py --ablate-gate``.
"""

from __future__ import annotations

import argparse

import torch

import injcert
import injcert.tasks.reconstruct as rec
from injcert.cli import run_script
from injcert.cli.compare import TUNING_IMAGES, load_batch, markdown_table, scaled_settings
from injcert.data.corruptions import make_corruption
from injcert.metrics import psnr
from injcert.tasks.classical import classical_estimate

#: a mask "loses" to biharmonic by more than this (dB): a gated-off flow keeps the estimate to ~1e-6 dB
LOSS = 0.005
VARIANTS = {"no gate": (False, "pixels"), "gate, pixels": (True, "pixels"), "gate, shifted": (True, "shifted")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--masks", type=int, default=2, help="masks (seeds) per image")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", nargs="+", default=list(TUNING_IMAGES))
    p.add_argument("--corruptions", nargs="+", default=["box", "freeform", "random", "gaps"])
    args = p.parse_args()
    model = injcert.load_checkpoint(args.checkpoint)
    rows = []
    saved = rec.GATE_NEAR
    try:
        for corr in args.corruptions:
            acc = {v: [] for v in VARIANTS}
            for bi, x in enumerate(load_batch(args.images, args.size)[0].split(1)):
                for k in range(args.masks):
                    obs = make_corruption(corr, **scaled_settings(corr, args.size)).sample(x, bi + 10 * k)
                    y = obs.y if corr == "blur" else obs.y * obs.m[:, :1]  # missing pixels carry nothing
                    pb = psnr(classical_estimate(y, obs.m, "auto")[1], x)
                    for v, (gate, near) in VARIANTS.items():
                        rec.GATE_NEAR = near
                        with torch.no_grad():
                            img = rec.reconstruct_full(model, y, obs.m, args.steps, 0, gate=gate).image
                        acc[v].append(psnr(img, x) - pb)
            rows.append([corr] + [f"{sum(a):+.3f} ({sum(d < -LOSS for d in a)}/{len(a)})" for a in acc.values()])
    finally:
        rec.GATE_NEAR = saved
    print(f"checkpoint {args.checkpoint}; {args.size}²; {args.steps} steps; images {', '.join(args.images)}; "
          f"{args.masks} masks each\n")
    print(f"summed ΔPSNR over the classical estimate [dB] (masks that lose more than {LOSS} dB to it)\n")
    print(markdown_table(["corruption", *VARIANTS], rows))


if __name__ == "__main__":
    run_script(main)
