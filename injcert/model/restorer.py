r"""The conditional restorer $R(c)$: an unconstrained network that reads only the condition $c = (y, m)$.

Every certificate of injcert is a statement about $x$ (``proofs/05``, item 11): a term that reads only
the observation $y$ and its corruption map $m$ is a constant for every Lipschitz, log-norm, log-det and
fixed-point bound. So the part of the model that *restores* — that fills a hole from its surroundings,
deblurs, denoises — can be as large and as unconstrained as quality needs, and is trained by direct
supervision on $x_0$. The certified score network then only refines around it: its exact linear part
is the Gaussian posterior mean around $R(c)$ (:meth:`~injcert.model.unet.CondUNet.forward`,
``anchor``).

The restorer sees, besides $y$ and $m$, cheap classical estimates of the image computed from the
observed pixels (``m[:, 0] == 1``):

* the **biharmonic fill** (:func:`biharmonic_fill`, the estimate of
  :func:`skimage.restoration.inpaint_biharmonic`, by conjugate gradients in torch), started from the
  **pull-push fill** (Gortler et al. 1996, "The Lumigraph", section 3.4: a pyramid of observed-pixel
  means averaged down to one pixel and interpolated back up, so every missing pixel gets a value
  from the nearest observed ones at any distance — global context at any resolution in $O(HW)$);
* **normalized convolution** (Knutsson and Westin 1993) at three scales: Gaussian-weighted means of
  the observed pixels with their weights (certainties).

It predicts a residual on the biharmonic fill of the missing pixels with a U-Net whose bottom level
adds a global average of its features (global context); the last layer starts at zero, so an
untrained restorer *is* the classical fill. Every pixel that was seen (as is, blurred or noisy) is
returned as observed: $R$ fills holes, and is trained on masks (``configs/restorer.json``).

With ``symmetries=8`` the restorer's estimate is the average of the network over the eight
symmetries of the square (the input flipped and turned by quarter turns, the output turned back):
an ensemble of the network with itself that costs eight passes and no weights. It reads only the
condition, so it changes no bound either. Training fits the single network
(:meth:`Restorer.network`), on patches drawn with the same symmetries (the ``dihedral`` option).

Fully convolutional, any size down to 1×1: the input is padded (replicate) to a multiple of
:attr:`Restorer.downsampling_factor` and the output cropped back. It has no locality in the sense of
tiled evaluation (the fill and the global average see the whole image): the score network computes
$R(c)$ once on the whole image and tiles crop it (:class:`~injcert.tasks.tiling.TiledModel`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .bands import lowpass

__all__ = ["Restorer", "seen_pixels", "pull_push_fill", "biharmonic_fill", "normalized_convolution"]

#: Conjugate-gradient steps of the biharmonic fill the restorer starts from (:func:`biharmonic_fill`):
#: enough for holes a few pixels across to converge (random pixels, thin gaps, strokes), while larger
#: holes get a smooth start that the network refines.
BIHARMONIC_ITERATIONS = 64

#: The values of the restorer's ``symmetries`` option: the network alone, or its average over the
#: eight symmetries of the square.
SYMMETRIES = (1, 8)

#: Binomial orders of the normalized convolutions (Gaussian std $\sqrt{a/2}$: 1, 2 and 4 pixels).
NC_ORDERS = (2, 8, 32)


def seen_pixels(m: Tensor) -> Tensor:
    """The pixels of an expanded corruption map ``m`` (N×3×H×W) that were seen — as is, blurred or
    noisy — as an N×1×H×W bool: those the restorer returns as observed; the rest are missing."""
    return (m[:, :1] == 1) | (m[:, 1:2] > 0) | (m[:, 2:3] > 0)


def pull_push_fill(y: Tensor, w: Tensor) -> Tensor:
    r"""Fill the pixels of ``y`` (N×C×H×W) whose weight ``w`` (N×1×H×W in $[0, 1]$) is 0 from the
    weighted ones, by pull-push (Gortler et al. 1996): average $(w y, w)$ down a 2× pyramid to one
    pixel, then, from the coarsest level up, keep each level's weighted mean where its weight is full
    and blend towards the bilinearly upsampled coarser fill where it is not. Pixels with ``w == 1``
    keep their value; an image without any weight gets zeros."""
    levels = []
    yw, ww = y * w, w
    while True:
        levels.append((yw, ww))
        h, wd = yw.shape[-2:]
        if h == 1 and wd == 1:
            break
        ph, pw = h % 2 if h > 1 else 0, wd % 2 if wd > 1 else 0
        k = (2 if h > 1 else 1, 2 if wd > 1 else 1)
        yw = F.avg_pool2d(F.pad(yw, (0, pw, 0, ph)), k)
        ww = F.avg_pool2d(F.pad(ww, (0, pw, 0, ph)), k)
    fill = levels[-1][0] / levels[-1][1].clamp_min(1e-12) * (levels[-1][1] > 0)
    for yw, ww in reversed(levels[:-1]):
        up = F.interpolate(fill, scale_factor=2, mode="bilinear", align_corners=False)[..., :yw.shape[-2], :yw.shape[-1]]
        if up.shape[-2:] != yw.shape[-2:]:  # a side of 1 was not halved
            up = F.interpolate(fill, size=yw.shape[-2:], mode="bilinear", align_corners=False)
        a = (ww * 2.0).clamp(max=1.0)  # a cell half observed is trusted fully
        fill = a * (yw / ww.clamp_min(1e-12)) + (1.0 - a) * up
    return fill


def _neumann_laplacian(f: Tensor, degree: Tensor) -> Tensor:
    r"""The grid graph's Laplacian $(Lf)_i = \sum_{j \sim i}(f_j - f_i)$ over the 4-neighbours inside the
    image (symmetric; ``degree`` is the number of neighbours of each pixel)."""
    c = f.shape[1]
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=f.dtype, device=f.device)
    return F.conv2d(F.pad(f, (1, 1, 1, 1)), k.view(1, 1, 3, 3).expand(c, 1, 3, 3), groups=c) - degree * f


def biharmonic_fill(y: Tensor, w: Tensor, iterations: int = 64) -> Tensor:
    r"""Fill the pixels of ``y`` where ``w == 0`` by minimising $\lVert L f\rVert^2$ over them ($L$ the
    grid Laplacian with free boundary, the observed pixels fixed): the biharmonic fill that
    :func:`skimage.restoration.inpaint_biharmonic` computes, here by ``iterations`` steps of conjugate
    gradients (Hestenes and Stiefel 1952) on the normal equations $P L^2 P u = -P L^2 (w y)$, per image
    and channel, started from :func:`pull_push_fill` — a fixed amount of work, on any device, whatever
    it has converged to (the restorer reads it as an input)."""
    known = (w > 0.5).to(y.dtype)
    miss = 1.0 - known
    one = torch.ones_like(known[:1, :1])
    degree = _neumann_laplacian(one, torch.zeros_like(one)).expand_as(known)

    def op(v: Tensor) -> Tensor:
        return miss * _neumann_laplacian(_neumann_laplacian(miss * v, degree), degree)

    fixed = known * y
    u = miss * pull_push_fill(y, known)
    r = -miss * _neumann_laplacian(_neumann_laplacian(fixed, degree), degree) - op(u)
    p = r.clone()
    rs = r.pow(2).sum((2, 3), keepdim=True)
    tiny = torch.finfo(y.dtype).tiny
    for _ in range(int(iterations)):
        ap = op(p)
        pap = (p * ap).sum((2, 3), keepdim=True)
        alpha = torch.where(pap > tiny, rs / pap.clamp_min(tiny), torch.zeros_like(pap))
        u = u + alpha * p
        r = r - alpha * ap
        rs_new = r.pow(2).sum((2, 3), keepdim=True)
        p = r + torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs)) * p
        rs = rs_new
    return fixed + miss * u


def normalized_convolution(y: Tensor, w: Tensor, order: int) -> tuple[Tensor, Tensor]:
    r"""Normalized convolution (Knutsson and Westin 1993) with the binomial blur $G_a$ of ``order``:
    $(G(w y)/G(w),\ G(w))$ — the weighted local mean of the observed pixels and its certainty."""
    num = lowpass(y * w, order)
    den = lowpass(w, order)
    return num / den.clamp_min(1e-6), den


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, c), c)  # up to 8 groups (Wu and He 2018), dividing the channels


class _Level(nn.Module):
    """A pre-activation residual block: GroupNorm, GELU, 3×3 convolution, twice."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.n1, self.n2 = _norm(cin), _norm(cout)
        self.c1, self.c2 = _conv(cin, cout), _conv(cout, cout)
        self.proj = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h) + self.c2(F.gelu(self.n2(self.c1(F.gelu(self.n1(h))))))


