"""The texture of a removed region: the smooth fill against the fill plus the surroundings' texture.

    python benchmarks/edit_texture.py [CKPT] [--images coffee camera ...] [--size 128] [--steps 50]
        [--rings 8] [--scales 2] [--robust 0.5] [--local yes no] [--colour yes no] [--out edit_texture.png]

On each image, the demo's box (the upper middle) is removed by :func:`injcert.tasks.edit.edit_full`
with ``target="remove"``: the model's fill alone (``texture=False``), and the fill plus
:func:`~injcert.tasks.edit.ring_texture` for each ``(ring, scale, robust)`` given (robust 0: the
amplitude of the ring's variance; 1: of its median deviation). Prints the grain ratio (Laplacian std inside over a
4-px ring; a natural region is near 1, a smooth fill near 0), the colour grain ratio and the seam
energy next to the input's, and writes one row of images per image (input first), 3× enlarged, so
the texture can be seen, not only measured. Choose on training images (``TUNING_IMAGES``); report on
held-out ones (``astronaut``, ``chelsea``, scikit-learn's ``china`` and ``flower`` where installed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import injcert  # noqa: E402
from injcert.benchlib import grain_cells, load_batch, save_image_rows  # noqa: E402
from injcert.cli import run_script  # noqa: E402
from injcert.tasks import edit as edit_module  # noqa: E402


def _variants(rings, scales, robust, local, colour):
    """``(label, texture options or None)``: the smooth fill, then each ``(ring, scale, robust, local,
    colour)``."""
    out = [("smooth", None)]
    for ring in rings:
        for scale in scales:
            out += [(f"ring {ring}, scale {scale:g}, robust {b:g}, {'local' if lo else 'stationary'}, "
                     f"{'colour' if co else 'luma'}",
                     {"ring": ring, "scale": scale, "robust": b, "local": lo, "colour": co})
                    for b in robust for lo in local for co in colour]
    return out


def _target(model, x, mask, options):
    """The remove target: the fill, plus the texture with ``options`` inside the mask."""
    fill = edit_module.make_target(x, mask, "remove", model=model, texture=False)
    if options is None:
        return fill
    tex = edit_module.ring_texture(x, mask, **options).to(fill)
    return torch.where((mask > 0.5).expand_as(x), fill + tex, fill)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    ap.add_argument("--images", nargs="+", default=["astronaut", "chelsea"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rings", nargs="+", type=int, default=[edit_module.TEXTURE_RING])
    ap.add_argument("--scales", nargs="+", type=float, default=[edit_module.TEXTURE_SCALE])
    ap.add_argument("--robust", nargs="+", type=float, default=[edit_module.TEXTURE_ROBUST])
    ap.add_argument("--local", nargs="+", choices=["yes", "no"], default=["yes"],
                    help="the amplitude follows the nearest part of the ring (yes) or is the same everywhere (no)")
    ap.add_argument("--colour", nargs="+", choices=["yes", "no"], default=["no"],
                    help="the texture of every channel's detail (yes) or the luminance's on every channel (no)")
    ap.add_argument("--out", default="edit_texture.png")
    args = ap.parse_args()
    model = injcert.load_checkpoint(args.checkpoint).eval()
    size = args.size
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4: size // 2, size // 3: 2 * size // 3] = 1
    print("| image | fill | grain ratio | colour grain ratio | seam energy |\n|---|---|---|---|---|")
    rows = []
    for name, x in zip(args.images, load_batch(args.images, size)[0].split(1)):
        print(f"| {name} | input | {grain_cells(x, mask)} |", flush=True)
        row = [x[0]]
        for label, options in _variants(args.rings, args.scales, args.robust, [v == "yes" for v in args.local],
                                        [v == "yes" for v in args.colour]):
            with torch.no_grad():
                r = edit_module.edit_full(model, x, mask, _target(model, x, mask, options), steps=args.steps)
            print(f"| {name} | {label} | {grain_cells(r.image, mask)} |", flush=True)
            row.append(r.image[0])
        rows.append(row)
    save_image_rows(rows, args.out)

if __name__ == "__main__":
    run_script(main)
