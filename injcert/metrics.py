r"""Image quality metrics: PSNR/SSIM (scikit-image), region metrics, seam energy.

All functions take torch tensors ``C×H×W`` or ``N×C×H×W`` with values in ``[-1, 1]``
(so the data range is 2). Region masks are ``N×1×H×W`` or ``1×H×W`` (or ``H×W``), **1 inside**
the region; a mask value ``> 0.5`` counts as inside. Metrics are computed in float64.

* :func:`psnr`, :func:`ssim` — :func:`skimage.metrics.peak_signal_noise_ratio` and
  :func:`skimage.metrics.structural_similarity` (Wang et al. 2004), per image, averaged over the
  batch (or per image with ``reduction="none"``).
* :func:`region_mse`, :func:`region_psnr` — over the pixels inside the mask only (or only
  outside with ``outside=True``), pooled over the batch and channels.
* :func:`background_preservation` — the largest absolute change outside the mask (0 means the
  background is bit-for-bit preserved; Theorem 7, ``proofs/07-background-preservation.md``).
* :func:`seam_energy` — the mean squared jump across the mask boundary.
"""

from __future__ import annotations

import math
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor

from .errors import ArgumentError, InputError

__all__ = [
    "psnr",
    "grain_ratio",
    "colour_grain_ratio",
    "latent_statistics",
    "ssim",
    "region_mse",
    "region_psnr",
    "background_preservation",
    "seam_energy",
]

Metric = Union[float, Tensor]


