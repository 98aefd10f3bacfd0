r"""Classical restorations: the baselines of the benchmarks and the starting estimates of reconstruction.

One home for the methods a user would run without a learned model (scikit-image and ``bm3d``):

* missing pixels (box, free-form, random, gaps): :func:`skimage.restoration.inpaint_biharmonic`
  (Damelin & Hoang 2018);
* blurred region: :func:`skimage.restoration.richardson_lucy` (30 iterations) or
  :func:`skimage.restoration.wiener` (balance 0.01) with the known Gaussian PSF, pasted into the
  blurred region; ``richardson_lucy_local``, the same multiplicative iteration for the operator
  the corruption actually applies, $A z = M \odot (k * z) + (1 - M) \odot z$ ($M$ the blurred
  region; the observed pixels outside held fixed; adjoint by :func:`torch.func.vjp`); and
  ``lsmr_local``, least squares for that operator by :func:`scipy.sparse.linalg.lsmr`
  (:data:`LSMR_ITERATIONS` iterations; :class:`LocalBlurSystem`) — the strongest of them on the
  noise-free blur of the benchmarks, hence the default (chosen by ``python
  benchmarks/deblur_iterations.py``; see ``docs/benchmarks/results.md``). The whole-image methods treat the sharp
  outside as blurred too and ring along the region's border; scikit-image has no spatially varying
  operator, hence the local ones;
* additive Gaussian noise of known $\sigma$: :func:`skimage.restoration.denoise_nl_means`
  (Buades et al. 2005, ``h = 0.8 σ`` with the noise-variance correction),
  :func:`skimage.restoration.denoise_tv_chambolle` (weight $\sigma$) and BM3D (Dabov et al. 2007,
  ``bm3d.bm3d`` given $\sigma$), applied inside the noisy region.

Images are in $[-1, 1]$; the methods run in $[0, 1]$ (so $\sigma$ is halved) and the result is
mapped back. Every function takes ``y`` (N×C×H×W) and the corruption map ``m`` (N×3×H×W).

It sits in the data layer (below the model, whose refinement examples start from the biharmonic
estimate); :mod:`injcert.tasks.classical` re-exports it under its old path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .corruptions import _blur_matrix, blur_radius, local_blur
from ..errors import ArgumentError

__all__ = ["METHODS", "classical_estimate", "default_method", "gaussian_psf", "LSMR_ITERATIONS", "LocalBlurSystem"]

#: Iterations of ``lsmr_local``, chosen on the training images (``benchmarks/deblur_iterations.py``).
LSMR_ITERATIONS = 1000


def _to_np(x: Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).permute(1, 2, 0).cpu().numpy()


def _from_np(a: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).to(dtype=like.dtype, device=like.device)


def gaussian_psf(sigma: float) -> np.ndarray:
    """The normalised Gaussian PSF of :func:`~injcert.data.corruptions.gaussian_blur` (truncate 4)."""
    r = max(1, int(4 * sigma + 0.5))
    ax = np.arange(-r, r + 1, dtype=np.float64)
    k1 = np.exp(-0.5 * (ax / max(sigma, 1e-12)) ** 2)
    psf = np.outer(k1, k1)
    return psf / psf.sum()


def _biharmonic(yi: Tensor, mi: Tensor, **_: float) -> Tensor:
    from skimage.restoration import inpaint_biharmonic

    missing = (mi[0] < 0.5).cpu().numpy()
    if not missing.any():
        return yi.clone()
    if missing.all():
        # nothing observed (a box over a 1×1 image, every pixel of a random mask hidden): the biharmonic
        # equation has no boundary data (every affine image solves it, and scikit-image's bounding box of
        # the known points is empty); the fill is 0, the middle of [-1, 1], what y holds where missing
        return torch.zeros_like(yi)
    return _from_np(inpaint_biharmonic(_to_np(yi), missing, channel_axis=-1), yi)


def _per_channel(fn: Callable[[np.ndarray], np.ndarray], yi: Tensor, pad: int = 0) -> np.ndarray:
    """``fn`` on each channel in $[0, 1]$, the image padded by ``pad`` pixels (edge mode: the
    deconvolutions assume the PSF's support fits and circular-free borders) and cropped back."""
    u = (_to_np(yi) + 1.0) / 2.0
    h, w = u.shape[:2]
    out = []
    for c in range(u.shape[-1]):
        v = np.pad(u[..., c], pad, mode="edge") if pad else u[..., c]
        out.append(fn(v)[pad:pad + h, pad:pad + w])
    return np.stack(out, axis=-1) * 2.0 - 1.0


def _richardson_lucy(yi: Tensor, mi: Tensor, blur_sigma: float = 2.0, **_: float) -> Tensor:
    from skimage.restoration import richardson_lucy

    psf = gaussian_psf(blur_sigma)
    out = _from_np(_per_channel(lambda u: richardson_lucy(np.clip(u, 1e-6, 1.0), psf, num_iter=30, clip=True), yi,
                                pad=psf.shape[0]), yi)
    return torch.where(mi[1:2] > 0.5, out, yi)


def _richardson_lucy_local(yi: Tensor, mi: Tensor, blur_sigma: float = 2.0, num_iter: int = 30, **_: float) -> Tensor:
    """Richardson–Lucy for the local blur $A z = M \\odot (k * z) + (1 - M) \\odot z$ of
    :class:`~injcert.data.corruptions.BlurRegion`: $x \\leftarrow x \\odot A^\\top(y / A x) / A^\\top 1$
    on the blurred region, in $[0, 1]$, the observed pixels outside it fixed to $y$."""
    region = mi[1:2] > 0.5
    if not bool(region.any()):
        return yi.clone()
    y = ((yi.to(torch.float64) + 1.0) / 2.0).clamp_min(1e-6)[None]
    reg = region[None].expand_as(y)

    def forward(z: Tensor) -> Tensor:
        return local_blur(z, reg, blur_sigma)

    _, adjoint = torch.func.vjp(forward, y)
    norm = adjoint(torch.ones_like(y))[0]
    x = torch.where(reg, y.clamp(1e-6, 1.0), y)
    for _ in range(num_iter):
        ratio = y / forward(x).clamp_min(1e-12)
        x = torch.where(reg, (x * adjoint(ratio)[0] / norm).clamp(0.0, 1.0), y)
    return torch.where(region, (x[0] * 2.0 - 1.0).to(yi.dtype), yi)


@dataclass
class LocalBlurSystem:
    r"""The least-squares system of the local blur $A z = M \odot (k * z) + (1 - M) \odot z$ for the
    pixels $u$ of the blurred region $M$, the sharp observed pixels outside moved to the right side:
    $B u = M \odot (k * (M \odot u))$, $b = M \odot (y - k * ((1 - M) \odot y))$, so that
    $b - B u = M \odot (y - A x)$ for $x = u$ inside and $y$ outside.

    Set up on the crop ``rows × cols`` of the image (the region's bounding box grown by the kernel
    radius + 1: no region pixel sees the crop's padding, so the operator is the same), in numpy
    float64, the blur of :func:`~injcert.data.corruptions.gaussian_blur` as two sparse banded
    per-axis matrices (reflect padding included; adjoint: their transposes). numpy and scipy
    throughout: torch's and numpy's thread pools contend inside scipy's iteration,
    which then runs many times slower.
    """

    rows: slice
    cols: slice
    y: np.ndarray  # the observation on the crop, C×h×w
    mask: np.ndarray  # M on the crop (0/1, broadcast to y)
    bh: Any  # scipy.sparse.csr_matrix: the blur along H (rows), reflect padding included
    bw: Any  # the same along W

    @classmethod
    def make(cls, yi: Tensor, region: Tensor, blur_sigma: float) -> "LocalBlurSystem":
        """For one image ``yi`` (C×H×W) and its boolean ``region`` (H×W, not empty)."""
        from scipy.sparse import csr_matrix

        h, w = region.shape
        radius = blur_radius(blur_sigma, h, w)
        rows, cols = region.any(1).nonzero()[:, 0], region.any(0).nonzero()[:, 0]
        rs = slice(max(0, int(rows[0]) - radius - 1), min(h, int(rows[-1]) + radius + 2))
        cs = slice(max(0, int(cols[0]) - radius - 1), min(w, int(cols[-1]) + radius + 2))
        if min(rs.stop - rs.start, cs.stop - cs.start) - 1 < radius:  # the crop would cap the kernel
            rs, cs = slice(0, h), slice(0, w)
        y = yi[:, rs, cs].detach().to(torch.float64).cpu().numpy()
        mask = np.broadcast_to(region[rs, cs].cpu().numpy().astype(np.float64), y.shape)
        cpu = torch.device("cpu")
        bh = csr_matrix(_blur_matrix(y.shape[-2], blur_sigma, radius, torch.float64, cpu).numpy())
        bw = csr_matrix(_blur_matrix(y.shape[-1], blur_sigma, radius, torch.float64, cpu).numpy())
        return cls(rs, cs, y, mask, bh, bw)

    def _blur(self, z: np.ndarray, transpose: bool = False) -> np.ndarray:
        a, c = (self.bh.T, self.bw.T) if transpose else (self.bh, self.bw)
        return np.stack([(c @ (a @ zc).T).T for zc in z])  # a z c^T per channel

    def forward(self, u: np.ndarray) -> np.ndarray:
        """$B u$ (``u`` flat or C×h×w; returns flat)."""
        m = self.mask
        return (m * self._blur(m * u.reshape(self.y.shape))).reshape(-1)

    def adjoint(self, v: np.ndarray) -> np.ndarray:
        r"""$B^\top v$."""
        m = self.mask
        return (m * self._blur(m * v.reshape(self.y.shape), transpose=True)).reshape(-1)

    def rhs(self) -> np.ndarray:
        """$b$ (flat)."""
        return (self.mask * (self.y - self._blur((1.0 - self.mask) * self.y))).reshape(-1)

    def paste(self, u: np.ndarray, yi: Tensor) -> Tensor:
        """The image: ``u`` (flat, on the crop) inside the region, ``yi`` outside."""
        out = yi.clone()
        ut = torch.from_numpy(np.ascontiguousarray(u.reshape(self.y.shape))).to(device=yi.device, dtype=yi.dtype)
        inside = torch.from_numpy(self.mask > 0.5).to(yi.device)
        out[:, self.rows, self.cols] = torch.where(inside, ut, yi[:, self.rows, self.cols])
        return out


def _lsmr_local(yi: Tensor, mi: Tensor, blur_sigma: float = 2.0, num_iter: int = LSMR_ITERATIONS,
                start: Optional[Tensor] = None, **_: float) -> Tensor:
    r"""Least-squares deconvolution of the local blur (:class:`LocalBlurSystem`): the pixels $u$ of
    the blurred region minimise $\lVert B u - b\rVert_2$, by :func:`scipy.sparse.linalg.lsmr`
    (Fong & Saunders 2011) from $u_0 = y$ (or from ``start``, C×H×W: then the correction of least
    norm to it), stopped after ``num_iter`` iterations (the stopping is the regulariser: the blur is
    noise-free but ill-conditioned), clipped to $[-1, 1]$."""
    from scipy.sparse.linalg import LinearOperator, lsmr

    region = mi[1] > 0.5
    h, w = region.shape
    if not bool(region.any()) or blur_radius(blur_sigma, h, w) <= 0:
        return yi.clone()  # no blurred pixel, or gaussian_blur is the identity there: y is exact
    sys_ = LocalBlurSystem.make(yi, region, blur_sigma)
    n = sys_.y.size
    op = LinearOperator((n, n), matvec=sys_.forward, rmatvec=sys_.adjoint, dtype=np.float64)
    first = sys_.y if start is None else start[:, sys_.rows, sys_.cols].detach().to(torch.float64).cpu().numpy()
    u0 = (sys_.mask * first).reshape(-1)
    d = lsmr(op, sys_.rhs() - sys_.forward(u0), maxiter=int(num_iter), atol=0.0, btol=0.0)[0]
    return sys_.paste(np.clip(u0 + d, -1.0, 1.0), yi)


def _wiener(yi: Tensor, mi: Tensor, blur_sigma: float = 2.0, **_: float) -> Tensor:
    from skimage.restoration import wiener

    psf = gaussian_psf(blur_sigma)
    out = _from_np(_per_channel(lambda u: np.clip(wiener(u, psf, balance=0.01, clip=False), 0.0, 1.0), yi,
                                pad=psf.shape[0]), yi)
    return torch.where(mi[1:2] > 0.5, out, yi)


def _noise_sigma01(mi: Tensor) -> float:
    return float(mi[2].max()) / 2.0  # sigma in [0, 1] units


def _denoise(yi: Tensor, mi: Tensor, fn: Callable[[np.ndarray, float], np.ndarray]) -> Tensor:
    """``fn(u, sigma)`` on the image in $[0, 1]$ (H×W×C) with the noise sigma of the map, kept inside
    the noisy region."""
    s = _noise_sigma01(mi)
    if s <= 0:
        return yi.clone()
    d = np.asarray(fn((_to_np(yi) + 1.0) / 2.0, s), dtype=np.float64)
    return torch.where(mi[2:3] > 0, _from_np(d * 2.0 - 1.0, yi), yi)


def _nl_means(yi: Tensor, mi: Tensor, **_: float) -> Tensor:
    from skimage.restoration import denoise_nl_means

    return _denoise(yi, mi, lambda u, s: denoise_nl_means(u, h=0.8 * s, sigma=s, patch_size=5, patch_distance=6,
                                                          fast_mode=True, channel_axis=-1))


def _tv(yi: Tensor, mi: Tensor, **_: float) -> Tensor:
    from skimage.restoration import denoise_tv_chambolle

    return _denoise(yi, mi, lambda u, s: denoise_tv_chambolle(u, weight=s, channel_axis=-1))


def _bm3d_padded(u: np.ndarray, s: float) -> np.ndarray:
    import bm3d

    h, w = u.shape[:2]
    # the BM3D library crashes (segfault) on images smaller than its blocks: pad symmetrically to 32
    ph, pw = max(0, 32 - h), max(0, 32 - w)
    if ph or pw:
        u = np.pad(u, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
    # one thread: the library's default (0, auto) aggregates in a varying order, so the same input gave
    # results differing by ~1e-6 from call to call, and reconstruct was not deterministic for noise
    profile = bm3d.BM3DProfile()
    profile.num_threads = 1
    return np.asarray(bm3d.bm3d(u, sigma_psd=s, profile=profile))[:h, :w]


def _bm3d(yi: Tensor, mi: Tensor, **_: float) -> Tensor:
    return _denoise(yi, mi, _bm3d_padded)


#: name -> per-image function ``(y_i, m_i, **options) -> x_hat_i``.
METHODS: Dict[str, Callable[..., Tensor]] = {
    "inpaint_biharmonic": _biharmonic,
    "richardson_lucy": _richardson_lucy,
    "richardson_lucy_local": _richardson_lucy_local,
    "wiener": _wiener,
    "lsmr_local": _lsmr_local,
    "denoise_nl_means": _nl_means,
    "denoise_tv_chambolle": _tv,
    "bm3d": _bm3d,
}


def default_method(m: Tensor) -> str:
    """The classical method for the corruption the map ``m`` (N×3×H×W) describes: noise if channel 2
    is set, blur if channel 1 is, missing pixels otherwise."""
    if bool((m[:, 2] > 0).any()):
        return "bm3d"
    if bool((m[:, 1] > 0.5).any()):
        return "lsmr_local"
    return "inpaint_biharmonic"


def classical_estimate(y: Tensor, m: Tensor, method: str = "auto", *, blur_sigma: float = 2.0) -> Tuple[str, Tensor]:
    """Restore ``y`` (map ``m``) with a classical method; returns ``(method, x_hat)``.

    Arguments:
        y: the observation, N×C×H×W in $[-1, 1]$.
        m: the corruption map, N×3×H×W.
        method: a name from :data:`METHODS`, or ``"auto"`` (:func:`default_method`).
        blur_sigma: the Gaussian PSF's standard deviation for the deblurring methods.

    Raises:
        ValueError: an unknown method (the message lists the choices).
    """
    if method == "auto":
        method = default_method(m)
    fn = METHODS.get(method)
    if fn is None:
        raise ArgumentError(f"unknown classical method {method!r}; choices: {['auto', *METHODS]}")
    return method, torch.stack([fn(yi, mi, blur_sigma=blur_sigma) for yi, mi in zip(y, m)])
