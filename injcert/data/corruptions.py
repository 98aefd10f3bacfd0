r"""Corruption operators: ``y = A(x) (+ noise)`` together with a corruption map ``m``.

Long because the six corruption operators, their maps and their composition form one contract (the
map conventions of ``docs/design.md``); each operator is a short class.

Conventions (``docs/design.md``): images are ``N×C×H×W`` in ``[-1, 1]``, float32 or float64,
on any device. Every corruption returns the observation ``y`` (same shape and dtype as ``x``) and
the map ``m`` of shape ``N×K×H×W`` with ``K =`` :data:`MAP_CHANNELS` ``= 3``:

* channel 0 — 1 where the pixel is observed *as is* (``y = x`` there), 0 otherwise (missing,
  blurred or noisy);
* channel 1 — 1 inside a blurred region, 0 elsewhere;
* channel 2 — the standard deviation $\sigma$ of the Gaussian noise added to the pixel (0 where
  none was added).

A missing pixel has ``m[:, :, i, j] = (0, 0, 0)`` and ``y = 0``. Maps are identical for float32
and float64 inputs given the same seed (the geometry is drawn in float64 on the generator's
device, rasterised in float32).

Each corruption is an object: parameters go to the constructor, randomness comes from the
``generator`` argument (a ``torch.Generator``, an ``int`` seed, or ``None`` — a seed drawn from
torch's global generator, so ``torch.manual_seed`` makes it reproducible). Every example of a
batch gets its own random geometry. :meth:`Corruption.sample` also returns the realised
deterministic forward operator ``A`` (everything but the noise draw), so that a reconstruction
$\hat x$ can be checked through its forward residual $\lVert A(\hat x) - y\rVert$.

Free-form masks follow the random-brush idea of Yu et al. (2019), "Free-Form Image Inpainting
with Gated Convolution"; Gaussian blur is the separable truncated kernel of
:func:`scipy.ndimage.gaussian_filter` (truncate $= 4\sigma$) with reflect padding.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ArgumentError, ConfigError, InputError

__all__ = [
    "MAP_CHANNELS",
    "GeneratorLike",
    "Observation",
    "Corruption",
    "BoxMask",
    "FreeFormMask",
    "RandomPixelMask",
    "HollowGaps",
    "BlurRegion",
    "GaussianNoise",
    "Compose",
    "CORRUPTIONS",
    "make_corruption",
    "random_corruption",
    "corrupt_batch",
    "expand_map",
    "gaussian_blur",
    "blur_radius",
    "local_blur",
    "as_generator",
]

MAP_CHANNELS: int = 3
"""Number of channels ``K`` of a corruption map: (observed as is, blurred, noise σ)."""

GeneratorLike = Union[torch.Generator, int, None]


# --------------------------------------------------------------------------------------------
# validation helpers


def as_generator(generator: GeneratorLike) -> torch.Generator:
    """Turn ``generator`` into a ``torch.Generator``.

    Arguments:
        generator: a generator (returned as is), an ``int`` seed (a fresh CPU generator seeded
            with it), or ``None`` (a fresh CPU generator seeded from torch's global generator).

    Returns:
        A ``torch.Generator``.

    Raises:
        ValueError: any other type, or a negative seed.
    """
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,)))
        return torch.Generator().manual_seed(seed)
    if isinstance(generator, int) and not isinstance(generator, bool):
        if generator < 0:
            raise ArgumentError(f"a seed must be a non-negative int, got {generator!r}")
        return torch.Generator().manual_seed(generator)
    raise ArgumentError(
        f"generator must be a torch.Generator, an int seed or None, got {generator!r} "
        f"of type {type(generator).__name__}"
    )


def _check_image(x: object, what: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor N×C×H×W, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"{what} must be N×C×H×W (4-D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{what} must have a floating dtype (float32/float64), got {x.dtype}")
    return x


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return v


def _fraction(name: str, value: object) -> float:
    v = _number(name, value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{name} must lie in [0, 1], got {value!r}")
    return v


def _frac_range(min_frac: object, max_frac: object) -> tuple[float, float]:
    lo, hi = _fraction("min_frac", min_frac), _fraction("max_frac", max_frac)
    if lo > hi:
        raise ConfigError(f"min_frac must be <= max_frac, got min_frac={min_frac!r} > max_frac={max_frac!r}")
    return lo, hi


def _positive(name: str, value: object) -> float:
    v = _number(name, value)
    if v <= 0.0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return v


def _nonnegative(name: str, value: object) -> float:
    v = _number(name, value)
    if v < 0.0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
    return v


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def expand_map(m: Tensor) -> Tensor:
    """Bring a corruption map to ``K =`` :data:`MAP_CHANNELS` channels.

    Arguments:
        m: ``N×1×H×W`` (missing-pixel map: 1 observed, 0 missing) or ``N×3×H×W``.

    Returns:
        ``N×3×H×W``: a 1-channel map gets zero blur and noise channels; a 3-channel map is
        returned unchanged (the same tensor).

    Raises:
        ValueError: not a 4-D floating tensor, or another number of channels.
    """
    _check_image(m, "m")
    k = m.shape[1]
    if k == MAP_CHANNELS:
        return m
    if k == 1:
        zeros = m.new_zeros(m.shape[0], MAP_CHANNELS - 1, *m.shape[2:])
        return torch.cat([m, zeros], dim=1)
    raise InputError(f"m must have 1 or {MAP_CHANNELS} channels, got shape {tuple(m.shape)}")


# --------------------------------------------------------------------------------------------
# geometry


def _uniform(g: torch.Generator, *shape: int) -> Tensor:
    """Uniform [0, 1) float64 samples on the CPU, drawn with ``g`` on its own device."""
    return torch.rand(shape, generator=g, dtype=torch.float64, device=g.device).cpu()


def _grid(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates (row, col), float32, shapes ``1×H×1`` and ``1×1×W``."""
    r = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1) + 0.5
    c = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w) + 0.5
    return r, c


