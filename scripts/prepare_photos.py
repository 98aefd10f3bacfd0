"""Downscale a folder of photographs into a training folder (what the shipped restorer was trained on).

    python scripts/prepare_photos.py SRC_DIR OUT_DIR [--sides 320 640]

Every JPEG/PNG under ``SRC_DIR`` is written to ``OUT_DIR`` as PNG at each short side in ``--sides``
(anti-aliased with :func:`skimage.transform.resize`; the alpha channel dropped). Wallpapers are
2–6 megapixels: at full size a 48² training patch sees a nearly flat region, at 320–640 px it sees
what a held-out image of a few hundred pixels shows.

The shipped model used Debian's ``mate-backgrounds`` (``apt-get install mate-backgrounds``): the
twelve photographs of ``/usr/share/backgrounds/mate/nature`` and ``desktop/GreenTraditional.jpg``,
licensed GPL-2+ (``/usr/share/doc/mate-backgrounds/copyright`` names each author). They are not
redistributed here; this script rebuilds the folder from the package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from skimage import io, transform
from skimage.util import img_as_ubyte


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--sides", type=int, nargs="+", default=[320, 640])
    args = ap.parse_args()
    src, out = Path(args.src), Path(args.out)
    files = sorted(f for f in src.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png") and f.is_file())
    if not files:
        print(f"prepare_photos: no JPEG/PNG under {src}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        try:
            im = io.imread(f)
        except (OSError, ValueError) as exc:
            print(f"prepare_photos: skipping {f}: {exc}", file=sys.stderr)
            continue
        im = np.atleast_3d(im)[..., :3]
        if im.shape[-1] < 3:  # grey (with or without alpha): the same value in the three channels
            im = np.repeat(im[..., :1], 3, axis=-1)
        h, w = im.shape[:2]
        for side in args.sides:
            s = side / min(h, w)
            small = transform.resize(im, (round(h * s), round(w * s)), anti_aliasing=True)
            io.imsave(out / f"{f.stem}_{side}.png", img_as_ubyte(small), check_contrast=False)
    print(f"prepare_photos: wrote {len(files) * len(args.sides)} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
