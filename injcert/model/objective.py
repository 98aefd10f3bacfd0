r"""The training objective: conditional denoising score matching with ε-prediction.

$\mathcal L(\theta) = \mathbb E_{t, x_0, \varepsilon, c}\,
\|\varepsilon - \varepsilon_\theta(\alpha_t x_0 + \sigma_t \varepsilon, t, c)\|^2$
(Ho, Jain, Abbeel 2020, eq. 14, with per-example conditions $c = (y, m)$ drawn by
:func:`~injcert.data.corruptions.corrupt_batch`, a fraction ``p_uncond`` of them unconditional as
in classifier-free guidance, Ho & Salimans 2022).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..data.corruptions import corrupt_batch, expand_map
from ..errors import ArgumentError
from .restorer import seen_pixels

__all__ = ["denoising_loss", "draw_training_batch", "loss_on_batch", "low_noise_range", "refine_range",
           "REFINE_VARSIGMA", "T_MIN"]

#: Smallest training time (avoids $\sigma_t \to 0$, where ε is unidentifiable).
T_MIN: float = 1e-3

#: Default $\varsigma$ range of the refinement examples of :func:`draw_training_batch`: around the start
#: levels of reconstruction from a classical estimate (0.02 near observed pixels, 0.1 for holes).
REFINE_VARSIGMA: tuple[float, float] = (0.01, 0.2)


def denoising_loss(
    model: nn.Module,
    x0: Tensor,
    generator: torch.Generator,
    p_uncond: float = 0.1,
    t_min: float = T_MIN,
) -> Tensor:
    r"""Mean squared ε-prediction error on one batch (a 0-d tensor).

    Draws, all from ``generator`` (so the loss is a deterministic function of its state):
    $t \sim U[t_{\min}, t_{\max}]$ per example, $\varepsilon \sim N(0, I)$, and a corruption per
    example; then $x_t = \alpha_t x_0 + \sigma_t \varepsilon$ and the loss is
    $\frac{1}{N C H W}\sum \|\varepsilon - \varepsilon_\theta(x_t, t, y, m)\|^2$.

    Arguments:
        model: ``model(x, t, y, m) -> eps`` with a ``schedule`` attribute (a DDP wrapper is
            unwrapped to find it).
        x0: clean images ``N×C×H×W`` in ``[-1, 1]``.
        generator: the randomness source (may live on another device than ``x0``).
        p_uncond: probability of an unconditional example (``y = 0``, ``m = 0``).
        t_min: smallest time drawn.

    Returns:
        The loss, differentiable in the model's parameters.

    Raises:
        ValueError: ``t_min`` outside ``[0, t_max)``.
    """
    schedule = _schedule_of(model)
    return loss_on_batch(model, draw_training_batch(x0, generator, schedule, p_uncond=p_uncond, t_min=t_min))


def _unwrapped(model: nn.Module) -> nn.Module:
    """The network behind a DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrapper."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrapped(inner)
    return model


def _schedule_of(model: nn.Module):
    schedule = getattr(model, "schedule", None) or getattr(_unwrapped(model), "schedule", None)
    if schedule is None:
        raise ArgumentError(f"{type(model).__name__} has no 'schedule' attribute")
    return schedule