def _boxes(
    n: int, h: int, w: int, lo: float, hi: float, g: torch.Generator, device: torch.device
) -> Tensor:
    """One random axis-aligned box per example: bool ``N×1×H×W``, True inside.

    The side lengths are ``round(f·H)`` and ``round(f·W)`` with independent ``f ~ U[lo, hi]``
    (at least one pixel when ``f > 0``); the position is uniform over the valid placements.
    """
    u = _uniform(g, n, 4)
    fh = lo + (hi - lo) * u[:, 0]
    fw = lo + (hi - lo) * u[:, 1]
    bh = torch.where(fh > 0, torch.clamp(torch.round(fh * h), min=1), torch.zeros_like(fh)).clamp(max=h)
    bw = torch.where(fw > 0, torch.clamp(torch.round(fw * w), min=1), torch.zeros_like(fw)).clamp(max=w)
    top = torch.floor(u[:, 2] * (h - bh + 1)).clamp(max=h - bh)
    left = torch.floor(u[:, 3] * (w - bw + 1)).clamp(max=w - bw)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    t, b = top.to(device).view(n, 1, 1), (top + bh).to(device).view(n, 1, 1)
    lft, rgt = left.to(device).view(n, 1, 1), (left + bw).to(device).view(n, 1, 1)
    inside = (rows >= t) & (rows < b) & (cols >= lft) & (cols < rgt)
    return inside.unsqueeze(1)


def _segments_mask(seg: Tensor, radius: float, h: int, w: int, device: torch.device) -> Tensor:
    """Pixels within ``radius`` of any segment: bool ``N×1×H×W``.

    Arguments:
        seg: ``N×S×4`` float64 (row0, col0, row1, col1) in pixel units.
    """
    n, s = seg.shape[:2]
    r, c = _grid(h, w, device)
    out = torch.zeros(n, h, w, dtype=torch.bool, device=device)
    seg32 = seg.to(device=device, dtype=torch.float32)
    r2 = radius * radius
    for k in range(s):
        r0, c0, r1, c1 = (seg32[:, k, j].view(n, 1, 1) for j in range(4))
        vr, vc = r1 - r0, c1 - c0
        len2 = vr * vr + vc * vc
        t = ((r - r0) * vr + (c - c0) * vc) / torch.where(len2 > 0, len2, torch.ones_like(len2))
        t = t.clamp(0.0, 1.0)
        dr, dc = r0 + t * vr - r, c0 + t * vc - c
        out |= dr * dr + dc * dc <= r2
    return out.unsqueeze(1)


