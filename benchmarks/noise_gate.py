"""Does the noise gate's risk estimate see what the truth sees? On the TRAINING images.

``python benchmarks/noise_gate.py [CKPT] [--sizes 64 256] [--steps 20] [--sigma 0.1]``

For each image: Stein's unbiased estimates of the RMS error of BM3D and of the whole pipeline
(BM3D, then the flow) that the noise gate compares (``Reconstruction.holdout``), next to their true
RMS errors against the clean image, and whether the gate kept the flow. The gate is right where
it keeps the flow exactly when the flow's true error is lower.
"""

from __future__ import annotations

import argparse

import torch

import injcert
from injcert.cli import run_script
from injcert.benchlib import TUNING_IMAGES, load_batch, markdown_table
from injcert.data.corruptions import expand_map, make_corruption
from injcert.tasks.reconstruct import reconstruct_full


def _rms(a: torch.Tensor, x: torch.Tensor) -> float:
    return float((a.double() - x.double()).pow(2).mean().sqrt())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--images", nargs="+", default=list(TUNING_IMAGES))
    args = p.parse_args()
    model = injcert.load_checkpoint(args.checkpoint)
    rows, right = [], 0
    for size in args.sizes:
        for name in args.images:
            x = load_batch([name], size)[0]
            obs = make_corruption("noise", sigma=args.sigma).sample(x, 0)
            with torch.no_grad():
                r = reconstruct_full(model, obs.y, expand_map(obs.m), args.steps, 0)
                flow = (r.image if r.flow_kept  # kept: the ungated result, bit for bit
                        else reconstruct_full(model, obs.y, expand_map(obs.m), args.steps, 0, gate=False).image)
            h = r.holdout
            true_start, true_flow = _rms(r.estimate, x), _rms(flow, x)
            right += r.flow_kept == (true_flow < true_start)
            rows.append([f"{size}²", name, f"{h.start:.4f}", f"{true_start:.4f}", f"{h.flow:.4f}",
                         f"{true_flow:.4f}", "kept" if r.flow_kept else "off"])
            print(rows[-1], flush=True)
    print(markdown_table(["size", "image", "BM3D: SURE", "true", "pipeline: SURE", "true", "flow"], rows))
    print(f"the gate chose the truly better of the two in {right} of {len(rows)}")


if __name__ == "__main__":
    run_script(main)