def draw_training_batch(x0: Tensor, generator: torch.Generator, schedule, p_uncond: float = 0.1, t_min: float = T_MIN,
                        low_noise_fraction: float = 0.0, low_noise_varsigma: float = 0.2,
                        refine_fraction: float = 0.0, refine_varsigma: tuple[float, float] = REFINE_VARSIGMA,
                        corruptions: Optional[Sequence[str]] = None, refine_start: str = "biharmonic",
                        ) -> dict[str, Tensor]:
    r"""Every random draw of one training batch, in a fixed order: $t$, $\varepsilon$, the corruption.

    With ``low_noise_fraction`` $= f > 0$, each example's $t$ is then redrawn with probability $f$ so that
    $\log\varsigma_t$ is uniform on $[\log\varsigma(t_{\min}), \log\varsigma_{\text{low}}]$ (two more draws,
    after the corruption: the batch at $f = 0$ is unchanged). Uniform $t$ puts about 2 % of the examples at
    $\varsigma \le 0.03$, where reconstruction and editing run their last steps; the mixture samples the
    same objective with more weight there.

    With ``refine_fraction`` $= r > 0$, each example whose condition is a mask (some pixels observed,
    some missing, none blurred or noisy) is, with probability $r$, a *refinement* example: its
    missing pixels start from the classical estimate ``inpaint_biharmonic`` of its observation instead
    of the truth, $x_t = \alpha_t(x_0 + \delta) + \sigma_t\varepsilon$ with $\delta$ = estimate $-\,x_0$
    at the missing pixels (0 elsewhere), at a $\varsigma$ log-uniform on ``refine_varsigma``, and the
    target stays $x_0$ (the ε target is $\varepsilon + \alpha_t\delta/\sigma_t$). Reconstruction starts the
    flow from exactly such a state (the estimate at $\varsigma_e$, :func:`~injcert.reconstruct`), which
    plain training never shows the network: there the missing pixels of $x_t$ are the truth plus
    noise. Two more draws per example, after the low-noise ones (the batch at $r = 0$ is unchanged);
    ``delta`` is returned (zeros when $r = 0$). With ``refine_start="restorer"`` the start is the model's
    own restorer $R(c)$, which only the model can compute: the batch then carries ``refine`` (which
    examples) and :func:`loss_on_batch` makes their ``delta``.

    The draws are those :func:`denoising_loss` makes (it is ``loss_on_batch(model,
    draw_training_batch(...))``), so a batch can be drawn ahead of time — in a ``DataLoader``
    worker, on the CPU — and the loss computed later on any device, with the same result.

    Returns:
        ``{"x0", "t", "eps", "y", "m", "delta"}``: ``t`` is float64 of shape ``(N,)``, the rest follow ``x0``
        (``eps`` on ``x0``'s device and dtype, ``(y, m)`` from
        :func:`~injcert.data.corruptions.corrupt_batch`).

    Raises:
        ValueError: ``t_min`` outside ``[0, t_max)``.
    """
    t_max = float(schedule.t_max)
    if not 0.0 <= t_min < t_max:
        raise ArgumentError(f"t_min must lie in [0, t_max={t_max}), got {t_min!r}")
    n = x0.shape[0]
    gdev = generator.device
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=gdev)
    t = t_min + (t_max - t_min) * u
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float32, device=gdev).to(x0.device, x0.dtype)
    y, m = corrupt_batch(x0, generator, p_uncond=p_uncond, kinds=corruptions)
    lo = low_noise_range(schedule, t_min, low_noise_fraction, low_noise_varsigma)
    if low_noise_fraction > 0:
        t = _low_noise_t(t, generator, schedule, t_min, t_max, lo, low_noise_fraction, low_noise_varsigma)
    delta = torch.zeros_like(x0)
    if refine_fraction > 0:
        return _refine_batch(x0, t, eps, y, m, delta, generator, schedule, t_min, t_max, refine_fraction,
                             refine_varsigma, refine_start)
    return {"x0": x0, "t": t.to(x0.device), "eps": eps, "y": y, "m": m, "delta": delta}


def _low_noise_t(t: Tensor, generator: torch.Generator, schedule, t_min: float, t_max: float, lo: float,
                 low_noise_fraction: float, low_noise_varsigma: float) -> Tensor:
    """``t`` with each example redrawn, with probability ``low_noise_fraction``, log-uniform in varsigma
    on ``[lo, low_noise_varsigma]`` (two draws of N)."""
    n, gdev = t.shape[0], generator.device
    pick = torch.rand(n, generator=generator, dtype=torch.float64, device=gdev) < low_noise_fraction
    v = torch.rand(n, generator=generator, dtype=torch.float64, device=gdev)
    vs = torch.exp(math.log(lo) + (math.log(low_noise_varsigma) - math.log(lo)) * v)
    return torch.where(pick, schedule.t_of_varsigma(vs).clamp(t_min, t_max).to(torch.float64), t)


