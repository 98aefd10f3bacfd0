r"""The stationary (spectral) Gaussian-data skip: a partition of unity in frequency by binomial blurs.

Natural images are far from white: their power spectrum falls roughly like $1/|f|^2$. The exact
denoiser of Gaussian data with a *stationary* covariance is the Wiener filter
$\hat D(\omega) = \alpha_t P(\omega)/(\alpha_t^2 P(\omega) + \sigma_t^2)$, frequency by frequency; with a
single variance $v$ for every frequency (``data_variance``) the linear part of the flow is a scalar
and the encoded latent of an image is the image, scaled. This module gives the network a *local,
certifiable* version of the spectral filter.

**Bands.** For binomial orders $a_1 < \dots < a_J$ let $G_a$ be the separable binomial blur whose 1-D
kernel is $\binom{2a}{k}/4^a$, $k = 0..2a$ (support radius $a$), with symbol
$\hat G_a(\omega) = \cos^{2a}(\omega_1/2)\cos^{2a}(\omega_2/2) \in [0, 1]$, non-increasing in $a$. The bands

$$B_0 = I - G_{a_1},\quad B_j = G_{a_j} - G_{a_{j+1}}\ (1 \le j < J),\quad B_J = G_{a_J}$$

have symbols $\hat B_j(\omega) \ge 0$ with $\sum_j \hat B_j(\omega) = 1$ at every frequency. Given a
variance $P_j$ per band, the skip is $K_t = \sum_j d_j(t)\,B_j$ with $d_j(t) = \alpha_t P_j/(\alpha_t^2 P_j +
\sigma_t^2)$, the scalar Wiener slope of band $j$; it is evaluated as
$d_0(t)\,x + \sum_{j \ge 1} (d_j(t) - d_{j-1}(t))\,G_{a_j} x$.

**Why it certifies exactly** (``proofs/05``, item 10). Each $G_a$ is applied as a zero-padded
convolution, i.e. the compression $P G_a P^\top$ of a convolution on $\mathbb Z^2$ to the image; so is
$K_t$, and so is every linear combination $\sum_j c_j B_j$. A compression of a convolution with a real,
even kernel is a symmetric matrix whose quadratic form is
$\int \hat k(\omega)|\hat x(\omega)|^2 d\omega/(2\pi)^2$, so its eigenvalues lie in $[\inf\hat k, \sup\hat k]$.
With $\hat k = \sum_j c_j\hat B_j$ a convex combination of the $c_j$: every eigenvalue lies in
$[\min_j c_j, \max_j c_j]$, on any image size.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

__all__ = ["binomial_kernel", "lowpass", "band_symbols", "check_bands", "fit_band_variances",
           "fit_residual_band_variances", "all_band_variances", "mix_weights", "MAX_ORDER",
           "MIX_ORDER", "MIX_POWER"]

MAX_ORDER = 128
"""Largest binomial order allowed (support radius in pixels)."""


@functools.lru_cache(maxsize=None)
def _binomial_values(order: int) -> tuple[float, ...]:
    a = int(order)
    return tuple(math.comb(2 * a, k) / 4.0**a for k in range(2 * a + 1))


def binomial_kernel(order: int, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""The 1-D kernel $\binom{2a}{k}/4^a$, $k = 0..2a$ (sums to 1, symbol $\cos^{2a}(\omega/2)$); a new tensor."""
    return torch.tensor(_binomial_values(int(order)), dtype=torch.float64).to(dtype)


@functools.lru_cache(maxsize=64)
def _cached_kernel(order: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return binomial_kernel(order, dtype).to(device)


def lowpass(x: Tensor, order: int) -> Tensor:
    """$G_a x$: the separable binomial blur of order ``order``, zero-padded ("same" size), per channel
    (the kernel is built once per order, dtype and device, not at every forward)."""
    c = x.shape[1]
    k = _cached_kernel(int(order), x.dtype, x.device)
    a = int(order)
    out = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, 2 * a + 1), padding=(0, a), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, 2 * a + 1, 1), padding=(a, 0), groups=c)


def band_symbols(orders: Sequence[int], wy: Tensor, wx: Tensor) -> Tensor:
    r"""The symbols $\hat B_j(\omega)$ (``(J+1)×len(wy)×len(wx)``, float64) at angular frequencies
    ``wy`` × ``wx`` (radians per pixel)."""
    cy = torch.cos(wy.to(torch.float64) / 2).pow(2).view(-1, 1)
    cx = torch.cos(wx.to(torch.float64) / 2).pow(2).view(1, -1)
    g = [torch.ones(len(wy), len(wx), dtype=torch.float64)] + [cy.pow(a) * cx.pow(a) for a in orders]
    return torch.stack([g[j] - g[j + 1] for j in range(len(orders))] + [g[-1]])


