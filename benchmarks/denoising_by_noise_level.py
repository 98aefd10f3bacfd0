"""How well the shipped model denoises at each noise level (one-step x0 estimate on held-out patches).

For t in a sweep: x_t = alpha x0 + sigma eps on 8 held-out 32x32 patches, eps_hat = model(x_t, t),
x0_hat = (x_t - sigma eps_hat) / alpha. Prints the eps MSE and the x0 MSE of the noisy input
(x_t / alpha) and of x0_hat. An eps-network with Lipschitz constant L cannot follow the ideal
eps, whose Lipschitz constant across the data is about 1/sigma, once sigma < 1/L.
Run: ``python benchmarks/denoising_by_noise_level.py [CKPT]``.
"""

from __future__ import annotations

import argparse

import torch

import injcert
from injcert.cli import run_script
from injcert.data.images import PatchDataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    net = injcert.load_checkpoint(ap.parse_args().checkpoint).eval()
    x0 = torch.stack([PatchDataset(split="heldout", patch_size=32, length=8, seed=1)[i] for i in range(8)])
    sch = net.schedule
    g = torch.Generator().manual_seed(0)
    print(f"{'t':>5} {'sigma':>6} {'eps MSE':>8} {'x0 MSE noisy':>13} {'x0 MSE denoised':>16}")
    for t in (0.02, 0.05, 0.1, 0.2, 0.4, 0.7):
        a, s = float(sch.alpha(t)), float(sch.sigma(t))
        e = torch.randn(x0.shape, generator=g)
        xt = a * x0 + s * e
        with torch.no_grad():
            eh = net(xt, torch.full((x0.shape[0],), t))
        x0h = (xt - s * eh) / a
        print(f"{t:5.2f} {s:6.3f} {float((eh - e).pow(2).mean()):8.3f} {float((xt / a - x0).pow(2).mean()):13.4f} "
              f"{float((x0h - x0).pow(2).mean()):16.4f}")


if __name__ == "__main__":
    run_script(main)
