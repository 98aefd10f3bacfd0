"""How the deblurring baselines depend on their iteration count, and how ``LSMR_ITERATIONS`` was chosen.

``python benchmarks/deblur_iterations.py [CKPT] [--sizes 64 128] [--images ...]``

The blur of the benchmarks (:data:`injcert.cli.compare.CORRUPTION_SETTINGS`, Gaussian σ = 2 in a
box, no noise) is ill-conditioned but noise-free, so every iterative deconvolution keeps improving
with more iterations; there is no optimum, only a budget. Per size this prints the PSNR and time of
``richardson_lucy_local`` and ``lsmr_local`` (:mod:`injcert.tasks.classical`) at several iteration
counts, and ours (:func:`~injcert.tasks.reconstruct.reconstruct_full`, 20 steps, which starts from
``lsmr_local`` at the default :data:`~injcert.tasks.classical.LSMR_ITERATIONS`). The default images
are the TRAINING ones (coffee, camera); pass ``--images astronaut chelsea hubble_deep_field retina``
for the held-out split.
"""

from __future__ import annotations

import argparse
import time

import torch

import injcert
from injcert.cli import run_script
from injcert.cli.compare import CORRUPTION_SETTINGS, load_batch, markdown_table, make_corruption
from injcert.metrics import psnr
from injcert.tasks.classical import LSMR_ITERATIONS, METHODS
from injcert.tasks.reconstruct import reconstruct_full


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--images", nargs="+", default=["coffee", "camera"])
    p.add_argument("--rl", type=int, nargs="+", default=[30, 100, 300])
    p.add_argument("--lsmr", type=int, nargs="+", default=[100, 300, 1000, 3000])
    args = p.parse_args()
    model = injcert.load_checkpoint(args.checkpoint)
    print(f"checkpoint {args.checkpoint}; images {', '.join(args.images)}; LSMR_ITERATIONS {LSMR_ITERATIONS}")
    for size in args.sizes:
        x = torch.cat(load_batch(args.images, size))
        obs = make_corruption("blur", **CORRUPTION_SETTINGS["blur"]).sample(x, 0)
        rows = []
        for method, counts in (("richardson_lucy_local", args.rl), ("lsmr_local", args.lsmr)):
            for n in counts:
                t0 = time.perf_counter()
                est = torch.stack([METHODS[method](a, b, num_iter=n) for a, b in zip(obs.y, obs.m)])
                rows.append([method, n, psnr(est, x), time.perf_counter() - t0])
        t0 = time.perf_counter()
        with torch.no_grad():
            ours = reconstruct_full(model, obs.y, obs.m, 20, 0).image
        rows.append(["ours (from lsmr_local)", LSMR_ITERATIONS, psnr(ours, x), time.perf_counter() - t0])
        print(f"\n### {size}×{size}\n")
        print(markdown_table(["method", "iterations", "PSNR [dB]", "time [s]"], rows))


if __name__ == "__main__":
    run_script(main)
