r"""Localized editing through the bit-exact reversible flow (Theorem 7, ``proofs/07``).

The algorithm is :func:`injcert.tasks.guided.guided_decode` with $x_{\text{ref}} = x_0$, the
region = the mask and the target of the edit:

1. Encode $x_0$ with reversible Heun on the integer lattice from $\varsigma = 0$ to
   $\varsigma_e = \varsigma(t_e)$, $t_e = \text{strength}\cdot t_{\max}$, **storing** the two-state
   trajectory $(Y_n, \hat Y_n)$.
2. Inside the mask, replace the hidden state at $\varsigma_e$ by the target's own hidden state
   (``start="encoded"``, the default: the target encoded by the same flow and condition from 0 to
   $\varsigma_e$), or by the noised target $\bar x = x_{\text{target}} + \varsigma_e\,\varepsilon$
   (``start="noised"``, SDEdit's start; seeded $\varepsilon$; the lattice holds $x = \alpha_e\bar x$), or
   the same with one $\varepsilon$ per pixel shared by every channel (``start="luma"``: grain without
   the colour speckle of independent channels).
3. Decode back to $\varsigma = 0$ with the exact inverse steps; after every sub-update, reset the
   state **outside** the mask to the stored trajectory (integer copy). The network sees the whole
   image at every step, so the inside stays coherent with the outside across the border.

At $\varsigma = 0$ the state outside the mask is $Y_0 = Q(x_0)$ and the stored remainder restores
$x_0$ there bit for bit: every pixel outside the mask is identical to the input.

The named ``remove`` target is what the model believes is there, $R(c)$ of the outside (biharmonic
without a restorer), plus a Gaussian texture with the fine detail of the region's surroundings
(:func:`ring_texture`): $R(c)$ is a posterior *mean*, smooth where a natural region has grain, and
the flow decodes the encoded target back to it, so without the texture the region comes out flat.

By default the network is conditioned on the unedited context — $y = x_0$ outside the mask, map
"observed" outside and "missing" inside — the inpainting condition it is trained with.

Why the encoded start is the default: a noise-free target placed at $\varsigma_e$ is read by the
flow as a *noisy* state of level $\varsigma_e$, and the decode "denoises" it into a flat,
washed-out region that loses the input's texture. The target's own hidden state decodes back to the
target, changed only where the stored outside differs from the target's outside, that is across the
border, so the texture is kept (compared on the demo's edits by ``make demo``; the figures are in
``docs/notes/history.md``). A target equal to $x_0$ returns $x_0$ bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt, gaussian_filter
from torch import Tensor

from ..data.corruptions import expand_map
from ..errors import ArgumentError
from ..solvers import DEFAULT_FRAC_BITS, GRIDS
from ..data.classical import classical_estimate
from .guided import guided_decode

__all__ = ["EDIT_OPERATIONS", "EDIT_STARTS", "EditResult", "edit", "edit_full", "make_target", "ring_texture"]

EDIT_OPERATIONS = ("remove", "recolor", "move")

#: How the inside starts at $\varsigma_e$ (:func:`edit_full`'s ``start``).
EDIT_STARTS = ("encoded", "noised", "luma")

#: Width in pixels of the ramp over which a recolor target fades in from the mask's border, on
#: images up to 128 px on the short side; it grows in proportion above (16 px at 512²): at 512² a
#: 4-px ramp left a seam 1.33× the input's (the README's edit command), the ramp scaled with the
#: image keeps it as it is at 128².
RECOLOR_FEATHER = 4.0

#: :func:`ring_texture`'s defaults for a remove: the width in pixels of the ring outside the region
#: whose fine detail is sampled, the standard deviation in pixels of the Gaussian blur whose
#: residual is that detail (what the smooth fill $R(c)$ lacks), and how far the amplitude moves from
#: the ring's std towards its median deviation (the amplitude also follows the nearest part of the
#: ring, ``local``, which brought the grain ratio closer to the input's; the luminance's texture, not
#: each channel's, keeps the grain ratio and drops the colour speckle). Chosen on the *training*
#: images by ``python benchmarks/edit_texture.py --images coffee camera rocket grass --robust 0 0.5 1
#: --local yes no --colour yes no``; see ``docs/model.md``.
TEXTURE_RING = 8
TEXTURE_SCALE = 2.0
TEXTURE_ROBUST = 0.5


@dataclass
class EditResult:
    """An edit and its audit numbers.

    Attributes:
        image: the edited image.
        target: the target image used inside the mask.
        outside_max_abs: largest change outside the mask (0 exactly by Theorem 7).
        nfe: network evaluations (encode + decode).
    """

    image: Tensor
    target: Tensor
    outside_max_abs: float
    nfe: int


def make_target(x0: Tensor, mask: Tensor, operation: str, *, offset: Sequence[int] = (0, 16),
                color: Sequence[float] = (0.6, -0.4, -0.4), model: Any = None, texture: bool = True,
                seed: int = 0) -> Tensor:
    """Build a target for a named edit.

    Arguments:
        x0: the image, N×C×H×W.
        mask: N×1×H×W, 1 inside the region to edit.
        operation: ``"remove"`` (target = the region filled from its outside by
            :func:`skimage.restoration.inpaint_biharmonic`, a smooth continuation of the context that
            the flow then renders; a flat fill with the border's mean colour left a visible box; with a
            ``model`` that has a restorer, what the model believes is there: $R(c)$ of the outside,
            :meth:`~injcert.model.unet.CondUNet.anchor`; with ``texture``, plus a Gaussian texture
            with the fine detail of the region's surroundings, :func:`ring_texture` seeded by ``seed``:
            a fill is a posterior *mean*, smooth where the surroundings have grain), ``"recolor"`` (the region
            tinted towards ``color``, the tint fading in over :data:`RECOLOR_FEATHER` pixels (scaled
            with the image above 128²) from the mask's border: a tint with a hard edge is a seam the edit would reproduce), ``"move"`` (the
            image shifted by ``offset`` = (dy, dx): the mask marks the destination).

    Raises:
        ArgumentError: an unknown operation (the message lists the choices).
    """
    if operation == "remove":
        has_restorer = model is not None and getattr(model, "restorer", None) is not None
        filled = inpaint_region(x0, mask, model.anchor if has_restorer else None)
        if not texture:
            return filled
        inside = (mask > 0.5).expand_as(x0)
        return torch.where(inside, filled + ring_texture(x0, mask, seed=seed).to(filled), filled)
    if operation == "recolor":
        c = torch.tensor(list(color)[: x0.shape[1]] + [0.0] * max(0, x0.shape[1] - len(color)),
                         dtype=x0.dtype, device=x0.device).view(1, -1, 1, 1)
        lum = x0.mean(dim=1, keepdim=True)
        width = RECOLOR_FEATHER * max(1.0, min(x0.shape[-2:]) / 128.0)
        w = feather(mask, width).to(device=x0.device, dtype=x0.dtype)
        return (0.5 * lum + 0.5 * c).clamp(-1, 1).expand_as(x0) * w + x0 * (1 - w)
    if operation == "move":
        dy, dx = int(offset[0]), int(offset[1])
        return torch.roll(x0, shifts=(dy, dx), dims=(2, 3))
    raise ArgumentError(f"unknown edit operation {operation!r}; choices: {list(EDIT_OPERATIONS)}")


def feather(mask: Tensor, width: float) -> Tensor:
    """Weights in [0, 1]: 0 outside ``mask`` (N×1×H×W, 1 inside), rising linearly with the
    Euclidean distance to the nearest outside pixel, 1 from ``width`` pixels in (float64, CPU)."""
    inside = (mask > 0.5).detach().cpu().numpy()
    d = np.stack([distance_transform_edt(m) for m in inside.reshape(-1, *inside.shape[-2:])])
    w = np.clip(d / max(float(width), 1e-12), 0.0, 1.0).reshape(inside.shape)
    return torch.from_numpy(w)


def ring_texture(x0: Tensor, mask: Tensor, *, ring: int = TEXTURE_RING, scale: float = TEXTURE_SCALE,
                 seed: int = 0, robust: float = TEXTURE_ROBUST, local: bool = True,
                 colour: bool = False) -> Tensor:
    r"""A Gaussian texture with the fine detail of the surroundings of ``mask``.

    The fine detail is the residual $h = x_0 - G_s * x_0$ of a Gaussian blur of std ``scale`` px,
    the blur normalized over the outside of the mask (the content being replaced never leaks in).
    On the ring $\mathcal R$ of pixels outside the mask within ``ring`` px (Chebyshev) of it, the
    spot $p = (h - \bar h)\,\mathbb 1_{\mathcal R} / \sqrt{|\mathcal R|}$ is convolved
    (circularly) with one white noise $W$ per pixel shared by the channels: $t = p * W$ is the
    asymptotic discrete spot noise of Galerne, Gousseau and Morel (2011), the Gaussian field whose
    covariance is the ring's empirical autocovariance, so each channel's variance, its spectrum and
    the channels' correlation are the ring's. ``robust`` $= \beta \in [0, 1]$ lowers each channel's
    amplitude from the ring's std $s$ to $s^{1-\beta} d^{\beta}$, $d$ its median absolute deviation
    × 1.4826 (the std of a Gaussian; never raised): a ring crossed by a few strong edges (a cup's
    rim, a limb) has a large variance that is not grain, and its spot noise is a tangle of edge
    fragments ($\beta = 0$), while $d$ alone leaves a faint haze where the surroundings are edges
    ($\beta = 1$); on a textured ring (grass, gravel) $s \approx d$ and $\beta$ does not matter.
    With ``local`` the amplitude also follows the nearest part of the ring: the field is multiplied
    by $\sqrt{E(p)/\bar E}$, $E$ the ring's detail energy averaged with Gaussian weights (std
    ``ring`` px) over the ring pixels near $p$, $\bar E$ its mean over the ring, so the side of a hole
    that borders sky stays calm and the side that borders fur is grainy. By default the texture is
    the luminance's (the channels' mean), the same on every channel: natural images carry their fine
    detail in the luminance, and a ring that crosses colourful edges (a red suit, a blue flag) makes
    the colour spot noise a speckle of saturated dots; ``colour=True`` draws every channel's detail.
    Returns N×C×H×W float64 on ``x0``'s device (0 for an image whose ring is empty); the caller keeps
    it inside the mask. The content inside the mask never enters.
    """
    x = x0.detach().to(torch.float64).cpu()
    x = x if colour else x.mean(dim=1, keepdim=True)
    inside = (mask > 0.5).detach().cpu().to(torch.float64).expand(x.shape[0], 1, *x.shape[-2:])
    num, den = _masked_blur(x, 1 - inside, scale, "reflect")
    h = x - torch.from_numpy(num / np.maximum(den, 1e-12))
    grown = torch.nn.functional.max_pool2d(inside, 2 * int(ring) + 1, 1, int(ring))
    rng = grown * (1 - inside)
    count = rng.sum(dim=(1, 2, 3), keepdim=True)
    mean = (h * rng).sum(dim=(2, 3), keepdim=True) / count.clamp_min(1)
    spot = (h - mean) * rng / count.clamp_min(1).sqrt()
    if robust > 0:  # the amplitude towards the ring's median deviation: its strong edges are not grain
        dev = ((h - mean).abs() * rng).flatten(2)
        sel = rng.flatten(2)[:, 0] > 0.5
        mad = torch.stack([dev[i][:, sel[i]].median(dim=-1).values if bool(sel[i].any()) else dev[i, :, 0]
                           for i in range(dev.shape[0])]).view(*dev.shape[:2], 1, 1) * 1.4826
        std = (spot.pow(2).sum(dim=(2, 3), keepdim=True)).sqrt()
        spot = spot * (mad / std.clamp_min(1e-12)).clamp(max=1.0).pow(float(robust))
    gen = torch.Generator().manual_seed(int(seed))
    w = torch.randn((x.shape[0], 1, *x.shape[-2:]), generator=gen, dtype=torch.float64)
    t = torch.fft.irfft2(torch.fft.rfft2(spot) * torch.fft.rfft2(w), s=x.shape[-2:])
    if local:
        t = t * _local_gain(((h - mean).pow(2) * rng).sum(dim=1, keepdim=True), rng, count, float(ring))
    return t.expand(x0.shape).contiguous().to(x0.device)


def _local_gain(energy: Tensor, rng: Tensor, count: Tensor, width: float) -> Tensor:
    r"""$\sqrt{E(p)/\bar E}$: the ring's detail energy (summed over the channels) near each pixel,
    carried into the region by a normalized Gaussian average (std ``width``) of the ring's pixels,
    over its mean on the ring (N×1×H×W; 1 where no ring pixel is near)."""
    num, den = _masked_blur(energy, rng, width, "constant")  # energy is 0 off the ring: energy·rng = energy
    local = torch.from_numpy(num / np.maximum(den, 1e-300))
    mean = energy.sum(dim=(2, 3), keepdim=True) / count.clamp_min(1)
    gain = (local / mean.clamp_min(1e-300)).sqrt()
    return torch.where(torch.from_numpy(den > 1e-12) & (mean > 0), gain, torch.ones_like(gain))


def _masked_blur(v: Tensor, w: Tensor, sigma: float, mode: str) -> tuple:
    """Per image and channel, scipy's Gaussian blur (std ``sigma``, boundary ``mode``) of ``v·w`` and
    of the weight ``w`` (N×1×H×W): the numerator and denominator of a normalized convolution."""
    num = np.stack([[gaussian_filter(c, sigma, mode=mode) for c in vi] for vi in (v * w).numpy()])
    den = np.stack([[gaussian_filter(wi[0], sigma, mode=mode)] for wi in w.numpy()])
    return num, den


def inpaint_region(x0: Tensor, mask: Tensor, fill: Optional[Callable[[Tensor, Tensor], Tensor]] = None) -> Tensor:
    """``x0`` with the region ``mask`` (N×1×H×W, 1 inside) filled from its outside by ``fill(y, m)``
    (default: biharmonic inpainting, :func:`~injcert.tasks.classical.classical_estimate`); the outside is
    ``x0`` exactly."""
    inside = (mask > 0.5).to(x0.dtype)
    y, m = x0 * (1 - inside), expand_map(1 - inside)
    filled = classical_estimate(y, m, "inpaint_biharmonic")[1] if fill is None else fill(y, m)
    return torch.where(inside.bool().expand_as(x0), filled.to(x0), x0)


def _check_inputs(x0: Tensor, mask: Tensor, target: Tensor) -> Tensor:
    if not isinstance(x0, Tensor) or x0.ndim != 4 or not x0.is_floating_point():
        raise ArgumentError(f"x0 must be a float N×C×H×W tensor, got {type(x0).__name__} {tuple(getattr(x0, 'shape', ()))}")
    if not isinstance(mask, Tensor) or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != x0.shape[0] \
            or mask.shape[2:] != x0.shape[2:]:
        raise ArgumentError(f"mask must be N×1×H×W matching x0 {tuple(x0.shape)}, got {tuple(getattr(mask, 'shape', ()))}")
    if not isinstance(target, Tensor) or target.shape != x0.shape:
        raise ArgumentError(f"target must have the shape of x0 {tuple(x0.shape)}, got {tuple(getattr(target, 'shape', ()))}")
    return (mask > 0.5).to(x0.dtype)


@torch.no_grad()
def _check_method(method: str, grid: str) -> None:
    """Only the reversible lattice scheme keeps the outside identical; a known grid kind."""
    if method != "reversible":
        raise ArgumentError(f"edit needs method='reversible' (the exact lattice scheme keeps the outside of the "
                            f"mask identical; Theorem 7), got {method!r}")
    if grid not in GRIDS:
        raise ArgumentError(f"unknown grid kind {grid!r}; choices: {list(GRIDS)}")


def _check_strength_steps(strength: float, steps: int) -> None:
    """``strength`` in (0, 1]; ``steps`` an int >= 1."""
    if not (0.0 < float(strength) <= 1.0):
        raise ArgumentError(f"strength must lie in (0, 1], got {strength!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ArgumentError(f"steps must be an int >= 1, got {steps!r}")


def _start_noise(x0: Tensor, start: str, noise_scale: float, seed: int) -> Optional[Tensor]:
    """The noise added to the inside's start (checked): ``None`` for the encoded start, else
    ``noise_scale`` times a float64 normal draw seeded by ``seed`` (``"luma"``: one draw per pixel,
    the same on every channel)."""
    if isinstance(noise_scale, bool) or not isinstance(noise_scale, (int, float)) or not (0.0 <= float(noise_scale) <= 1.0):
        raise ArgumentError(f"noise_scale must lie in [0, 1], got {noise_scale!r}")
    if start not in EDIT_STARTS:
        raise ArgumentError(f"unknown start {start!r}; choices: {list(EDIT_STARTS)}")
    if start == "encoded" and float(noise_scale) != 0.0:
        raise ArgumentError(f"noise_scale={noise_scale!r} needs start='noised' or 'luma' (the encoded start adds "
                            "no noise)")
    noise = None  # the encoded start adds none
    if start in ("noised", "luma"):
        shape = x0.shape if start == "noised" else (x0.shape[0], 1, *x0.shape[2:])
        eps = torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
        noise = eps.expand(x0.shape).contiguous() * float(noise_scale)
    return noise


def edit_full(model: Any, x0: Tensor, mask: Tensor, target: Union[Tensor, str], strength: float = 0.5,
              steps: int = 50, *, seed: int = 0, method: str = "reversible", grid: str = "geometric",
              context: bool = True, frac_bits: int = DEFAULT_FRAC_BITS, noise_scale: float = 0.0,
              start: str = "encoded", texture: bool = True, progress: bool = False) -> EditResult:
    """Edit ``x0`` inside ``mask`` towards ``target``; see the module docstring for the algorithm.

    Arguments:
        model: the conditional $\\varepsilon$-network.
        x0: the image, N×C×H×W in $[-1, 1]$.
        mask: N×1×H×W, 1 inside the region to edit.
        target: an image of the shape of ``x0``, or a named operation from :data:`EDIT_OPERATIONS`.
        strength: in $(0, 1]$; the edit starts from $t_e = $ ``strength``$\\cdot t_{\\max}$.
        steps: integration steps from $t_e$ to 0.
        seed: seed of the noise added to the target.
        method: the integrator; only ``"reversible"`` (the bit-exact lattice scheme) can keep every
            pixel outside the mask identical (Theorem 7), so it is the only one accepted.
        grid: the kind of $\\varsigma$ grid from $t_e$ to 0 (``"geometric"`` or ``"uniform"``).
        context: condition the network on the unedited outside (default) or not at all.
        frac_bits: lattice resolution.
        start: ``"encoded"`` (default): the inside starts from the target's hidden state at
            $\\varsigma_e$; ``"noised"``: from the noised target (``noise_scale``); ``"luma"``: the same
            with the noise shared by every channel. See the module
            docstring for the measurements behind the default.
        texture: for ``target="remove"``, add the surroundings' texture to the fill
            (:func:`ring_texture`, seeded by ``seed``; :func:`make_target`).
        noise_scale: with ``start="noised"`` or ``"luma"``, the inside starts from target $+$
            ``noise_scale`` $\\cdot\\varsigma_e\\varepsilon$; 1 is the SDEdit start. 0 (default): the
            shipped model does not remove fresh noise, so any start noise stays as coloured grain
            (:func:`~injcert.metrics.colour_grain_ratio`). Chosen on a training image by ``python
            benchmarks/edit_start_noise_sweep.py --image coffee --size 128``; see
            ``docs/notes/history.md``.

    Returns:
        An :class:`EditResult`.

    Raises:
        ArgumentError: bad shapes, strength outside (0, 1], steps < 1, an unknown operation, a method
            other than ``"reversible"``, an unknown grid kind, an unknown ``start``, a
            ``noise_scale`` other than 0 with ``start="encoded"``.
    """
    _check_method(method, grid)
    if isinstance(target, str):
        target = make_target(x0, (mask > 0.5).to(x0.dtype), target, model=model, seed=seed, texture=texture)
    m = _check_inputs(x0, mask, target)
    _check_strength_steps(strength, steps)
    t_e = float(strength) * float(model.schedule.t_max)
    cond = None
    if context:
        outside = 1 - m
        cond = (x0 * outside, expand_map(outside))
    noise = _start_noise(x0, start, noise_scale, seed)
    res = guided_decode(model, x0, m, target, t_e, steps, cond, frac_bits=frac_bits, progress=progress,
                        noise=noise, grid=grid, encode_target=start == "encoded")
    image = res.image
    inside = res.region
    outside_err = float((image - x0).abs().masked_fill(inside, 0).max()) if image.numel() else 0.0
    return EditResult(image=image, target=target, outside_max_abs=outside_err, nfe=res.nfe)


def edit(model: Any, x0: Tensor, mask: Tensor, target: Union[Tensor, str], strength: float = 0.5,
         steps: int = 50, *, seed: int = 0, method: str = "reversible", grid: str = "geometric",
         progress: bool = False, **options: Any) -> Tensor:
    """Edit ``x0`` inside ``mask`` towards ``target`` (an image or a named operation); every pixel
    outside the mask is returned identical to ``x0``. ``steps``, ``seed``, ``method``, ``grid`` and
    ``progress`` mean what they mean for :func:`~injcert.encode` and :func:`~injcert.reconstruct`;
    ``options`` are the edit's own (``context``, ``start``, ``noise_scale``, ``texture``, ``frac_bits``). See
    :func:`edit_full`."""
    return edit_full(model, x0, mask, target, strength, steps, seed=seed, method=method, grid=grid,
                     progress=progress, **options).image
