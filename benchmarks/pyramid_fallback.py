"""Should a coarse-to-fine start fall back to the plain classical fill? On the TRAINING images.

``python benchmarks/pyramid_fallback.py [CKPT] [--sizes 256 512] [--masks 1] [--steps 20]
[--corruptions box]``

Holes far from observed pixels start from the coarse-to-fine pyramid, which the hold-out gate
validates against its own flow only. For every mask whose reconstruction used the pyramid
(:data:`~injcert.benchlib.TUNING_IMAGES`, masks of :func:`~injcert.benchlib.tuning_observations`),
this prints the hole PSNR of the shipped result (the gate's choice between the flow and the pyramid
start, or the restoration from $R(c)$ where $R(c)$ won the same hold-out:
:data:`~injcert.tasks.reconstruct.PYRAMID_VS_RESTORER`), of the plain classical fill, and of the
rule that also lets the classical fill win the hold-out: on the same hidden pixels (the hole moved by half the image), the classical fill of the
hidden observation is scored like the start and the flow, and the lowest RMS error (with an SSIM no
lower than the chosen one's) wins. Sums per corruption and size; how many masks each rule loses to
the classical fill by more than 0.005 dB. With the shipped network (receptive field radius 87 pixels)
free-form strokes reach the pyramid only from 1024² on; masks that do not use it are skipped.
"""

from __future__ import annotations

import injcert.tasks.reconstruct as rec
from injcert.cli import run_script
from injcert.benchlib import pyramid_study, started_from_pyramid
from injcert.metrics import region_psnr
from injcert.tasks.classical import classical_estimate


def _classical_holdout(y, m, seed):
    """The classical fill's RMS error and SSIM on the pixels the gate hid (the same seed and rule)."""
    known = m[:, :1] == 1
    hide = rec.holdout_hide(m, rec._start_kind(m), seed, rec.GATE_NEAR)
    y2, m2 = rec.hidden_observation(y, m, hide)
    est = classical_estimate(y2, m2, "auto")[1]
    return rec.hidden_scores(y, known, hide, est, est)


def _one(model, x, y, m, steps, seed):
    r = rec.reconstruct_full(model, y, m, steps, seed)
    if not started_from_pyramid(r) or r.holdout is None:
        return None
    hole = 1 - m[:, :1]
    cl = classical_estimate(y, m, "auto")[1]
    c_rms, c_ssim = _classical_holdout(y, m, seed)
    h = r.holdout
    chosen = (h.flow, h.flow_ssim) if r.flow_kept else (h.start, h.start_ssim)
    fallback = c_rms < chosen[0] and c_ssim >= chosen[1]
    ours, plain = region_psnr(r.image, x, hole), region_psnr(cl, x, hole)
    return ours, plain, (plain if fallback else ours), fallback


def _summary(got):
    return [f"{sum(o - c for o, c, _, _ in got):+.2f}", f"{sum(f - c for _, c, f, _ in got):+.2f}",
            sum(o < c - 0.005 for o, c, _, _ in got), sum(f < c - 0.005 for _, c, f, _ in got),
            sum(fb for *_, fb in got)]


def main() -> None:
    pyramid_study(__doc__, _one, lambda o: f"ours {o[0]:.2f} classical {o[1]:.2f} fallback rule {o[2]:.2f} "
                  f"(fell back: {o[3]})", ["size", "corruption", "pyramid masks", "Σ shipped − classical [dB]",
                  "Σ fallback rule − classical", "shipped loses", "rule loses", "fell back"], _summary)


if __name__ == "__main__":
    run_script(main)
