"""Reconstruction quality per corruption type against the classical baselines (asv suite).

Same images (``astronaut`` and ``chelsea``, 32×32 centre crops), same masks (one seed), one run:
``ours`` (:func:`injcert.tasks.reconstruct.reconstruct_full`) against the best (by PSNR) of the
classical baselines of :data:`injcert.cli.compare.BASELINES`: ``inpaint_biharmonic`` (box,
freeform, random, gaps), ``richardson_lucy`` / ``wiener`` / ``richardson_lucy_local`` / ``lsmr_local`` (blur), ``denoise_nl_means`` /
``denoise_tv_chambolle`` / ``bm3d`` given the true sigma (noise) — never the corrupted input. The
model is the shipped checkpoint, or the *untrained* fallback while none exists — whose
reconstructions are not meaningful (the table reports them as they are).

Run ``python benchmarks/bench_reconstruction.py`` for a table.
"""

from __future__ import annotations

import torch

from injcert.cli.compare import CORRUPTION_SETTINGS, bench_model, load_batch, reconstruction_rows

torch.set_num_threads(1)

CORRUPTIONS = list(CORRUPTION_SETTINGS)
#: ``no gate``: ours with the flow always kept (``gate=False``); its ``track_seconds`` against ours is
#: the holdout gate's cost (a second pipeline for masks and blur)
METHODS = ["ours", "no gate", "baseline"]
IMAGES = ["astronaut", "chelsea"]
SIZE = 32
STEPS = 20


def _all(corruptions=tuple(CORRUPTIONS)) -> dict:
    model, _ = bench_model()
    rows = reconstruction_rows(model, load_batch(IMAGES, SIZE), STEPS, 0, corruptions,
                               variants={"no gate": {"gate": False}})
    out = {}
    for r in rows:
        key = (r.corruption, r.method if r.method in METHODS else "baseline")
        if key not in out or (key[1] == "baseline" and r.psnr > out[key]["psnr"]):
            out[key] = r.__dict__
    return out


class Reconstruction:
    params = (CORRUPTIONS, METHODS)
    param_names = ["corruption", "method"]
    timeout = 600

    def setup_cache(self) -> dict:
        return _all()

    def track_psnr(self, cache: dict, corruption: str, method: str) -> float:
        return cache[(corruption, method)]["psnr"]

    track_psnr.unit = "dB"

    def track_ssim(self, cache: dict, corruption: str, method: str) -> float:
        return cache[(corruption, method)]["ssim"]

    track_ssim.unit = "SSIM"

    def track_psnr_region(self, cache: dict, corruption: str, method: str) -> float:
        return cache[(corruption, method)]["psnr_region"]

    track_psnr_region.unit = "dB (corrupted region)"

    def track_seconds(self, cache: dict, corruption: str, method: str) -> float:
        return cache[(corruption, method)]["seconds"]

    track_seconds.unit = "s"


if __name__ == "__main__":
    res = _all()
    print(f"{'corruption':12s}{'method':10s}{'PSNR':>8s}{'SSIM':>8s}{'PSNR(region)':>14s}  baseline")
    for (c, m), r in res.items():
        print(f"{c:12s}{m:10s}{r['psnr']:8.2f}{r['ssim']:8.3f}{r['psnr_region']:14.2f}  {r['method']}")