def check_bands(value: Any) -> Optional[dict[str, list]]:
    """Validate the ``spectral_bands`` model option (``None`` or ``{"orders": [...], "variances": [...]}``,
    optionally with ``"residual_variances"``, one per band too: the variances of what the restorer
    leaves, mixed in by :func:`mix_weights`); one :class:`~injcert.errors.ConfigError` line for a bad one. Returns a
    normalised copy."""
    if value is None:
        return None
    if not isinstance(value, dict) or not {"orders", "variances"} <= set(value) \
            or not set(value) <= {"orders", "variances", "residual_variances"}:
        raise ConfigError("spectral_bands must be null or {'orders': [...], 'variances': [...]} (optionally "
                          f"'residual_variances': [...]), got {value!r}")
    orders = value["orders"]
    if not isinstance(orders, (list, tuple)) or not orders or any(
            isinstance(a, bool) or not isinstance(a, int) or not 1 <= a <= MAX_ORDER for a in orders) \
            or any(b <= a for a, b in zip(orders, orders[1:])):
        raise ConfigError(f"spectral_bands.orders must be increasing ints in [1, {MAX_ORDER}], got {orders!r}")
    out = {"orders": [int(a) for a in orders]}
    for key in ("variances", "residual_variances"):
        if key not in value:
            continue
        variances = value[key]
        if not isinstance(variances, (list, tuple)) or len(variances) != len(orders) + 1 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf for v in variances):
            raise ConfigError(f"spectral_bands.{key} must be {len(orders) + 1} finite numbers > 0 (one per band), "
                              f"got {variances!r}")
        out[key] = [float(v) for v in variances]
    return out


def all_band_variances(bands: dict) -> list[float]:
    """The variances of every band skip of a checked ``spectral_bands`` option (the image's, then the
    restorer residual's if any): the range the bounds of the mixed skip use (``proofs/05`` item 19)."""
    return bands["variances"] + bands.get("residual_variances", [])


MIX_ORDER = 4
"""Binomial order of the local missing fraction that mixes the two band skips around a restorer."""

MIX_POWER = 4
r"""Power of that fraction: $S = (G_a\,\mathrm{miss} / G_a 1)^{4}$ is near 1 only inside a hole and near 0
where pixels are seen or scattered pixels are missing (half the pixels missing at random: $S \approx 0.07$)."""