def _refine_batch(x0: Tensor, t: Tensor, eps: Tensor, y: Tensor, m: Tensor, delta: Tensor,
                  generator: torch.Generator, schedule, t_min: float, t_max: float, refine_fraction: float,
                  refine_varsigma: tuple[float, float], refine_start: str) -> dict[str, Tensor]:
    """The batch with its refinement examples drawn (two draws of N): their ``t`` log-uniform in varsigma
    on ``refine_varsigma`` and their ``delta`` (the biharmonic estimate minus ``x0`` at the missing
    pixels), or with ``refine_start="restorer"`` their selection ``refine`` (the delta made later)."""
    n = x0.shape[0]
    gdev = generator.device
    r_lo, r_hi = refine_range(schedule, refine_fraction, refine_varsigma)
    pick = torch.rand(n, generator=generator, dtype=torch.float64, device=gdev) < refine_fraction
    v = torch.rand(n, generator=generator, dtype=torch.float64, device=gdev)
    vs = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * v)
    known = m[:, 0] == 1
    masks = known.flatten(1).any(1) & (~known).flatten(1).any(1) & (m[:, 1:] == 0).flatten(1).all(1)
    sel = pick & masks.to(gdev)  # t, pick and vs live on the generator's device
    t = torch.where(sel, schedule.t_of_varsigma(vs).clamp(t_min, t_max).to(torch.float64), t)
    if refine_start == "restorer":  # the model's own R(c) is the start: its delta is made in loss_on_batch
        return {"x0": x0, "t": t.to(x0.device), "eps": eps, "y": y, "m": m, "delta": delta,
                "refine": sel.to(x0.device)}
    if bool(sel.any()):
        from ..data.classical import classical_estimate

        idx = sel.nonzero().flatten().to(x0.device)
        _, est = classical_estimate(y[idx] * m[idx, :1], m[idx], "inpaint_biharmonic")
        miss = (m[idx, :1] != 1).expand_as(est)
        delta[idx] = torch.where(miss, est.to(x0) - x0[idx], 0.0)
    return {"x0": x0, "t": t.to(x0.device), "eps": eps, "y": y, "m": m, "delta": delta}


def refine_range(schedule, refine_fraction: float, refine_varsigma) -> tuple[float, float]:
    """Check the refinement options of :func:`draw_training_batch`; returns ``(lo, hi)``."""
    if not 0.0 <= refine_fraction <= 1.0:
        raise ArgumentError(f"refine_fraction must lie in [0, 1], got {refine_fraction!r}")
    try:
        lo, hi = (float(v) for v in refine_varsigma)
    except (TypeError, ValueError):
        raise ArgumentError(f"refine_varsigma must be two numbers [lo, hi], got {refine_varsigma!r}") from None
    top = float(schedule.varsigma(schedule.t_max))
    if not 0.0 < lo <= hi < top:
        raise ArgumentError(f"refine_varsigma must satisfy 0 < lo <= hi < varsigma(t_max)={top:.3g}, "
                            f"got {refine_varsigma!r}")
    return lo, hi


def low_noise_range(schedule, t_min: float, low_noise_fraction: float, low_noise_varsigma: float) -> float:
    r"""Check the low-noise mixture of :func:`draw_training_batch` against ``schedule``; returns the
    lower end $\varsigma(t_{\min})$ of its $\log\varsigma$ interval. One :class:`ArgumentError` line."""
    if not 0.0 <= low_noise_fraction <= 1.0:
        raise ArgumentError(f"low_noise_fraction must lie in [0, 1], got {low_noise_fraction!r}")
    lo = float(schedule.varsigma(max(t_min, 1e-6)))
    if low_noise_fraction > 0 and not lo < low_noise_varsigma < float(schedule.varsigma(schedule.t_max)):
        raise ArgumentError(f"low_noise_varsigma must lie in (varsigma(t_min)={lo:.3g}, varsigma(t_max)), "
                            f"got {low_noise_varsigma!r}")
    return lo


