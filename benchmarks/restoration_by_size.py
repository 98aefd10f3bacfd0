"""Restoration against the best classical methods at several resolutions, one run, same masks.

``python benchmarks/restoration_by_size.py [CKPT] [--sizes 64 256 1024] [--images ...] [--steps N]``

For each size: the held-out images (centre crops resized to ``size²``), every corruption of
:data:`injcert.cli.compare.CORRUPTION_SETTINGS` (pixel sizes scale with the image), ours
(:func:`injcert.tasks.reconstruct.reconstruct_full`, one call per image, as a user restores one
photograph per call; ``--one-call`` restores each batch in one call, with one start check and one
gate decision for all its images) next to every classical baseline of
:data:`injcert.cli.compare.BASELINES`, BM3D included at every size (minutes per image at 1024² on a
CPU; ours starts from it). Prints one Markdown table per size and, per corruption, ours minus the
best baseline (PSNR, SSIM, region PSNR).

``--ablate-flow`` adds the row ``no flow``: the same pipeline (the same estimate, the same pyramid
with ``--levels``) started at $\varsigma_e = 10^{-6}$, where the network cannot change the fill. Its
difference to ``ours`` is what the network itself adds; with ``--levels auto`` the rest is the
classical estimate computed on the downsampled copies. ``--ablate-gate`` adds the row ``no gate``:
the same pipeline with the flow always kept (``gate=False``), where ``ours`` keeps it only where it
restores held-out observed pixels better than its start
(:func:`injcert.tasks.reconstruct.holdout_gate`).
"""

from __future__ import annotations

import argparse
import time

import torch

import injcert
from injcert.cli import run_script
from injcert.cli.compare import CORRUPTION_SETTINGS, load_batch, markdown_table, reconstruction_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--images", nargs="+", default=["astronaut", "chelsea", "hubble_deep_field", "retina"])
    p.add_argument("--corruptions", nargs="+", default=list(CORRUPTION_SETTINGS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--levels", default="auto", help="coarse-to-fine levels: an int or auto (the default)")
    p.add_argument("--ablate-flow", action="store_true",
                   help="also run the same pipeline started at varsigma_e = 1e-6 (row 'no flow')")
    p.add_argument("--ablate-gate", action="store_true",
                   help="also run the pipeline without its holdout gate (row 'no gate': the flow always kept)")
    p.add_argument("--one-call", action="store_true",
                   help="restore all the images of a size in one call (one start check and gate decision for all)")
    p.add_argument("--json", metavar="OUT", help="also write every row as JSON (scripts/write_results.py reads it)")
    args = p.parse_args()
    records, seconds = [], {}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = injcert.load_checkpoint(args.checkpoint)
    levels = args.levels if args.levels == "auto" else int(args.levels)
    variants = {**({"no flow": {"sigma_start": 1e-6}} if args.ablate_flow else {}),
                **({"no gate": {"gate": False}} if args.ablate_gate else {})}
    print(f"checkpoint {args.checkpoint}; images {', '.join(args.images)}; {args.steps} steps; levels {levels}; "
          f"threads {torch.get_num_threads()}")
    for size in args.sizes:
        t0 = time.perf_counter()
        rows = reconstruction_rows(model, load_batch(args.images, size), args.steps, 0, args.corruptions,
                                   options={"levels": levels},
                                   variants=variants, per_image=not args.one_call)
        seconds[size] = time.perf_counter() - t0
        print(f"\n### {size}×{size} ({seconds[size]:.0f} s)\n")
        print(markdown_table(["corruption", "method", "PSNR [dB]", "SSIM", "PSNR in region [dB]", "time [s]",
                              "produced by"],
                             [[r.corruption, r.method, r.psnr, r.ssim, r.psnr_region, r.seconds, r.source or "—"]
                              for r in rows]))
        print()
        gaps = []
        for c in args.corruptions:
            ours = next(r for r in rows if r.corruption == c and r.method == "ours")
            others = [r for r in rows if r.corruption == c and r.method != "ours" and r.method not in variants]
            best = max(others, key=lambda r: r.psnr)
            gaps.append([c, best.method, ours.psnr - best.psnr, ours.ssim - max(r.ssim for r in others),
                         ours.psnr_region - max(r.psnr_region for r in others), ours.source])
        print(markdown_table(["corruption", "best classical (PSNR)", "ΔPSNR ours−best", "ΔSSIM", "Δregion PSNR",
                              "ours produced by"], gaps))
        records += [dict(size=size, corruption=r.corruption, method=r.method, psnr=r.psnr, ssim=r.ssim,
                         psnr_region=r.psnr_region, seconds=r.seconds, source=r.source) for r in rows]
    if args.json:
        import json
        from pathlib import Path

        from injcert.io import weights_fingerprint

        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "weights": weights_fingerprint(model),
                                               "images": args.images, "steps": args.steps, "seconds": seconds,
                                               "per_image": not args.one_call,
                                               "rows": records}, indent=1))


if __name__ == "__main__":
    run_script(main)
