"""Measured Jacobian norm of eps_theta at several noise levels against 1/sigma and the certified L(t).

The ideal eps has slope ~1/sigma_t across the noise; a network whose measured norm stays far below it
cannot denoise at that level. ``python benchmarks/slope_by_noise_level.py [CKPT]`` (power iteration on a
held-out chelsea crop, ``lipschitz_lower_bound``: a sound lower bound of the local Lipschitz constant).
"""
from __future__ import annotations

import argparse

import torch

import injcert
from injcert.cli import run_script
from injcert.data.grid import square_image
from injcert.theory.lipschitz import lipschitz_lower_bound


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    torch.set_num_threads(1)
    model = injcert.load_checkpoint(ap.parse_args().checkpoint).double()
    x0 = square_image("chelsea", 32).unsqueeze(0).double()
    g = torch.Generator().manual_seed(0)
    for t in (0.02, 0.063, 0.2, 0.5):
        a, s = float(model.schedule.alpha(t)), float(model.schedule.sigma(t))
        xt = a * x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        tt = torch.tensor([t], dtype=torch.float64)
        lo = lipschitz_lower_bound(lambda v: model(v, tt), xt, n_iter=10, ascent_steps=0, generator=g)
        print(f"t={t} sigma={s:.3f} 1/sigma={1/s:.1f} measured>={lo:.2f} certified={model.certified_lipschitz_at(t):.2f} budget={model.lipschitz_budget_at(t):.1f}")


if __name__ == "__main__":
    run_script(main)
