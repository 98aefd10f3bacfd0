"""Should a coarse-to-fine start compete with the restorer R(c)? On the TRAINING images.

``python benchmarks/pyramid_restorer.py [CKPT] [--sizes 256 512] [--masks 1] [--steps 20]
[--corruptions box]``

Holes far from observed pixels start from the coarse-to-fine pyramid. With
:data:`~injcert.tasks.reconstruct.PYRAMID_VS_RESTORER` the pyramid's hold-out gate also scores
the single-scale start — the mean of $R(c)$ and the classical fill
(:data:`~injcert.tasks.reconstruct.START_BLEND`), or $R(c)$ alone with ``START_BLEND = None`` — of
the same hidden observation on the same hidden pixels, and where it restores them better (a lower
RMS error, an SSIM no lower) the image is restored from that start without the pyramid.
For every mask that starts from the pyramid (:data:`~injcert.benchlib.TUNING_IMAGES`, masks of
:func:`~injcert.benchlib.tuning_observations`) this prints the hole PSNR of the pyramid result (the
rule off), of the restorer's route, of the rule, and of the classical fill; then, per corruption
and size, the sums over the classical fill and how often the rule chose the better of the two.
"""

from __future__ import annotations

import injcert.tasks.reconstruct as rec
from injcert.benchlib import pyramid_study, started_from_pyramid
from injcert.cli import run_script
from injcert.metrics import region_psnr
from injcert.tasks.classical import classical_estimate


def _one(model, x, y, m, steps, seed):
    """``(pyramid, restorer route, rule, classical)`` hole PSNRs, or ``None`` without a pyramid start."""
    hole = 1 - m[:, :1]
    rule = rec.reconstruct_full(model, y, m, steps, seed)
    if not started_from_pyramid(rule):
        return None
    if rule.pyramid_holdout is None:  # the rule kept the pyramid: the restorer's route on its own
        single = rec._single_scale(model, m)[0]  # what the rule would have switched to
        pyr, route = rule, rec.reconstruct_full(model, y, m, steps, seed, levels=0, estimate=single)
    else:  # the rule took the restorer's route: the pyramid result with the rule off
        flag, rec.PYRAMID_VS_RESTORER = rec.PYRAMID_VS_RESTORER, False
        try:
            pyr, route = rec.reconstruct_full(model, y, m, steps, seed), rule
        finally:
            rec.PYRAMID_VS_RESTORER = flag
    score = [region_psnr(r.image, x, hole) for r in (pyr, route, rule)]
    return (*score, region_psnr(classical_estimate(y, m, "auto")[1], x, hole))


def _summary(got):
    return [f"{sum(o[k] - o[3] for o in got):+.2f}" for k in range(3)] + [sum(o[2] >= max(o[0], o[1]) - 0.005
                                                                          for o in got)]


def main() -> None:
    pyramid_study(__doc__, _one, lambda o: f"pyramid {o[0]:.2f} restorer {o[1]:.2f} rule {o[2]:.2f} "
                  f"classical {o[3]:.2f}", ["size", "corruption", "pyramid masks", "Σ pyramid − classical [dB]",
                  "Σ restorer − classical", "Σ rule − classical", "rule chose the better"], _summary)


if __name__ == "__main__":
    run_script(main)
