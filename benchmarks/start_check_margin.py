"""How often the start check picks the better start, and what its wrong picks cost, by margin.

    python benchmarks/start_check_margin.py [CKPT] [--sizes 64 256] [--masks 2] [--margins 1 1.05 1.1 1.2 1.5 inf]

On the *training* images the reconstruction defaults are chosen on (``TUNING_IMAGES``), one image
per call as a user restores one photograph: for each mask kind, the true RMS error in the hole of
the model's restorer $R(c)$ and of the classical fill, and the start check's cross-validated errors
(:func:`injcert.tasks.start_levels.start_choice`). For each margin $\\tau$ (``R(c)`` starts iff its
checked error is at most $\\tau$ times the classical one; inf = always $R(c)$) prints how many
choices were wrong and the summed regret: the hole error of the chosen start over the better one's,
in dB, per size and mask kind. ``START_MARGIN`` in :mod:`injcert.tasks.reconstruct` was chosen here.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import injcert  # noqa: E402
from injcert.benchlib import TUNING_IMAGES, tuning_observations  # noqa: E402
from injcert.cli import run_script  # noqa: E402
from injcert.data.corruptions import expand_map  # noqa: E402
from injcert.tasks.classical import classical_estimate  # noqa: E402
from injcert.tasks.start_levels import start_choice  # noqa: E402

KINDS = ("box", "freeform", "random", "gaps")


def _cases(model, size: int, masks: int, images):
    """``(kind, true R/classical hole RMS ratio, checked ratio)`` per image and mask."""
    out = []
    for kind in KINDS:
        for x, y, m in tuning_observations(kind, size, masks, images):
            m = expand_map(m)
            with torch.no_grad():
                sel = (m[:, :1] != 1).expand_as(x)
                rms = [float((e.double()[sel] - x.double()[sel]).pow(2).mean().sqrt())
                       for e in (model.anchor(y, m), classical_estimate(y, m, "auto")[1])]
                check = start_choice(y, m, model.anchor)
            out.append((kind, rms[0] / rms[1], check[0] / check[1] if check else float("nan")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--masks", type=int, default=2)
    ap.add_argument("--images", nargs="+", default=list(TUNING_IMAGES),
                    help="images to choose on (bundled names or files; default: the training images TUNING_IMAGES)")
    ap.add_argument("--margins", nargs="+", type=float, default=[1.0, 1.05, 1.1, 1.2, 1.5, math.inf])
    args = ap.parse_args()
    model = injcert.load_checkpoint(args.checkpoint).eval()
    cases = {size: _cases(model, size, args.masks, args.images) for size in args.sizes}
    cols = [f"{s}² {k}" for s in args.sizes for k in KINDS]
    print(f"images {', '.join(Path(i).stem for i in args.images)}; {args.masks} masks each; regret in dB of hole RMS (wrong choices)\n")
    print("| margin | " + " | ".join(cols) + " | total |")
    print("|---" * (len(cols) + 2) + "|")
    for tau in args.margins:
        cells, total, wrong_all = [], 0.0, 0
        for size in args.sizes:
            for kind in KINDS:
                regret, wrong = 0.0, 0
                for k, true, checked in cases[size]:
                    if k != kind:
                        continue
                    use_r = math.isnan(checked) or checked <= tau
                    regret += (20 * math.log10(true) if use_r else 0.0) - min(0.0, 20 * math.log10(true))
                    wrong += use_r != (true <= 1)
                cells.append(f"{regret:.1f} ({wrong})")
                total += regret
                wrong_all += wrong
        print(f"| {tau:g} | " + " | ".join(cells) + f" | {total:.1f} ({wrong_all}) |", flush=True)


if __name__ == "__main__":
    run_script(main)
