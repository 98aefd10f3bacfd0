"""Where should a hole start from the mean of R(c) and the classical fill? Chosen on photographs
neither network was trained on.

    sh scripts/tuning_photos.sh photos_tuning/
    python benchmarks/start_blend.py [CKPT] --images photos_tuning/ [--sizes 64 128 256] [--masks 2]
        [--corruptions box freeform random gaps] [--distances 3 4 6 8 12]

For every mask (:func:`~injcert.benchlib.tuning_observations`, one image per call as a user restores
one photograph), the hole PSNR over the classical fill of: $R(c)$ alone; the start check's choice
between the two (:func:`~injcert.tasks.start_levels.start_choice` with ``START_MARGIN``, what a
single-scale start used before); their mean; the mean only where the hole's farthest pixel lies
more than ``d`` pixels from an observed one, the check elsewhere (one column per ``--distances``,
:data:`~injcert.tasks.reconstruct.START_BLEND` is one of them); and the same beyond
``START_BLEND`` with a second check there, between the mean and the classical fill (the mean unless
its cross-validated error exceeds the fill's by ``START_MARGIN``). Printed: the mean gain per mask, in
dB, per size and mask kind, and the total over all of them. The starts only: the flow and the gate
that follow are the same for all. ``--images`` defaults to the *training* images ``TUNING_IMAGES``,
on which $R(c)$, which has learnt them, looks better than it is.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import injcert  # noqa: E402
from injcert.benchlib import TUNING_IMAGES, markdown_table, tuning_observations  # noqa: E402
from injcert.cli import run_script  # noqa: E402
from injcert.data.corruptions import expand_map  # noqa: E402
from injcert.data.images import image_files  # noqa: E402
from injcert.metrics import region_psnr  # noqa: E402
from injcert.tasks.classical import classical_estimate  # noqa: E402
from injcert.tasks.reconstruct import START_BLEND, START_MARGIN, _blend_estimate  # noqa: E402
from injcert.tasks.start_levels import _distance_to_known, start_choice  # noqa: E402


def _keeps(check) -> bool:
    """Whether a start check ``(contender's error, classical error)`` keeps the contender (``START_MARGIN``)."""
    return check is None or check[0] <= START_MARGIN * check[1]


@torch.no_grad()
def _gains(model, x, y, m, distances):
    """Hole PSNR over the classical fill of R(c), the check's choice, the mean, the mean beyond each d,
    and the mean beyond ``START_BLEND`` checked against the fill (else the check's choice)."""
    m = expand_map(m)
    hole = (m[:, :1] != 1).to(x.dtype)
    r, c = model.anchor(y, m), classical_estimate(y, m, "auto")[1]
    p_r, p_c, p_mean = (region_psnr(e, x, hole) for e in (r, c, 0.5 * (r + c)))
    p_check = p_r if _keeps(start_choice(y, m, model.anchor)) else p_c
    far = _distance_to_known(m[:, :1] == 1)
    wide = START_BLEND is not None and far > START_BLEND
    p_checked = (p_mean if _keeps(start_choice(y, m, partial(_blend_estimate, model))) else p_c) if wide else p_check
    return ([p_r - p_c, p_check - p_c, p_mean - p_c] + [(p_mean if far > d else p_check) - p_c for d in distances]
            + [p_checked - p_c])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    ap.add_argument("--images", nargs="+", default=list(TUNING_IMAGES),
                    help="folders of photographs, files or bundled names (default: the training images)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--masks", type=int, default=2)
    ap.add_argument("--corruptions", nargs="+", default=["box", "freeform", "random", "gaps"])
    ap.add_argument("--distances", type=float, nargs="+", default=[3, 4, 6, 8, 12])
    args = ap.parse_args()
    model = injcert.load_checkpoint(args.checkpoint).eval()
    images = image_files(args.images)
    cols = (["R(c)", f"check ({START_MARGIN:g})", "mean"] + [f"mean beyond {d:g}" for d in args.distances]
            + [f"mean beyond {START_BLEND:g}, checked"])
    rows, total = [], [0.0] * len(cols)
    for size in args.sizes:
        for kind in args.corruptions:
            got = [_gains(model, x, y, m, args.distances) for x, y, m in tuning_observations(kind, size, args.masks, images)]
            mean = [sum(g[k] for g in got) / len(got) for k in range(len(cols))]
            total = [t + sum(g[k] for g in got) for k, t in enumerate(total)]
            rows.append([f"{size}²", kind, len(got)] + [f"{v:+.3f}" for v in mean])
            print(f"{size}² {kind}: " + ", ".join(f"{c} {v:+.3f}" for c, v in zip(cols, mean)), flush=True)
    rows.append(["all", "", "", *(f"{t:+.1f} (sum)" for t in total)])
    print(f"\nimages: {len(images)} ({', '.join(Path(i).stem for i in images)}); {args.masks} masks each; "
          "hole PSNR over the classical fill, mean per mask [dB]\n")
    print(markdown_table(["size", "mask", "masks"] + cols, rows))


if __name__ == "__main__":
    run_script(main)
