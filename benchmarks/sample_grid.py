"""Unconditional samples of checkpoints side by side: ``python benchmarks/sample_grid.py OUT.png CKPT [CKPT ...]``.

Each checkpoint decodes the same three N(0, I) latents (seed 0, 64², 50 reversible steps). A flow
whose linear part is the Wiener filter of *white* data turns white noise into white-ish noise; with
the spectral band skip the samples get the $1/|f|^2$ spectrum of natural images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from injcert.cli import run_script  # noqa: E402
from injcert.cli.commands import side_by_side  # noqa: E402
from injcert.io import load_checkpoint  # noqa: E402
from injcert.tasks.invert import decode  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the PNG to write")
    ap.add_argument("checkpoints", nargs="+")
    args = ap.parse_args()
    out, checkpoints = args.out, args.checkpoints
    models = [load_checkpoint(path) for path in checkpoints]  # a bad one fails before any work
    panels = []
    for k, (path, model) in enumerate(zip(checkpoints, models)):
        z = torch.randn(3, model.in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            x = decode(model, z, steps=50)
        panels += [(f"[{k}] {Path(path).name} #{i}", x[i:i + 1].clamp(-1, 1)) for i in range(3)]
    side_by_side(panels, out, inputs=list(checkpoints))
    print(f"wrote {out}: " + ", ".join(f"[{k}] {p}" for k, p in enumerate(checkpoints)))


if __name__ == "__main__":
    run_script(main)