def mix_weights(m: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    r"""$(\sqrt S, \sqrt{1 - S})$ (``N×1×H×W`` in ``dtype``) for a corruption map ``m``: $S = (G_a u/G_a 1)^p$,
    $u$ = 1 where a pixel is not observed as is (``m[:, 0] != 1``), with $a$ = :data:`MIX_ORDER`, $p$ =
    :data:`MIX_POWER`, computed in float64 and clamped to $[0, 1]$. Both roots are rounded once to
    ``dtype``, so $s^2 + c^2$ is within $2^{-20}$ of 1 (the slack ``proofs/05`` item 19 charges). A function
    of the condition alone."""
    miss = (m[:, :1] != 1).to(torch.float64)
    frac = lowpass(miss, MIX_ORDER) / lowpass(torch.ones_like(miss), MIX_ORDER)
    s = frac.clamp(0.0, 1.0).pow(MIX_POWER)
    return s.sqrt().to(dtype), (1.0 - s).clamp_min(0.0).sqrt().to(dtype)


def fit_band_variances(orders: Sequence[int], images: Optional[Sequence[str]] = None, size: int = 128,
                       crops: int = 6, scales: Sequence[int] = (1, 2, 4), seed: int = 0) -> list[float]:
    r"""Band variances $P_j$ that whiten the training images best: the least-squares fit of
    $\log S(\omega) \approx \sum_j \hat B_j(\omega)\log P_j$ over the non-DC frequencies, with
    $P_0 \le P_1 \le \dots \le P_J$ (lower bands carry more power; ``scipy.optimize.nnls`` on the increments).

    $S$ is the mean periodogram (per pixel, channels averaged) of ``crops`` random ``size``² crops per
    image at each downscale factor in ``scales`` (``avg_pool``), so the fit sees the spectrum below
    the training patch's frequency too. Deterministic for a given ``seed``.
    """
    spec, count = torch.zeros(size, size, dtype=torch.float64), 0
    for crop in _training_crops(images, size, crops, scales, seed):
        spec += _periodogram(crop)
        count += 1
    return _fit_log_spectrum(spec / count, orders)


def fit_residual_band_variances(restore: Callable[[Tensor, Tensor], Tensor], orders: Sequence[int],
                                images: Optional[Sequence[str]] = None, size: int = 64, crops: int = 6,
                                scales: Sequence[int] = (1, 2, 4), seed: int = 0,
                                kinds: Optional[Sequence[str]] = None, batch: int = 32) -> list[float]:
    r"""Band variances $Q_j$ of what a restorer leaves: the fit of :func:`fit_band_variances` to the mean
    periodogram of $x_0 - R(c)$ instead of $x_0$.

    The crops are those of :func:`fit_band_variances` (three channels); each gets one training
    corruption (:func:`~injcert.data.corruptions.corrupt_batch` over ``kinds``, none unconditional)
    and ``restore(y, m)`` (e.g. :meth:`~injcert.model.CondUNet.anchor`) is run on it in batches of
    ``batch``. With these variances the band skip around the anchor,
    $R + K_t(x_t - \alpha_t R)$, is the posterior mean of a Gaussian model of the restorer's error
    rather than of the image: it trusts the noisy state as much as the restorer's residual, not the
    image's own power, warrants. Any positive variances keep every bound (``proofs/05``, item 10).
    Deterministic for a given ``seed``.
    """
    from ..data.corruptions import corrupt_batch

    gen = torch.Generator().manual_seed(int(seed) + 1)
    x = torch.stack([c.to(torch.float32) for c in _training_crops(images, size, crops, scales, seed, channels=3)])
    spec = torch.zeros(size, size, dtype=torch.float64)
    for k in range(0, x.shape[0], batch):
        x0 = x[k:k + batch]
        y, m = corrupt_batch(x0, gen, p_uncond=0.0, kinds=kinds)
        with torch.no_grad():
            r = x0.to(torch.float64) - restore(y, m).to(torch.float64)
        for one in r:
            spec += _periodogram(one)
    return _fit_log_spectrum(spec / x.shape[0], orders)


def _training_crops(images: Optional[Sequence[str]], size: int, crops: int, scales: Sequence[int], seed: int,
                    channels: Optional[int] = None) -> Iterator[Tensor]:
    """``crops`` random ``size``² crops (float64) of every image at each downscale in ``scales``;
    ``channels=3`` repeats a gray image's channel. No image large enough: a ConfigError."""
    from ..data.images import TRAIN_IMAGES, load_image

    gen = torch.Generator().manual_seed(int(seed))
    count = 0
    for name in (TRAIN_IMAGES if images is None else images):
        x = load_image(name, gray=None if channels is None else False).to(torch.float64)
        for s in scales:
            y = F.avg_pool2d(x[None], s)[0] if s > 1 else x
            if y.shape[1] < size or y.shape[2] < size:
                continue
            for _ in range(crops):
                i = int(torch.randint(0, y.shape[1] - size + 1, (1,), generator=gen))
                j = int(torch.randint(0, y.shape[2] - size + 1, (1,), generator=gen))
                count += 1
                yield y[:, i:i + size, j:j + size]
    if count == 0:
        raise ConfigError(f"no image is at least {size}×{size}")


def _periodogram(x: Tensor) -> Tensor:
    """The periodogram per pixel of a ``C×n×n`` crop, channels averaged (float64)."""
    n = x.shape[-1]
    return torch.fft.fft2(x.to(torch.float64)).abs().pow(2).mean(0) / (n * n)


def _fit_log_spectrum(spec: Tensor, orders: Sequence[int]) -> list[float]:
    r"""The monotone least-squares fit of $\log S \approx \sum_j \hat B_j \log P_j$ (non-DC frequencies)."""
    import numpy as np
    from scipy.optimize import nnls

    size = spec.shape[-1]
    w = torch.fft.fftfreq(size, dtype=torch.float64) * 2 * math.pi
    basis = band_symbols(orders, w, w).reshape(len(orders) + 1, -1).T.numpy()[1:]  # drop DC
    target = spec.clamp_min(1e-12).log().reshape(-1).numpy()[1:]
    tri = np.tril(np.ones((len(orders) + 1, len(orders) + 1)))  # log P = tri @ (c, increments >= 0)
    design = basis @ tri
    sol, _ = nnls(np.concatenate([design, -design[:, :1]], axis=1), target)
    z = np.concatenate([[sol[0] - sol[-1]], sol[1:len(orders) + 1]])
    return [float(v) for v in np.exp(tri @ z)]