class Restorer(nn.Module):
    r"""$R(c)$: the conditional restorer (see the module docstring).

    Arguments:
        in_channels: image channels $C$.
        map_channels: channels of the corruption map $m$.
        width: channels at the finest level.
        mults: one channel multiplier per level (``len`` = levels; each level halves the size).
        symmetries: 1 (the network alone) or 8 (its average over the eight symmetries of the square,
            see the module docstring).

    Raises:
        ConfigError: a bad option (one line).
    """

    def __init__(self, in_channels: int = 3, map_channels: int = 3, width: int = 32,
                 mults: Sequence[int] = (1, 2, 3, 4), symmetries: int = 1) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"restorer width must be an int >= 1, got {width!r}")
        if not isinstance(mults, (list, tuple)) or not mults or any(
                isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in mults):
            raise ConfigError(f"restorer mults must be a non-empty list of ints >= 1, got {mults!r}")
        if isinstance(symmetries, bool) or symmetries not in SYMMETRIES:
            raise ConfigError(f"restorer symmetries must be one of {list(SYMMETRIES)}, got {symmetries!r}")
        self.in_channels, self.map_channels = int(in_channels), int(map_channels)
        self.symmetries = int(symmetries)
        self.config = {"width": int(width), "mults": [int(k) for k in mults]}
        if self.symmetries != 1:  # a config without the key is the network alone, as before the option
            self.config["symmetries"] = self.symmetries
        chans = [width * k for k in mults]
        c = self.in_channels
        feats = c + map_channels + c + len(NC_ORDERS) * (c + 1)  # y, m, base, (estimate, certainty) per scale
        self.stem = _conv(feats, chans[0])
        self.down = nn.ModuleList()
        prev = chans[0]
        for ch in chans:
            self.down.append(_Level(prev, ch))
            prev = ch
        self.glob = nn.Linear(prev, prev)
        self.up = nn.ModuleList(_Level(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(len(chans) - 1)))
        self.out_norm = _norm(chans[0])
        self.out = _conv(chans[0], c)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.downsampling_factor = 2 ** (len(chans) - 1)

    def features(self, y: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The network's input, the base image it predicts a residual on, and the mask of the pixels
        that were seen (as is, blurred or noisy)."""
        known = (m[:, :1] == 1).to(y.dtype)
        seen = seen_pixels(m).to(y.dtype)
        fill = biharmonic_fill(y, known, BIHARMONIC_ITERATIONS)
        base = seen * y + (1.0 - seen) * fill
        parts = [y * seen, m, base]
        for a in NC_ORDERS:
            est, cert = normalized_convolution(y, known, a)
            parts += [est, cert]
        return torch.cat(parts, dim=1), base, seen

    def forward(self, y: Tensor, m: Tensor) -> Tensor:
        """$R(y, m)$ (N×C×H×W): the restored image. It fills the *missing* pixels; every pixel that was
        seen — as is, blurred or noisy — is returned as ``y`` exactly, so the denoiser's linear part
        around $R$ is, there, the Gaussian denoiser of the observation itself (deblurring and denoising
        are the certified flow's work, from a classical start). With ``symmetries=8``, the average of
        :meth:`network` over the eight symmetries of the square."""
        if self.symmetries == 1:
            return self.network(y, m)
        total = None
        for flip in (False, True):
            for turns in range(4):
                yy, mm = _transform(y, flip, turns), _transform(m, flip, turns)
                out = _untransform(self.network(yy, mm), flip, turns)
                total = out if total is None else total + out
        out = total / 8
        return torch.where(seen_pixels(m).expand_as(out), y, out)  # exactly y, not a rounded mean of y

    def network(self, y: Tensor, m: Tensor) -> Tensor:
        """The network alone, on the image as given (what training fits; :meth:`forward` with
        ``symmetries=1``)."""
        inp, base, seen = self.features(y, m)
        h, w = y.shape[-2:]
        f = self.downsampling_factor  # padded to a multiple of it, at least 2 at the coarsest level (GroupNorm)
        ph, pw = max(2 * f, h + (-h) % f) - h, max(2 * f, w + (-w) % f) - w
        if ph or pw:
            inp = F.pad(inp, (0, pw, 0, ph), mode="replicate")
        hcur = self.stem(inp)
        skips = []
        for i, level in enumerate(self.down):
            if i > 0:
                skips.append(hcur)
                hcur = F.avg_pool2d(hcur, 2)
            hcur = level(hcur)
        hcur = hcur + self.glob(hcur.mean(dim=(2, 3)))[:, :, None, None]
        for level in self.up:
            hcur = level(torch.cat([F.interpolate(hcur, scale_factor=2, mode="nearest"), skips.pop()], dim=1))
        out = base + self.out(F.gelu(self.out_norm(hcur)))[..., :h, :w]
        return torch.where(seen.bool().expand_as(out), y, out)


def _transform(t: Tensor, flip: bool, turns: int) -> Tensor:
    """``t`` mirrored left-right (``flip``), then turned by ``turns`` quarter turns."""
    return torch.rot90(t.flip(-1) if flip else t, turns, (-2, -1))


def _untransform(t: Tensor, flip: bool, turns: int) -> Tensor:
    """The inverse of :func:`_transform`."""
    t = torch.rot90(t, -turns, (-2, -1))
    return t.flip(-1) if flip else t
