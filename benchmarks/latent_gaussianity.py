"""How Gaussian the encoded latents of the held-out images are, for checkpoints side by side.

    python benchmarks/latent_gaussianity.py CKPT [CKPT ...] [--size 128] [--steps 50] [--linear-part]

Each held-out image is resized to ``size``² (``square_image``, as the demo does), encoded by the
exact reversible flow (unconditional) and its $x$-space state at $t_{\\max}$ divided by
$\\sigma(t_{\\max})$ is summarised by ``injcert.metrics.latent_statistics`` (white noise: std 1,
lag-1 autocorrelation 0, spectrum flatness 1).

``--linear-part`` adds, for every checkpoint, the same flow with the learned terms switched off
(the deep path's ``gain`` and the condition-only head set to 0): the exact linear part alone, e.g. the
spectral band skip's Wiener slopes. What the learned part changes is the difference of the two rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from injcert.data.grid import square_image  # noqa: E402
from injcert.data.images import HELDOUT_IMAGES  # noqa: E402
from injcert.cli import run_script  # noqa: E402
from injcert.io import load_checkpoint  # noqa: E402
from injcert.metrics import latent_statistics  # noqa: E402
from injcert.tasks.invert import encode  # noqa: E402


def latent(model, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The demo's latent: the reversible encode's x-space state at t_max over sigma(t_max)."""
    with torch.no_grad():
        return encode(model, x, steps=steps, method="reversible").standardized()


def linear_part(model):
    """A copy of ``model`` with the learned terms zeroed: ``gain`` (the deep path's output factor) and
    the condition-only head, so that the denoiser is its exact linear part $K_t x$."""
    import copy

    lin = copy.deepcopy(model)
    with torch.no_grad():
        lin.gain.zero_()
        for name, p in lin.named_parameters():
            if name.startswith("cond_head."):
                p.zero_()
    return lin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--images", nargs="+", default=list(HELDOUT_IMAGES))
    ap.add_argument("--linear-part", action="store_true",
                    help="also run each checkpoint with its learned terms zeroed (the exact linear part alone)")
    args = ap.parse_args()
    models = []
    for p in args.checkpoints:
        model = load_checkpoint(p).eval()
        models.append((p, model))
        if args.linear_part:
            models.append((f"{p} (linear part)", linear_part(model)))
    print(f"| image | checkpoint | std | lag-1 h | lag-1 w | spectrum flatness |  ({args.size}², {args.steps} steps)")
    print("|---|---|---|---|---|---|")
    for name in args.images:
        x = square_image(name, args.size).unsqueeze(0)
        for p, m in models:
            s = latent_statistics(latent(m, x, args.steps))
            print(f"| {name} | {p} | {s['std']:.3f} | {s['lag1_h']:.3f} | {s['lag1_w']:.3f} | "
                  f"{s['spectrum_flatness']:.3g} |", flush=True)


if __name__ == "__main__":
    run_script(main)