def _batch(x: object, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor C×H×W or N×C×H×W, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise InputError(f"{what} must be C×H×W or N×C×H×W, got shape {tuple(x.shape)}")
    if x.is_complex():
        raise InputError(f"{what} must be a real tensor, got {x.dtype}")
    return x.detach().to(torch.float64)


def _pair(x: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    a, b = _batch(x, "x"), _batch(ref, "ref")
    if a.shape != b.shape:
        raise InputError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    return a, b


def _mask(mask: object, like: Tensor) -> Tensor:
    """Bool ``N×1×H×W`` (broadcastable to ``like``), True inside."""
    if not isinstance(mask, Tensor):
        raise InputError(f"mask must be a torch.Tensor N×1×H×W or 1×H×W, got {type(mask).__name__}")
    m = mask.detach()
    if m.dim() == 2:
        m = m.view(1, 1, *m.shape)
    elif m.dim() == 3:
        m = m.unsqueeze(0)
    n, _, h, w = like.shape
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[2:] != (h, w) or m.shape[0] not in (1, n):
        raise InputError(
            f"mask must be N×1×H×W or 1×H×W matching the image {tuple(like.shape)}, got shape {tuple(mask.shape)}"
        )
    m = m > 0.5 if m.dtype != torch.bool else m
    return m.to(like.device).expand(n, 1, h, w)


def _reduce(values: list[float], reduction: str) -> Metric:
    if reduction == "mean":
        return float(np.mean(values)) if values else float("nan")
    if reduction == "none":
        return torch.tensor(values, dtype=torch.float64)
    raise ArgumentError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(
    x: Tensor, ref: Tensor, data_range: float = 2.0, reduction: Literal["mean", "none"] = "mean"
) -> Metric:
    r"""Peak signal-to-noise ratio $10\log_{10}(R^2/\mathrm{MSE})$ in dB, via scikit-image.

    Arguments:
        x: images ``C×H×W`` or ``N×C×H×W``.
        ref: reference images, same shape.
        data_range: ``R``, the width of the value range (2 for ``[-1, 1]``).
        reduction: ``"mean"`` (float, mean of per-image PSNRs) or ``"none"`` (float64 tensor ``N``).

    Returns:
        The PSNR (``inf`` for identical images).

    Raises:
        ValueError: mismatched or badly shaped inputs, or an unknown ``reduction``.
    """
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _pair(x, ref)
    vals = []
    for xi, ri in zip(a.cpu().numpy(), b.cpu().numpy()):
        if np.array_equal(xi, ri):
            vals.append(math.inf)
        else:
            vals.append(float(peak_signal_noise_ratio(ri, xi, data_range=data_range)))
    return _reduce(vals, reduction)


def ssim(
    x: Tensor, ref: Tensor, data_range: float = 2.0, reduction: Literal["mean", "none"] = "mean"
) -> Metric:
    """Structural similarity (Wang et al. 2004) via :func:`skimage.metrics.structural_similarity`.

    Channels are handled with ``channel_axis``; the window is 7×7, or the largest odd size that
    fits images smaller than 7 pixels.

    Arguments:
        x: images ``C×H×W`` or ``N×C×H×W``.
        ref: reference images, same shape.
        data_range: width of the value range (2 for ``[-1, 1]``).
        reduction: ``"mean"`` (float) or ``"none"`` (float64 tensor ``N``).

    Returns:
        The SSIM, at most 1.

    Raises:
        ValueError: mismatched shapes, images smaller than 3×3, or an unknown ``reduction``.
    """
    from skimage.metrics import structural_similarity

    a, b = _pair(x, ref)
    side = min(a.shape[2], a.shape[3])
    win = min(7, side if side % 2 == 1 else side - 1)
    if win < 3:
        raise InputError(f"ssim needs images of at least 3×3 pixels, got shape {tuple(x.shape)}")
    vals = []
    for xi, ri in zip(a.cpu().numpy(), b.cpu().numpy()):
        xi, ri = np.moveaxis(xi, 0, -1), np.moveaxis(ri, 0, -1)
        vals.append(
            float(structural_similarity(ri, xi, data_range=data_range, channel_axis=-1, win_size=win))
        )
    return _reduce(vals, reduction)


def region_mse(x: Tensor, ref: Tensor, mask: Tensor, *, outside: bool = False) -> float:
    r"""Mean squared error over the pixels of a region only.

    $\mathrm{MSE}_R = \frac{1}{C\,|R|}\sum_{(n,i,j)\in R}\sum_c (x_{ncij} - r_{ncij})^2$,
    pooled over the batch. Pixels outside ``R`` do not enter at all.

    Arguments:
        x: images ``C×H×W`` or ``N×C×H×W``.
        ref: reference images, same shape.
        mask: ``N×1×H×W``, ``1×H×W`` or ``H×W``, 1 inside the region.
        outside: use the complement of the mask instead.

    Returns:
        The MSE as a float.

    Raises:
        ValueError: mismatched shapes, or an empty region.
    """
    a, b = _pair(x, ref)
    inside = _mask(mask, a)
    if outside:
        inside = ~inside
    count = int(inside.sum()) * a.shape[1]
    if count == 0:
        where = "outside" if outside else "inside"
        raise InputError(f"the region {where} the mask is empty (mask shape {tuple(mask.shape)})")
    sq = (a - b).pow(2) * inside
    return float(sq.sum() / count)


def region_psnr(
    x: Tensor, ref: Tensor, mask: Tensor, *, outside: bool = False, data_range: float = 2.0
) -> float:
    r"""PSNR over a region only: $10\log_{10}(R^2 / \mathrm{MSE}_R)$ (see :func:`region_mse`).

    Arguments:
        x: images ``C×H×W`` or ``N×C×H×W``.
        ref: reference images, same shape.
        mask: ``N×1×H×W``, ``1×H×W`` or ``H×W``, 1 inside the region.
        outside: use the complement of the mask instead.
        data_range: width of the value range (2 for ``[-1, 1]``).

    Returns:
        The PSNR in dB (``inf`` when the region matches exactly).

    Raises:
        ValueError: mismatched shapes, or an empty region.
    """
    mse = region_mse(x, ref, mask, outside=outside)
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def background_preservation(x: Tensor, ref: Tensor, mask: Tensor) -> float:
    """Largest absolute difference outside the mask, $\\max_{\\text{outside}} |x - r|$.

    Arguments:
        x: edited images ``C×H×W`` or ``N×C×H×W``.
        ref: original images, same shape.
        mask: the edit mask, 1 inside the edited region.

    Returns:
        The maximum absolute change outside the mask (0.0 when it is preserved exactly, or when
        the mask covers everything).

    Raises:
        ValueError: mismatched shapes.
    """
    a, b = _pair(x, ref)
    out = ~_mask(mask, a)
    diff = (a - b).abs() * out
    return float(diff.max()) if diff.numel() else 0.0


def seam_energy(x: Tensor, mask: Tensor, ref: Tensor | None = None) -> float:
    r"""Mean squared finite-difference jump across the boundary of a mask.

    The boundary pairs are the horizontally or vertically adjacent pixels ``(p, q)`` with one
    inside the mask and the other outside. For each pair and channel the jump is
    $d = x_p - x_q$ (with ``ref``: $d = (x_p - x_q) - (r_p - r_q)$, the jump in excess of the
    reference's own gradient); the result is the mean of $d^2$ over all pairs, channels and
    images. A visible seam from a pasted-in region gives a large value.

    Arguments:
        x: images ``C×H×W`` or ``N×C×H×W``.
        mask: ``N×1×H×W``, ``1×H×W`` or ``H×W``, 1 inside the region.
        ref: optional reference images, same shape as ``x``.

    Returns:
        The seam energy; 0.0 when the mask has no boundary pair (empty or full).

    Raises:
        ValueError: badly shaped inputs.
    """
    a = _batch(x, "x")
    if ref is not None:
        a = a - _pair(x, ref)[1]
    inside = _mask(mask, a)
    dh = a[..., :, 1:] - a[..., :, :-1]
    bh = inside[..., :, 1:] != inside[..., :, :-1]
    dv = a[..., 1:, :] - a[..., :-1, :]
    bv = inside[..., 1:, :] != inside[..., :-1, :]
    count = (int(bh.sum()) + int(bv.sum())) * a.shape[1]
    if count == 0:
        return 0.0
    total = (dh.pow(2) * bh).sum() + (dv.pow(2) * bv).sum()
    return float(total / count)


def grain_ratio(x: Tensor, mask: Tensor, ring: int = 4) -> float:
    r"""Texture-noise ratio of an edited region: the standard deviation of the discrete Laplacian
    inside the mask over that in a ring of width ``ring`` pixels around it.

    A region filled with grain (high-frequency noise the flow failed to remove) has a Laplacian
    far rougher than its surroundings (ratio $\gg 1$); a coherent fill is near 1.

    Arguments:
        x: images ``C×H×W`` or ``N×C×H×W``.
        mask: ``N×1×H×W``, ``1×H×W`` or ``H×W``, 1 inside the region.
        ring: width of the ring (Chebyshev distance outside the mask).

    Returns:
        The ratio (``nan`` when the inside or the ring holds no interior pixel).
    """
    a = _batch(x, "x").to(torch.float64)
    inside = _mask(mask, a).to(torch.float64)
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    lap = torch.nn.functional.conv2d(a.reshape(-1, 1, *a.shape[-2:]), k.view(1, 1, 3, 3)).reshape(
        a.shape[0], a.shape[1], a.shape[-2] - 2, a.shape[-1] - 2)
    ins = inside[..., 1:-1, 1:-1].expand_as(lap) > 0.5
    grown = torch.nn.functional.max_pool2d(inside, 2 * ring + 1, 1, ring)[..., 1:-1, 1:-1].expand_as(lap) > 0.5
    rng = grown & ~ins
    if int(ins.sum()) < 2 or int(rng.sum()) < 2:
        return float("nan")
    return float(lap[ins].std() / lap[rng].std().clamp_min(1e-12))


def colour_grain_ratio(x: Tensor, mask: Tensor, ring: int = 4) -> float:
    r""":func:`grain_ratio` of the chroma $x - \bar x$ ($\bar x$ the mean over the channels): the
    colour grain of an edited region against its surroundings.

    :func:`grain_ratio` cannot tell texture from noise: a region filled with coloured noise of the
    right amplitude scores like a textured one. Natural images carry their fine detail mostly in
    the luminance, so colour noise shows in the chroma's Laplacian, where texture hardly does: a
    coherent fill is near (or below) 1, coloured grain well above it.

    Returns:
        The ratio (``nan`` for one-channel images or when the inside or the ring holds no interior pixel).
    """
    a = _batch(x, "x").to(torch.float64)
    if a.shape[1] < 2:
        return float("nan")
    return grain_ratio(a - a.mean(dim=1, keepdim=True), mask, ring)


def latent_statistics(z: Tensor) -> dict[str, float]:
    r"""How Gaussian a latent is: its standard deviation, the lag-1 autocorrelation along each
    spatial axis, and the flatness of its radially averaged power spectrum.

    For white noise the std is 1, both autocorrelations are 0 and the spectrum is flat
    (``spectrum_flatness`` = max/min of the radial average over the frequency bands, excluding DC, is
    near 1; a latent that still shows the image has a spectrum falling with frequency).

    Arguments:
        z: a latent ``C×H×W`` or ``N×C×H×W`` (the $\bar x$ or $x$ state at $t_{\max}$, scaled to unit
            variance for a Gaussian).

    Returns:
        ``{"std", "lag1_h", "lag1_w", "spectrum_flatness"}``.
    """
    a = _batch(z, "z").to(torch.float64)
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    var = (a * a).mean()

    def lag(d: int) -> float:
        u = a.narrow(d, 1, a.shape[d] - 1)
        v = a.narrow(d, 0, a.shape[d] - 1)
        return float((u * v).mean() / var.clamp_min(1e-300))

    power = torch.fft.fft2(a).abs().pow(2).mean(dim=(0, 1))
    h, w = power.shape
    fy = torch.fft.fftfreq(h, dtype=torch.float64).abs().view(-1, 1)
    fx = torch.fft.fftfreq(w, dtype=torch.float64).abs().view(1, -1)
    r = torch.sqrt(fy * fy + fx * fx)
    edges = torch.linspace(0.0, 0.5, 9, dtype=torch.float64)
    bands = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (r > lo) & (r <= hi)
        if bool(sel.any()):
            bands.append(float(power[sel].mean()))
    flat = max(bands) / max(min(bands), 1e-300) if bands else float("nan")
    return {"std": float(var.sqrt()), "lag1_h": lag(-2), "lag1_w": lag(-1), "spectrum_flatness": flat}