def loss_on_batch(model: nn.Module, batch: dict[str, Tensor], sigma_data: Optional[float] = None) -> Tensor:
    r"""The mean squared $\varepsilon$-prediction error on a batch from :func:`draw_training_batch`
    (moved to the model's device by the caller): $x_t = \alpha_t x_0 + \sigma_t\varepsilon$, plus
    $\alpha_t\delta$ with the ε target $\varepsilon + \alpha_t\delta/\sigma_t$ where the batch has a ``delta``
    (refinement examples; the denoiser's target is $x_0$ either way).

    With ``sigma_data`` $= \sigma_d$ each example's error is weighted by $1 + \varsigma_t^2/\sigma_d^2$:
    the weighting of Karras et al. (2022, eq. 8 and Table 1, $\lambda(\sigma) = (\sigma^2 + \sigma_d^2)/
    (\sigma\sigma_d)^2$ on the denoiser's error) written for $\varepsilon$. An $\varepsilon$-error is a denoiser
    error divided by $\varsigma$, so the plain loss weighs the denoiser's error by $1/\varsigma^2$, nearly 0 at
    high noise, where the network's own inpainting from the condition is made; the weighted loss keeps
    that weight at $1/\sigma_d^2$ and is the plain one at low noise."""
    schedule = _schedule_of(model)
    x0, t, eps = batch["x0"], batch["t"], batch["eps"]
    a = schedule.alpha(t).to(x0.dtype)[:, None, None, None]
    s = schedule.sigma(t).to(x0.dtype)[:, None, None, None]
    xt = a * x0 + s * eps
    delta = batch.get("delta")
    if delta is not None:  # refinement examples: x_t holds the estimate, the target is still x0
        xt = xt + a * delta
        eps = eps + a * delta / s
    refine = batch.get("refine")
    if refine is not None and bool(refine.any()):  # refinement from the model's restorer: R(c) - x0 where missing
        with torch.no_grad():
            net = _unwrapped(model)
            m = batch["m"]
            r = net.anchor(batch["y"] * (m[:, :1] == 1).to(x0.dtype), m)
            miss = (m[:, :1] != 1).expand_as(x0)  # refinement examples are masks only, as in _refine_batch
            d = torch.where(miss & refine[:, None, None, None], r - x0, torch.zeros_like(x0))
        xt = xt + a * d
        eps = eps + a * d / s
    pred = model(xt, t.to(x0.dtype), batch["y"], batch["m"])
    err = (eps - pred).pow(2)
    if sigma_data is None:
        return err.mean()
    vs2 = schedule.varsigma(t.to(torch.float64)).pow(2)
    weight = (1.0 + vs2 / float(sigma_data) ** 2).to(x0.dtype)
    return (err.flatten(1).mean(1) * weight).mean()


def restorer_loss(restorer: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    r"""The restorer's direct supervision on a batch from :func:`draw_training_batch` (its $t$ and
    $\varepsilon$ play no role): the mean over the examples of $\mathrm{MSE}_i$, example $i$'s squared
    error of $R(y, m)$ against $x_0$ averaged over its *missing* pixels (every seen pixel is returned as
    observed and adds nothing; an example without missing pixels counts 0). Averaging over the missing
    pixels, not the image, keeps a one-pixel gap and a large box on the same per-pixel scale; a loss in
    $\log\mathrm{MSE}$ over the image instead weighs each example by the inverse of its error, so the
    examples with the fewest missing pixels drive every step, and it does not learn. It fits the single
network (:meth:`~injcert.model.restorer.Restorer.network`), also for a restorer with ``symmetries=8``."""
    m = expand_map(batch["m"])
    r = getattr(restorer, "network", restorer)(batch["y"], m)  # the single network, not its symmetry average
    miss = (~seen_pixels(m)).to(r.dtype)
    se = ((r - batch["x0"]).pow(2) * miss).flatten(1).sum(1)
    return (se / (miss.flatten(1).sum(1) * r.shape[1]).clamp_min(1.0)).mean()
