r"""The start level of a reconstruction: how far the classical estimate is from the truth, and the
level $\varsigma_e$ the flow starts from (:mod:`injcert.tasks.reconstruct`).

The estimate's error is measured without the truth: by hiding a seeded tenth of the observed pixels
and estimating them again (:func:`holdout_error`, through :func:`hidden_observation`), or for a
blurred region by blurring the estimate again and deblurring it (:func:`blur_bootstrap_error`).
:func:`start_sigma` turns the map's kind and that error into the level, from :data:`START_SIGMA`.
:func:`hidden_scores` is how the hold-out gate scores an image on the hidden pixels. Every name is
re-exported by :mod:`injcert.tasks.reconstruct`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Union

import numpy as np
import torch
from scipy.ndimage import distance_transform_cdt, distance_transform_edt
from torch import Tensor

from ..data.classical import classical_estimate
from ..data.corruptions import local_blur
from ..metrics import ssim

__all__ = ["START_SIGMA", "start_sigma", "holdout_error", "blur_bootstrap_error", "sure_error", "hidden_observation",
           "hidden_scores", "can_hide", "holdout_hide", "start_choice"]


def _distance_map(known: Tensor, metric: str = "euclidean") -> Tensor:
    """N×1×H×W distance (pixels, ``"euclidean"`` or ``"chessboard"``) of every pixel to the nearest
    known one: 0 on known pixels, ``inf`` in an image without any."""
    k = known.reshape(-1, *known.shape[-2:]).cpu().numpy()
    transform = distance_transform_edt if metric == "euclidean" else partial(distance_transform_cdt, metric=metric)
    d = [transform(~ki).astype(np.float64) if ki.any() else np.full(ki.shape, np.inf) for ki in k]
    return torch.from_numpy(np.stack(d)).unsqueeze(1).to(known.device)


def _distance_to_known(known: Tensor) -> float:
    """The largest Chebyshev distance (pixels) from a pixel to the nearest known one (per image; the max;
    the image's larger side where an image has no known pixel)."""
    d = _distance_map(known, "chessboard")
    return float(max(known.shape[-2:])) if bool(d.isinf().any()) else float(d.max())


#: Default start levels (varsigma) from the classical estimate, chosen on the *training* images
#: (coffee, camera at 64² and 128², the shipped model): missing pixels near observed ones (random
#: pixels, thin gaps: at most ``near`` pixels away), larger holes, and a blurred region. Blur: 0.02
#: was the best level from ``richardson_lucy_local`` (``python benchmarks/tune_start_levels.py CKPT
#: blur``); from ``lsmr_local`` (the default since) the flow keeps the estimate at it (``python
#: benchmarks/deblur_iterations.py``). See ``docs/benchmarks/results.md``.
#: ``missing_min``: the lowest start for missing pixels near observed ones, used when the estimate's
#: cross-validated error (:func:`holdout_error`) is below ``missing_near``.
#: ``blur_min``: the lowest start for a blurred region, used when the estimate's bootstrap error
#: (:func:`blur_bootstrap_error`) is below ``blur``.
START_SIGMA = {"near": 3, "missing_near": 0.02, "missing_far": 0.1, "blur": 0.02, "noise": 0.05,
               "missing_min": 0.002, "blur_min": 0.002, "noise_min": 0.002}


def _holdout_pixels(known: Tensor, seed: int, fraction: float = 0.1) -> Tensor:
    """A seeded ``fraction`` of the observed pixels (N×1×H×W bool), to hide."""
    # a stream of its own: the corruptions draw their masks with torch.rand from the same seeds
    gen = torch.Generator().manual_seed((int(seed) * 2654435761 + 0x5EED1) % 2**63)
    return (torch.rand(tuple(known.shape), generator=gen) < float(fraction)).to(known.device) & known


def _shifted_hole(hole: Tensor, onto: Tensor) -> Tensor:
    """The ``hole`` pixels moved by half the image (down, right, or both; the move that lands most of
    them on ``onto``, per image), where they land on ``onto`` (the observed pixels): a hole of the same
    shape whose truth is known (N×1×H×W bool)."""
    h, w = hole.shape[-2:]
    moved = torch.stack([torch.roll(hole, s, dims=(-2, -1)) & onto
                         for s in ((h // 2, 0), (0, w // 2), (h // 2, w // 2))])  # 3×N×1×H×W
    best = moved.flatten(2).sum(2).argmax(0)  # N
    return moved[best, torch.arange(hole.shape[0], device=hole.device)]


def holdout_error(y: Tensor, m: Tensor, method: Union[str, Callable[[Tensor, Tensor], Tensor]] = "auto", *,
                  fraction: float = 0.1, seed: int = 0, blur_sigma: float = 2.0) -> float:
    r"""Cross-validated RMS error of the classical estimate at missing pixels near observed ones.

    A seeded ``fraction`` of the observed pixels is hidden, the estimate is recomputed from the rest,
    and the RMS difference to the hidden (true) values is returned. ``method`` is a classical method's
    name or an estimator ``(y, m) -> x_hat`` (the model's restorer, :meth:`~injcert.model.unet.CondUNet.anchor`). Where every missing pixel is
    within a few pixels of observed ones (random pixels, thin gaps), a hidden observed pixel is, like a
    missing one, surrounded by observed pixels: the result estimates the error the flow's start
    carries. ``nan`` if no observed pixel was hidden.
    """
    known = m[:, :1] == 1
    hide = _holdout_pixels(known, seed, fraction)
    if not bool(hide.any()):
        return float("nan")
    if callable(method):
        est = method(*hidden_observation(y, m, hide))
    else:
        _, est = classical_estimate(*hidden_observation(y, m, hide), method, blur_sigma=blur_sigma)
    diff = (est.to(torch.float64) - y.to(torch.float64))[hide.expand_as(y)]
    return float(diff.pow(2).mean().sqrt())


def blur_bootstrap_error(estimate: Tensor, m: Tensor, method: str = "lsmr_local", *,
                         blur_sigma: float = 2.0) -> float:
    r"""Bootstrap RMS error of a deblurring estimate in the blurred region (channel 1 of ``m``).

    No pixel of a blurred region is seen sharp, so :func:`holdout_error`'s hiding has no analogue;
    instead the estimate $\hat x$ is blurred again by the same local operator
    ($A z = M \odot (k * z) + (1 - M) \odot z$), deblurred by the same ``method``, and the RMS of
    the difference to $\hat x$ in the region is returned: the error the method makes on an image
    like its own output (a parametric bootstrap; $\hat x$ is smoother than the truth, so this
    underestimates). ``nan`` without a blurred region."""
    region = m[:, 1:2] > 0.5
    if not bool(region.any()):
        return float("nan")
    x = estimate.to(torch.float64)
    y2 = local_blur(x, region, float(blur_sigma))
    _, x2 = classical_estimate(y2.to(estimate.dtype), m, method, blur_sigma=blur_sigma)
    diff = (x2.to(torch.float64) - x)[region.expand_as(x)]
    return float(diff.pow(2).mean().sqrt())


def sure_error(y: Tensor, m: Tensor, method: Union[str, Callable[[Tensor, Tensor], Tensor]] = "bm3d", *,
               seed: int = 0, eps: float = 0.1, estimate: Optional[Tensor] = None) -> float:
    r"""RMS error of a classical denoiser on the noisy pixels (channel 2 of ``m`` holds their
    $\sigma_i$), estimated without the truth by Stein's unbiased risk estimate:

    $$\mathbb E\,\lVert f(y) - x\rVert^2 = \mathbb E\Big[\lVert f(y) - y\rVert^2
      - \textstyle\sum_i \sigma_i^2 + 2 \sum_i \sigma_i^2\, \partial f_i/\partial y_i\Big],$$

    with the divergence by one Monte-Carlo probe (Ramani, Blu and Unser 2008):
    $\sum_i \sigma_i b_i\,(f(y + \epsilon\,\sigma \odot b) - f(y))_i/\epsilon$, $b$ a seeded normal draw
    ($\epsilon$ relative to $\sigma$: the denoisers are not smooth, a tiny probe only sees their kinks).
    Two runs of ``method`` (a classical method's name, or a denoiser ``(y, m) -> x_hat``), one where
    ``estimate`` $= f(y)$ is given. ``nan`` without a noisy pixel."""
    y = y.to(torch.float64)
    s = m[:, 2:3].to(torch.float64).expand_as(y)
    if not bool((s > 0).any()):
        return float("nan")
    gen = torch.Generator().manual_seed((int(seed) * 2654435761 + 0x5B3E) % 2**63)
    b = torch.randn(tuple(y.shape), generator=gen, dtype=torch.float64).to(y.device) * (s > 0)

    def run(u: Tensor) -> Tensor:
        out = method(u, m) if callable(method) else classical_estimate(u, m, method)[1]
        return out.to(torch.float64)

    f0 = run(y.float()) if estimate is None else estimate.to(torch.float64)
    f1 = run((y + eps * s * b).float())
    n = int((s > 0).sum())
    risk = ((f0 - y).pow(2) * (s > 0)).sum() - s.pow(2).sum() + 2 * (s * b * (f1 - f0)).sum() / eps
    return math.sqrt(max(float(risk) / n, 0.0))


def start_sigma(m: Tensor, error: Optional[float] = None) -> float:
    r"""The default start level $\varsigma_e$ for a map ``m`` (N×3×H×W), from :data:`START_SIGMA`: by the
    largest distance from a missing pixel to an observed one, or for a blurred region.

    For missing pixels near observed ones, a finite ``error`` (the estimate's cross-validated RMS
    error, :func:`holdout_error`) lowers the level to it, within ``[missing_min, missing_near]``: the
    flow then treats the estimate as an image noised at the level of its own error, so an accurate
    biharmonic fill of a large image is not perturbed at a level far above that error. For a blurred region a
    finite ``error`` (:func:`blur_bootstrap_error`) does the same within ``[blur_min, blur]``, and for
    additive noise (:func:`sure_error` of the denoiser) within ``[noise_min, noise]``."""
    return _level(_start_kind(m), error)


def _start_kind(m: Tensor) -> str:
    """The :data:`START_SIGMA` key of a map: ``missing_near``, ``missing_far``, ``blur`` or ``noise``."""
    known = m[:, :1] == 1
    blurred = m[:, 1:2] > 0.5
    noisy = m[:, 2:3] > 0
    missing = ~known & ~blurred & ~noisy
    if not bool(missing.any()):
        return "blur" if bool(blurred.any()) else "noise"
    return "missing_near" if _distance_to_known(~missing) <= START_SIGMA["near"] else "missing_far"


def _level(kind: str, error: Optional[float]) -> float:
    if kind in ("missing_near", "blur", "noise") and error is not None and math.isfinite(error):
        low = START_SIGMA[{"missing_near": "missing_min", "blur": "blur_min", "noise": "noise_min"}[kind]]
        return min(START_SIGMA[kind], max(low, float(error)))
    return START_SIGMA[kind]


def hidden_observation(y: Tensor, m: Tensor, hide: Tensor, *, blurred: bool = False,
                       blur_sigma: float = 2.0) -> tuple[Tensor, Tensor]:
    """The observation ``(y, m)`` with the observed pixels ``hide`` (N×1×H×W bool) taken away, as
    :func:`holdout_gate` restores it: missing there (zeroed), or ``blurred`` there by the local
    operator (:func:`~injcert.data.corruptions.local_blur`, PSF ``blur_sigma``)."""
    m2 = m.clone()
    m2[:, :1].masked_fill_(hide, 0.0)
    if blurred:
        m2[:, 1:2].masked_fill_(hide, 1.0)
        return local_blur(y, hide, float(blur_sigma)), m2
    return y * m2[:, :1], m2


def hidden_scores(y: Tensor, known: Tensor, hide: Tensor, start: Tensor, image: Tensor) -> tuple[float, float]:
    """How :func:`holdout_gate` scores ``image`` on the ``hide`` pixels (N×1×H×W bool, observed in
    ``y``): the RMS error there, and the SSIM against the truth of an image taking only the hidden
    pixels from ``image`` and every other pixel from the truth where it is ``known``, from ``start``
    inside the real hole (whose truth is not) — the same in every image compared, so the SSIM sees
    only the hidden pixels. SSIM needs 3×3 pixels; below that it is 1 and the RMS decides alone."""
    sel = hide.expand_as(y)
    err = float((image.to(torch.float64)[sel] - y.to(torch.float64)[sel]).pow(2).mean().sqrt())
    if min(y.shape[-2:]) < 3:
        return err, 1.0
    ref = torch.where(known.expand_as(y), y, start).to(torch.float64)
    return err, float(ssim(torch.where(sel, image.to(torch.float64), ref), ref))


def can_hide(known: Tensor, hide: Tensor) -> bool:
    """Whether a hold-out can hide ``hide`` (N×1×H×W bool): some pixel is hidden, and every image keeps
    an observed pixel to restore from."""
    return bool(hide.any()) and bool((known & ~hide).flatten(1).any(1).all())


def holdout_hide(m: Tensor, kind: str, seed: int, near: str = "pixels") -> Tensor:
    """The observed pixels a hold-out hides (N×1×H×W bool): for missing pixels near observed ones
    (``kind`` ``"missing_near"`` with ``near`` ``"pixels"``), the seeded tenth of
    :func:`_holdout_pixels`; otherwise the hole (or, for ``"blur"``, the blurred region) moved by
    half the image onto observed pixels (:func:`_shifted_hole`): a hole of the real one's shape."""
    known = m[:, :1] == 1
    if kind == "missing_near" and near == "pixels":
        return _holdout_pixels(known, seed)
    return _shifted_hole(m[:, 1:2] > 0.5 if kind == "blur" else ~known, known)


def start_choice(y: Tensor, m: Tensor, restorer: Callable[[Tensor, Tensor], Tensor], *, seed: int = 0,
                 method: str = "auto") -> Optional[tuple[float, float]]:
    r"""Cross-validated RMS errors ``(restorer, classical)`` on observed pixels hidden in the shape of
    the hole (:func:`_shifted_hole`: the hole moved by half the image, also where the missing pixels
    are near observed ones — a tenth of the pixels at random does not look like a thin stroke),
    each estimate recomputed from the rest: how a reconstruction
    chooses its start between the model's restorer $R(c)$ and the classical ``method`` for missing
    pixels. One choice per call (the whole batch), like the hold-out gate. ``None`` where nothing
    can be hidden, or hiding would leave an image with no observed pixel."""
    known = m[:, :1] == 1
    hide = _shifted_hole(~known, known)  # the hole's own shape, even for thin strokes
    if not can_hide(known, hide):
        return None
    y2, m2 = hidden_observation(y, m, hide)
    sel = hide.expand_as(y)
    truth = y.to(torch.float64)[sel]
    r_est = restorer(y2, m2).to(torch.float64)[sel]
    _, c_est = classical_estimate(y2, m2, method)
    return (float((r_est - truth).pow(2).mean().sqrt()),
            float((c_est.to(torch.float64)[sel] - truth).pow(2).mean().sqrt()))