def _gaussian_kernel(sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    i = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (i / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def blur_radius(sigma: float, h: int, w: int, truncate: float = 4.0) -> int:
    r"""The kernel half-width :func:`gaussian_blur` uses on an ``h × w`` image: $\lceil
    \mathrm{truncate}\cdot\sigma\rceil$, capped at ``min(h, w) - 1``; ``<= 0`` means the blur is the identity."""
    return min(int(math.ceil(truncate * sigma)), h - 1, w - 1)


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    r"""Separable Gaussian blur of every channel, reflect padding (``scipy.ndimage`` style).

    The kernel is $k_i \propto e^{-i^2/2\sigma^2}$ for $|i| \le r$, $r = \lceil
    \mathrm{truncate}\cdot\sigma\rceil$, normalised to sum 1; ``r`` is capped at
    ``min(H, W) - 1`` (the most reflect padding allows), which truncates the kernel on tiny images.

    Arguments:
        x: ``N×C×H×W`` floating tensor.
        sigma: standard deviation in pixels, ``>= 0`` (0 returns a copy of ``x``).
        truncate: kernel half-width in units of ``sigma``.

    Returns:
        The blurred tensor, same shape, dtype and device.

    Raises:
        ValueError: a bad ``x`` or a negative / non-finite ``sigma``.
    """
    _check_image(x)
    sigma = _nonnegative("sigma", sigma)
    truncate = _positive("truncate", truncate)
    n, c, h, w = x.shape
    radius = blur_radius(sigma, h, w, truncate)
    if sigma == 0.0 or radius <= 0 or x.numel() == 0:
        return x.clone()
    k = _gaussian_kernel(sigma, radius, x.dtype, x.device)
    z = x.reshape(n * c, 1, h, w)
    z = F.conv2d(F.pad(z, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    z = F.conv2d(F.pad(z, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    return z.reshape(n, c, h, w)


def local_blur(x: Tensor, region: Tensor, sigma: float) -> Tensor:
    r"""The operator of :class:`BlurRegion`: $A x = R \odot (k * x) + (1 - R) \odot x$ — the whole
    image blurred by :func:`gaussian_blur` (so the region's edge mixes in outside pixels), kept
    only inside the boolean ``region`` (broadcast against ``x``)."""
    return torch.where(region, gaussian_blur(x, sigma), x)


def _blur_matrix(size: int, sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``size×size`` matrix of :func:`gaussian_blur` along one axis (reflect padding included)."""
    k = _gaussian_kernel(sigma, radius, dtype, device)
    eye = torch.eye(size, dtype=dtype, device=device).view(size, 1, size)
    cols = F.conv1d(F.pad(eye, (radius, radius), mode="reflect"), k.view(1, 1, -1)).view(size, size)
    return cols.T  # row i: the weights of every input pixel in output pixel i


def _blur_variance(v: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    r"""$\sum_j A_{ij}^2 v_j$ for the blur $A$ of :func:`gaussian_blur` (separable: $A = B_H \otimes B_W$, so
    $A^{\circ 2} = B_H^{\circ 2} \otimes B_W^{\circ 2}$), i.e. the variance of the blurred noise."""
    n, c, h, w = v.shape
    radius = blur_radius(sigma, h, w, truncate)
    if sigma == 0.0 or radius <= 0 or v.numel() == 0:
        return v.clone()
    bh = _blur_matrix(h, sigma, radius, v.dtype, v.device) ** 2
    bw = _blur_matrix(w, sigma, radius, v.dtype, v.device) ** 2
    return bh @ v @ bw.T


# --------------------------------------------------------------------------------------------
# observation and base class


@dataclass
class Observation:
    """One realised corruption.

    Attributes:
        y: the observation ``N×C×H×W`` (missing pixels are 0).
        m: the corruption map ``N×3×H×W`` (see the module docstring).
        operator: the realised deterministic forward operator ``A`` (no noise draw):
            ``y = A(x) + noise``. It accepts any tensor of ``x``'s shape.
    """

    y: Tensor
    m: Tensor
    operator: Callable[[Tensor], Tensor]
    #: ``variance(v) -> v'``: the per-pixel variance (``N×1×H×W``) of ``operator(x + e)`` for independent
    #: noise ``e`` of per-pixel variance ``v`` in its input, $v'_i = \sum_j A_{ij}^2 v_j$ (``None``: the
    #: operator keeps or zeroes pixels, so ``v' = v`` where kept). :class:`Compose` uses it to carry an
    #: earlier step's noise through a later blur.
    variance: Optional[Callable[[Tensor], Tensor]] = None

    def residual(self, x_hat: Tensor) -> Tensor:
        """Per-example Euclidean norm $\\lVert A(\\hat x) - y\\rVert_2$, shape ``N``."""
        return (self.operator(x_hat) - self.y).flatten(1).norm(dim=1)


class Corruption(ABC):
    """Base class: a random corruption operator. Subclasses implement :meth:`_sample`."""

    name: ClassVar[str] = "abstract"

    def __call__(self, x: Tensor, generator: GeneratorLike = None) -> tuple[Tensor, Tensor]:
        """Corrupt ``x``.

        Arguments:
            x: images ``N×C×H×W``, floating dtype.
            generator: a ``torch.Generator``, an int seed, or ``None``.

        Returns:
            ``(y, m)``: the observation (shape and dtype of ``x``) and the map ``N×3×H×W``.

        Raises:
            ValueError: ``x`` is not a 4-D floating tensor, or a bad ``generator``.
        """
        obs = self.sample(x, generator)
        return obs.y, obs.m

    def sample(self, x: Tensor, generator: GeneratorLike = None) -> Observation:
        """Corrupt ``x`` and return the :class:`Observation` with its forward operator.

        Arguments:
            x: images ``N×C×H×W``, floating dtype.
            generator: a ``torch.Generator``, an int seed, or ``None``.

        Returns:
            The :class:`Observation` ``(y, m, operator)``.

        Raises:
            ValueError: ``x`` is not a 4-D floating tensor, or a bad ``generator``.
        """
        _check_image(x)
        return self._sample(x, as_generator(generator))

    @abstractmethod
    def _sample(self, x: Tensor, g: torch.Generator) -> Observation:
        """Corrupt a validated ``x`` with the generator ``g``."""

    def _params(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


class _MissingPixels(Corruption):
    """A corruption that removes pixels (sets them to 0) and keeps the rest as is."""

    @abstractmethod
    def _missing(self, n: int, h: int, w: int, g: torch.Generator, device: torch.device) -> Tensor:
        """Bool ``N×1×H×W``, True where the pixel is missing."""

    def _sample(self, x: Tensor, g: torch.Generator) -> Observation:
        n, _, h, w = x.shape
        keep = (~self._missing(n, h, w, g, x.device)).to(x.dtype)
        y = x * keep
        m = expand_map(keep)
        return Observation(y=y, m=m, operator=lambda z: z * keep)


class BoxMask(_MissingPixels):
    """One missing axis-aligned box per image.

    Arguments:
        min_frac, max_frac: range of the box's side length as a fraction of the image's
            height (and, drawn independently, width); ``0 <= min_frac <= max_frac <= 1``.

    Raises:
        ValueError: fractions outside ``[0, 1]`` or ``min_frac > max_frac``.
    """

    name = "box"

    def __init__(self, min_frac: float = 0.25, max_frac: float = 0.5) -> None:
        self.min_frac, self.max_frac = _frac_range(min_frac, max_frac)

    def _missing(self, n: int, h: int, w: int, g: torch.Generator, device: torch.device) -> Tensor:
        return _boxes(n, h, w, self.min_frac, self.max_frac, g, device)


class FreeFormMask(_MissingPixels):
    """Random brush strokes (Yu et al. 2019): each stroke is a random polyline of 4 segments.

    A stroke starts at a uniform point; each segment turns by a uniform angle and has a length
    uniform in ``[0.05, 0.25]·min(H, W)`` (end points are clipped to the image). A pixel is
    missing when its centre lies within ``width / 2`` of a stroke.

    Arguments:
        strokes: number of strokes per image, ``>= 1``.
        width: brush width in pixels, ``> 0``.

    Raises:
        ValueError: ``strokes < 1`` or ``width <= 0``.
    """

    name = "freeform"
    _SEGMENTS: ClassVar[int] = 4

    def __init__(self, strokes: int = 3, width: float = 6.0) -> None:
        self.strokes = _count("strokes", strokes)
        self.width = _positive("width", width)

    def _missing(self, n: int, h: int, w: int, g: torch.Generator, device: torch.device) -> Tensor:
        s, v = self.strokes, self._SEGMENTS
        u = _uniform(g, n, s, 2 + 2 * v)
        size = float(min(h, w))
        pts = [torch.stack([u[..., 0] * h, u[..., 1] * w], dim=-1)]
        for k in range(v):
            angle = 2 * math.pi * u[..., 2 + 2 * k]
            length = (0.05 + 0.2 * u[..., 3 + 2 * k]) * size
            step = torch.stack([length * torch.sin(angle), length * torch.cos(angle)], dim=-1)
            nxt = pts[-1] + step
            nxt = torch.stack([nxt[..., 0].clamp(0, h), nxt[..., 1].clamp(0, w)], dim=-1)
            pts.append(nxt)
        seg = torch.cat([torch.cat([pts[k], pts[k + 1]], dim=-1) for k in range(v)], dim=1)
        return _segments_mask(seg, self.width / 2, h, w, device)


class RandomPixelMask(_MissingPixels):
    """Each pixel (all its channels) is missing independently with probability ``ratio``.

    Arguments:
        ratio: missing probability in ``[0, 1]``.

    Raises:
        ValueError: ``ratio`` outside ``[0, 1]``.
    """

    name = "random"

    def __init__(self, ratio: float = 0.5) -> None:
        self.ratio = _fraction("ratio", ratio)

    def _missing(self, n: int, h: int, w: int, g: torch.Generator, device: torch.device) -> Tensor:
        u = torch.rand((n, 1, h, w), generator=g, dtype=torch.float32, device=g.device)
        return (u < self.ratio).to(device)


class HollowGaps(_MissingPixels):
    """Thin missing structures: rings, scratches or straight lines.

    * ``"ring"`` — a circle of uniform centre and radius uniform in ``[0.1, 0.45]·min(H, W)``;
    * ``"scratch"`` — a quadratic Bézier curve between two uniform points, bent by a uniform
      control point (16 straight pieces);
    * ``"line"`` — a straight line across the whole image through a uniform point, uniform angle.

    A pixel is missing when its centre lies within ``width / 2`` of the structure.

    Arguments:
        kind: ``"ring"``, ``"scratch"`` or ``"line"``.
        width: thickness in pixels, ``> 0``.
        count: structures per image, ``>= 1``.

    Raises:
        ValueError: an unknown ``kind``, ``width <= 0`` or ``count < 1``.
    """

    name = "gaps"
    KINDS: ClassVar[tuple[str, ...]] = ("ring", "scratch", "line")
    _PIECES: ClassVar[int] = 16

    def __init__(self, kind: Literal["ring", "scratch", "line"] = "scratch", width: float = 2.0, count: int = 1) -> None:
        if kind not in self.KINDS:
            raise ConfigError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        self.width = _positive("width", width)
        self.count = _count("count", count)

    def _missing(self, n: int, h: int, w: int, g: torch.Generator, device: torch.device) -> Tensor:
        q = self.count
        half = self.width / 2
        if self.kind == "scratch":
            u = _uniform(g, n, q, 6)
            p0 = torch.stack([u[..., 0] * h, u[..., 1] * w], dim=-1)
            p1 = torch.stack([u[..., 2] * h, u[..., 3] * w], dim=-1)
            pc = torch.stack([u[..., 4] * h, u[..., 5] * w], dim=-1)
            t = torch.linspace(0.0, 1.0, self._PIECES + 1, dtype=torch.float64).view(1, 1, -1, 1)
            curve = (1 - t) ** 2 * p0.unsqueeze(2) + 2 * (1 - t) * t * pc.unsqueeze(2) + t**2 * p1.unsqueeze(2)
            seg = torch.cat([curve[:, :, :-1], curve[:, :, 1:]], dim=-1).reshape(n, -1, 4)
            return _segments_mask(seg, half, h, w, device)
        r, c = _grid(h, w, device)
        out = torch.zeros(n, h, w, dtype=torch.bool, device=device)
        u = _uniform(g, n, q, 3).to(device=device, dtype=torch.float32)
        for k in range(q):
            cr = (u[:, k, 0] * h).view(n, 1, 1)
            cc = (u[:, k, 1] * w).view(n, 1, 1)
            if self.kind == "ring":
                radius = ((0.1 + 0.35 * u[:, k, 2]) * min(h, w)).view(n, 1, 1)
                dist = (torch.sqrt((r - cr) ** 2 + (c - cc) ** 2) - radius).abs()
            else:
                angle = (math.pi * u[:, k, 2]).view(n, 1, 1)
                dist = ((r - cr) * torch.cos(angle) - (c - cc) * torch.sin(angle)).abs()
            out |= dist <= half
        return out.unsqueeze(1)


class BlurRegion(Corruption):
    """Gaussian blur inside one random box per image; pixels outside the box are untouched.

    The whole image is blurred with :func:`gaussian_blur` (so the box's content near its edge
    mixes in outside pixels, as a real local blur does) and only the box is replaced.

    Arguments:
        sigma: blur standard deviation in pixels, ``>= 0``.
        min_frac, max_frac: box side range as fractions of the image size (see :class:`BoxMask`).

    Raises:
        ValueError: a negative ``sigma`` or bad fractions.
    """

    name = "blur"

    def __init__(self, sigma: float = 2.0, min_frac: float = 0.3, max_frac: float = 0.6) -> None:
        self.sigma = _nonnegative("sigma", sigma)
        self.min_frac, self.max_frac = _frac_range(min_frac, max_frac)

    def _sample(self, x: Tensor, g: torch.Generator) -> Observation:
        n, _, h, w = x.shape
        region = _boxes(n, h, w, self.min_frac, self.max_frac, g, x.device)
        sigma = self.sigma

        def operator(z: Tensor) -> Tensor:
            return local_blur(z, region, sigma)

        def variance(v: Tensor) -> Tensor:
            return torch.where(region, _blur_variance(v, sigma), v)

        inside = region.to(x.dtype)
        m = torch.cat([1 - inside, inside, torch.zeros_like(inside)], dim=1)
        return Observation(y=operator(x), m=m, operator=operator, variance=variance)


class GaussianNoise(Corruption):
    """Additive Gaussian noise of standard deviation ``sigma`` in a random box (or everywhere).

    ``y = x + σ·ε·[inside]`` with ``ε ~ N(0, I)``; ``y`` is not clipped (clipping would make the
    noise non-Gaussian). The forward operator is the identity. With the default
    ``min_frac = max_frac = 1`` the box is the whole image.

    Arguments:
        sigma: noise standard deviation in image units (the image range is ``[-1, 1]``), ``>= 0``.
        min_frac, max_frac: box side range as fractions of the image size.

    Raises:
        ValueError: a negative ``sigma`` or bad fractions.
    """

    name = "noise"

    def __init__(self, sigma: float = 0.1, min_frac: float = 1.0, max_frac: float = 1.0) -> None:
        self.sigma = _nonnegative("sigma", sigma)
        self.min_frac, self.max_frac = _frac_range(min_frac, max_frac)

    def _sample(self, x: Tensor, g: torch.Generator) -> Observation:
        n, _, h, w = x.shape
        region = _boxes(n, h, w, self.min_frac, self.max_frac, g, x.device).to(x.dtype)
        eps = torch.randn(x.shape, generator=g, dtype=x.dtype, device=g.device).to(x.device)
        # sigma as the image's dtype holds it, in y and in the map alike: a sigma that underflows
        # there (2.4e-63 in float32) is 0 in both (y = x, observed as is), never a zero map entry
        # next to a perturbed y
        sigma = torch.tensor(self.sigma, dtype=x.dtype, device=x.device)
        y = x + sigma * region * eps
        noisy = region if bool(sigma > 0) else torch.zeros_like(region)
        m = torch.cat([1 - noisy, torch.zeros_like(region), sigma * noisy], dim=1)
        return Observation(y=y, m=m, operator=lambda z: z)


class Compose(Corruption):
    """Apply corruptions in order, each to the previous one's output.

    Maps combine as: channel 0 = product (observed as is only if no step touched the pixel),
    channel 1 = max, channel 2 = the std of the accumulated noise: $\\sqrt{\\sum_k \\sigma_k^2}$ where
    the steps are pointwise, with an earlier step's noise carried through a later blur
    (:attr:`Observation.variance`). A pixel made missing by any step
    stays missing: it is 0 in ``y`` and ``(0, 0, 0)`` in ``m``. The forward operator is
    ``A = M ∘ A_k ∘ … ∘ A_1`` with ``M`` zeroing those pixels.

    Arguments:
        corruptions: a non-empty sequence of :class:`Corruption`.

    Raises:
        ValueError: an empty sequence or an item that is not a :class:`Corruption`.
    """

    name = "compose"

    def __init__(self, corruptions: Sequence[Corruption]) -> None:
        items = tuple(corruptions)
        if not items:
            raise ConfigError("Compose needs at least one corruption, got an empty sequence")
        for c in items:
            if not isinstance(c, Corruption):
                raise ConfigError(f"Compose items must be Corruption objects, got {c!r} of type {type(c).__name__}")
        self.corruptions = items

    def _sample(self, x: Tensor, g: torch.Generator) -> Observation:
        first, *rest = self.corruptions
        obs = first._sample(x, g)
        y, ops = obs.y, [obs.operator]
        missing = (obs.m == 0).all(dim=1, keepdim=True)
        m0, m1, sig = obs.m[:, 0:1], obs.m[:, 1:2], obs.m[:, 2:3]
        for c in rest:
            obs = c._sample(y, g)
            y = obs.y
            ops.append(obs.operator)
            missing = missing | (obs.m == 0).all(dim=1, keepdim=True)
            m0 = m0 * obs.m[:, 0:1]
            m1 = torch.maximum(m1, obs.m[:, 1:2])
            if obs.variance is not None:  # the earlier noise, carried through this step's operator
                sig = obs.variance(sig * sig).clamp_min(0).sqrt()
                m0 = m0 * (sig == 0).to(m0.dtype)  # a pixel that received noise is not observed as is
            sig = torch.hypot(sig, obs.m[:, 2:3])  # sqrt(a^2 + b^2) without underflow of tiny sigmas
        keep = (~missing).to(x.dtype)
        m = torch.cat([m0 * keep, m1 * keep, sig * keep], dim=1)

        def operator(z: Tensor) -> Tensor:
            for op in ops:
                z = op(z)
            return z * keep

        return Observation(y=y * keep, m=m, operator=operator)


# --------------------------------------------------------------------------------------------
# registry and training helpers

CORRUPTIONS: dict[str, Callable[..., Corruption]] = {
    "box": BoxMask,
    "freeform": FreeFormMask,
    "random": RandomPixelMask,
    "gaps": HollowGaps,
    "blur": BlurRegion,
    "noise": GaussianNoise,
}
"""Name → corruption factory (the class)."""


def make_corruption(name: str, **params: object) -> Corruption:
    """Build a registered corruption by name.

    Arguments:
        name: a key of :data:`CORRUPTIONS`.
        **params: constructor arguments of that class.

    Returns:
        The corruption object.

    Raises:
        ValueError: an unknown name (the message lists the choices) or invalid parameters.
    """
    if name not in CORRUPTIONS:
        raise ArgumentError(f"unknown corruption {name!r}; choose one of {sorted(CORRUPTIONS)}")
    try:
        return CORRUPTIONS[name](**params)
    except TypeError as exc:
        raise ArgumentError(f"invalid parameters for corruption {name!r}: {exc}") from None


def random_corruption(generator: GeneratorLike = None, *, size: int = 32,
                      kinds: Optional[Sequence[str]] = None) -> Corruption:
    """Draw a corruption type uniformly from :data:`CORRUPTIONS`, with random parameters.

    Pixel-sized parameters (brush and gap widths, blur σ) scale with ``size / 32``, so pass the
    image side used in training. Ranges: box sides 10–70 %; 1–4 strokes of width 1–4 px;
    missing ratio 0.1–0.9; 1–3 gaps of any kind, width 1–3 px; blur σ 0.5–2.5 px in a 20–90 %
    box; noise σ 0.02–0.3 everywhere or in a 20–90 % box.

    Arguments:
        generator: a ``torch.Generator``, an int seed, or ``None``.
        size: the typical image side in pixels, ``>= 1``.
        kinds: draw only among these names of :data:`CORRUPTIONS` (``None``: all of them).

    Returns:
        A :class:`Corruption`.

    Raises:
        ValueError: a bad ``generator`` or ``size``.
    """
    g = as_generator(generator)
    s = _count("size", size) / 32.0
    names = list(CORRUPTIONS) if kinds is None else _kinds(kinds)
    u = _uniform(g, 6).tolist()
    name = names[min(int(u[0] * len(names)), len(names) - 1)]
    lo = 0.1 + 0.3 * u[1]
    hi = lo + 0.3 * u[2]
    if name == "box":
        return BoxMask(lo, hi)
    if name == "freeform":
        return FreeFormMask(strokes=1 + min(int(u[1] * 4), 3), width=(1.0 + 3.0 * u[2]) * s)
    if name == "random":
        return RandomPixelMask(0.1 + 0.8 * u[1])
    if name == "gaps":
        kind = HollowGaps.KINDS[min(int(u[1] * 3), 2)]
        return HollowGaps(kind, width=(1.0 + 2.0 * u[2]) * s, count=1 + min(int(u[3] * 3), 2))
    box_lo = 0.2 + 0.3 * u[3]
    box_hi = box_lo + 0.4 * u[4]
    if name == "blur":
        return BlurRegion((0.5 + 2.0 * u[5]) * s, box_lo, box_hi)
    if u[1] < 0.5:
        return GaussianNoise(0.02 + 0.28 * u[5])
    return GaussianNoise(0.02 + 0.28 * u[5], box_lo, box_hi)


def _kinds(kinds: Sequence[str]) -> list[str]:
    bad = [k for k in kinds if k not in CORRUPTIONS]
    if isinstance(kinds, str) or not list(kinds) or bad:
        raise ConfigError(f"corruption kinds must be a non-empty list of {list(CORRUPTIONS)}, got {kinds!r}")
    return list(kinds)


def corrupt_batch(
    x: Tensor, generator: GeneratorLike = None, p_uncond: float = 0.1, kinds: Optional[Sequence[str]] = None
) -> tuple[Tensor, Tensor]:
    """Corrupt every example with its own random corruption (training conditions).

    For each example, a flag ``u < p_uncond`` is drawn first; then :func:`random_corruption`
    (with ``size = min(H, W)``) draws a corruption that is applied to that example. Flagged
    examples get the unconditional condition ``y = 0``, ``m = 0`` (nothing observed).

    Arguments:
        x: images ``N×C×H×W``, floating dtype.
        generator: a ``torch.Generator``, an int seed, or ``None``.
        p_uncond: probability of the unconditional condition, in ``[0, 1]``.
        kinds: the corruption types to draw from (``None``: all of :data:`CORRUPTIONS`).

    Returns:
        ``(y, m)`` with shapes ``N×C×H×W`` and ``N×3×H×W``, dtype of ``x``.

    Raises:
        ValueError: a bad ``x``, ``generator`` or ``p_uncond``.
    """
    _check_image(x)
    p_uncond = _fraction("p_uncond", p_uncond)
    g = as_generator(generator)
    size = max(1, min(x.shape[2], x.shape[3]))
    ys, ms = [], []
    for i in range(x.shape[0]):
        uncond = bool(_uniform(g, 1)[0] < p_uncond)
        y, m = random_corruption(g, size=size, kinds=kinds)(x[i : i + 1], g)
        if uncond:
            y, m = torch.zeros_like(y), torch.zeros_like(m)
        ys.append(y)
        ms.append(m)
    if not ys:
        return x.clone(), x.new_zeros(0, MAP_CHANNELS, *x.shape[2:])
    return torch.cat(ys), torch.cat(ms)
