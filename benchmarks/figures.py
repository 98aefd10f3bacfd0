"""Figures of two checkpoints side by side: reconstructions of every corruption, edits, samples.

    python benchmarks/figures.py OUT_DIR CKPT [CKPT ...] [--labels old new] [--size 256] [--image chelsea] [--steps 20]

Writes ``OUT_DIR/reconstruction.png`` (one row per corruption: the observation, the best classical
method, each checkpoint, the truth; the PSNR of each in its label), ``OUT_DIR/edits.png`` (remove, with the
smooth fill alone and with the surroundings' texture, and recolor with each model: the input, the
target, the edit) and ``OUT_DIR/samples.png`` (the same three N(0, I)
latents decoded by each model). Held-out image, the same corruptions and seeds for every method.
Prints one line per figure with the numbers in it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from injcert.benchlib import CORRUPTION_SETTINGS, classical_baselines, load_batch, scaled_settings  # noqa: E402
from injcert.cli import run_script  # noqa: E402
from injcert.cli.commands import side_by_side  # noqa: E402
from injcert.data.corruptions import make_corruption  # noqa: E402
from injcert.io import load_checkpoint  # noqa: E402
from injcert.metrics import grain_ratio, psnr  # noqa: E402
from injcert.tasks.edit import edit_full  # noqa: E402
from injcert.tasks.invert import decode  # noqa: E402
from injcert.tasks.reconstruct import reconstruct_full  # noqa: E402


def _reconstructions(models, x, steps, out: Path) -> None:
    panels = []
    for kind in CORRUPTION_SETTINGS:
        params = scaled_settings(kind, x.shape[-1])
        obs = make_corruption(kind, **params).sample(x, 0)
        blur_sigma = params.get("sigma", 2.0) if kind == "blur" else 2.0
        name, best = max(classical_baselines(kind, obs.y, obs.m, blur_sigma), key=lambda c: float(psnr(c[1], x)))
        row = [(f"{kind}: observed", obs.y), (f"{name} {float(psnr(best, x)):.2f} dB", best)]
        for label, model in models:
            with torch.no_grad():
                rec = reconstruct_full(model, obs.y, obs.m, steps, 0, blur_sigma=blur_sigma)
            row.append((f"{label} {float(psnr(rec.image, x)):.2f} dB ({rec.estimate_method})", rec.image))
        row.append(("truth", x))
        print("reconstruction:", kind, "; ".join(lbl for lbl, _ in row[1:-1]))
        panels.append(row)
    _grid(panels, out)


def _edits(models, x, steps, out: Path) -> None:
    size = x.shape[-1]
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4: size // 2, size // 3: 2 * size // 3] = 1
    panels = []
    for op, texture in (("remove", False), ("remove", True), ("recolor", True)):
        name = op if op != "remove" else f"remove, {'textured' if texture else 'smooth fill'}"
        for label, model in models:
            with torch.no_grad():
                res = edit_full(model, x, mask, op, strength=0.6, steps=steps, texture=texture)
            g = grain_ratio(res.image, mask)
            print(f"edit: {name} {label}: grain inside/ring {g:.3f}, outside max |change| {res.outside_max_abs:g}")
            panels.append([(f"{name} ({label})", x), ("target", res.target), (f"edited, grain {g:.2f}", res.image)])
    _grid(panels, out)


def _samples(models, size: int, out: Path) -> None:
    z = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    panels = []
    for label, model in models:
        with torch.no_grad():
            imgs = decode(model, z, None, steps=50, method="reversible")
        panels.append([(f"{label} #{i}", imgs[i:i + 1].clamp(-1, 1)) for i in range(3)])
    print("samples: written")
    _grid(panels, out)


def _grid(rows, out: Path) -> None:
    """Stack the rows of labelled panels (each row one ``side_by_side`` strip) into one PNG."""
    import numpy as np
    from skimage import io

    strips = []
    with __import__("tempfile").TemporaryDirectory() as tmp:
        for i, row in enumerate(rows):
            p = Path(tmp) / f"{i}.png"
            side_by_side(row, p)
            strips.append(io.imread(p))
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    io.imsave(out, np.concatenate(strips, axis=0), check_contrast=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--labels", nargs="+", help="one label per checkpoint (default: the file names)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--image", default="chelsea")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip", nargs="*", default=[], choices=["reconstruction", "edits", "samples"])
    args = ap.parse_args()
    labels = args.labels or [Path(c).stem for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        ap.error(f"--labels needs one label per checkpoint ({len(args.checkpoints)}), got {len(labels)}")
    models = [(lab, load_checkpoint(c).eval()) for lab, c in zip(labels, args.checkpoints)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x = load_batch([args.image], args.size)[0]
    if "reconstruction" not in args.skip:
        _reconstructions(models, x, args.steps, out / "reconstruction.png")
    if "edits" not in args.skip:
        _edits(models, x, args.steps, out / "edits.png")
    if "samples" not in args.skip:
        _samples(models, min(args.size, 128), out / "samples.png")


if __name__ == "__main__":
    run_script(main)
