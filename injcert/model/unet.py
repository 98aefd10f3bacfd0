r"""The conditional score network: a U-Net that is certifiably $L_{\max}$-Lipschitz in $x$.

Long because the network and its certified bound belong together: the layers, the noise-adaptive
gain and the Lipschitz rule that reads them (proofs/05) must change in one place.

``CondUNet(x, t, y=None, m=None) -> eps`` predicts the noise $\varepsilon_\theta(x, t, c)$ with
$c = (y, m)$ (observation and corruption map, ``docs/design.md``).

Path from $x$ (every layer has a registered Lipschitz rule, ``injcert.theory.lipschitz``)::

    zero-pad to a multiple of 2^(levels-1) -> LipConv2d 3x3 -> [ResBlock]*b, AvgPool2d(2) ... mid
    ... Upsample(nearest, 2), concat(skip), [ResBlock]*b ... -> act -> LipConv2d 3x3 -> * gain -> crop

Time $t$ and condition $c$ enter only through *additive* features (a bias per block) and a
per-channel scale in $[1 - s_{\max}, 1 + s_{\max}]$; the condition passes through a separate
encoder (plain convolutions, never on the $x$ path). So the bound in $x$ holds uniformly over every
$t$ and $c$.

**Lipschitz budget.** Every :class:`~injcert.model.layers.LipConv2d` has cap 1. The *structural
bound* $S$ — the same composition as the certified rule, with each conv charged its cap and each
residual weight its maximum $\alpha_{\max}$ — is computed once at construction; the output is
multiplied by the fixed ``gain`` $= (L_{\max} - a_{\max})(1 - 10^{-6})/S$ and a linear skip
$a(t) \odot x$ is added, $a(t) = a_{\max}\tanh(\cdot)$ per channel with
$a_{\max} = \min(\texttt{skip\_max}, L_{\max}/2)$ (it lets $\varepsilon_\theta$ follow $x_t$ at high
noise without spending the budget through the deep path). The certified bound of the actual
weights is at most $\text{gain} \cdot S + a_{\max} \le L_{\max}$, whatever the weights (and EMA
weights) are. With ``lipschitz_budget=None`` every cap is $+\infty$ (plain convolutions) and
``gain = 1``; the certifier still computes the actual (possibly large) bound.

**Locality.** The network is fully convolutional. An input of any size is zero-padded at the
bottom/right to a multiple of :attr:`CondUNet.downsampling_factor` and the output cropped back.
Zero-padding is an isometric embedding and cropping a coordinate projection, so both have norm 1.
An output pixel depends only on input pixels (of $x$, $y$ and $m$) within Chebyshev distance
:attr:`CondUNet.receptive_field_radius`; the result is translation-equivariant for shifts that are
multiples of ``downsampling_factor`` (pooling grids must coincide), which is what tiled evaluation
(``injcert.tasks.tiling``) relies on.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._compat import transform_wrapped
from ..data.corruptions import expand_map
from ..errors import ConfigError, InputError
from ..io import register_model
from ..theory.lipschitz import concat_bound, lipschitz_bound, product_bound, register_lipschitz_rule, sum_bound
from .bands import MIX_ORDER, all_band_variances, check_bands, lowpass, mix_weights
from .layers import ACTIVATIONS, LipConv2d, ResBlock, make_activation
from .restorer import Restorer
from .schedule import VPSchedule, get_schedule

__all__ = ["CondUNet", "DEFAULT_MODEL_CONFIG", "MAP_CHANNELS"]

MAP_CHANNELS = 3

DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "base_channels": 32,
    "channel_mults": [1, 2, 2],
    "blocks_per_level": 1,
    "lipschitz_budget": 30.0,
    "activation": "maxmin",
    "alpha_max": 1.0,
    "modulation": 0.25,
    "skip_max": 1.0,
    "alpha_init": 0.5,
    "emb_dim": 128,
    "schedule": {"name": "cosine", "t_max": 0.995},
    "data_variance": None,
    "lipschitz_kappa": None,
    "parameterization": "eps",
    "spectral_bands": None,
    "cond_head": False,
    "restorer": None,
}

PARAMETERIZATIONS = ("eps", "denoiser")

#: The shipped checkpoint (the package's ``DEFAULT_CHECKPOINT``), whose architecture :meth:`CondUNet.shipped` builds.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "default.ckpt"

#: The fixed factor on the condition-only term's output (:meth:`CondUNet.condition_estimate`): an
#: equalised learning rate (Karras et al. 2018, section 4.1) for a zero-initialised head, whose Adam steps
#: of the weights' size would otherwise move its output a few thousandths in a run of thousands of steps.
COND_HEAD_SCALE = 8.0


def _keep(cache: dict, tid: int, entry: Optional[tuple]) -> None:
    """Set (or with ``None`` drop) thread ``tid``'s entry of a per-thread cache, and drop the entries of
    threads that have ended, so that their tensors are freed."""
    if entry is None:
        cache.pop(tid, None)
    else:
        cache[tid] = entry
    alive = {t.ident for t in threading.enumerate()}
    for gone in [k for k in cache if k not in alive]:
        del cache[gone]


def _int(name: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"model option {name} must be an int >= {minimum}, got {v!r}")
    return int(v)


class _TimeEmbedding(nn.Module):
    """Sinusoidal features of $1000\\,t$ followed by a 2-layer MLP (Ho et al. 2020)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
        arg = 1000.0 * t.to(torch.float64)[:, None] * freqs[None, :]
        feats = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(self.mlp[0].weight.dtype)
        if feats.shape[1] < self.dim:
            feats = F.pad(feats, (0, self.dim - feats.shape[1]))
        return self.mlp(feats)


class _CondEncoder(nn.Module):
    """Features of the condition $(y, m)$ at every resolution (never sees $x$)."""

    def __init__(self, in_channels: int, chans: Sequence[int], emb_dim: int, activation: str = "silu") -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.levels = nn.ModuleList()
        prev = chans[0]
        for c in chans:
            self.levels.append(nn.ModuleList([nn.Conv2d(prev, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)]))
            prev = c
        self.emb = nn.Linear(emb_dim, chans[0])
        self.act = make_activation(activation)
        self.pool = nn.AvgPool2d(2)

    def forward(self, c: Tensor, emb: Tensor) -> list[Tensor]:
        h = self.stem(c) + self.emb(emb).to(c.dtype)[:, :, None, None]
        out = []
        for i, (c1, c2) in enumerate(self.levels):
            if i > 0:
                h = self.pool(h)
            h = c1(self.act(h))
            h = h + c2(self.act(h))
            out.append(h)
        return out


def wiener_skip_sup(v: float) -> float:
    r"""A certified upper bound of $\sup_t \alpha_t v/(\alpha_t^2 v + \sigma_t^2)$ over every VP schedule.

    With $a = \alpha_t \in [0, 1]$, $\sigma_t^2 = 1 - a^2$: $g(a) = a v/(1 - a^2(1 - v))$. For $v \le 2$,
    $g$ increases on $[0, 1]$ (its derivative has the sign of $1 + a^2(1 - v) > 0$), so the sup is
    $g(1) = 1$; for $v > 2$ the maximum is at $a = 1/\sqrt{v - 1}$, $g = v/(2\sqrt{v-1})$. Inflated by
    $10^{-6}$ relative for the rounding of $d(t)$ to the network's dtype.
    """
    exact = 1.0 if v <= 2.0 else v / (2.0 * math.sqrt(v - 1.0))
    return math.nextafter(exact * (1.0 + 1e-6), math.inf)


def gaussian_skip_sup(v: float) -> float:
    r"""A certified upper bound of $\sup_t \sigma_t/(\alpha_t^2 v + \sigma_t^2)$ over every VP schedule.

    With $s = \sigma_t \in [0, 1]$ and $\alpha_t^2 = 1 - s^2$ the function is $g(s) = s/(v + (1-v)s^2)$;
    $g'(s) = 0$ at $s^2 = v/(1-v)$, inside $[0, 1]$ iff $v \le 1/2$, where
    $g = 1/(2\sqrt{v(1-v)})$; otherwise $g$ increases on $[0,1]$ and its sup is $g(1) = 1$. The value
    is inflated by $10^{-6}$ relative to cover the rounding of $c(t)$ to the network's dtype.
    """
    exact = 1.0 / (2.0 * math.sqrt(v * (1.0 - v))) if v <= 0.5 else 1.0
    return math.nextafter(exact * (1.0 + 1e-6), math.inf)


def band_linear_sup(p: float, s_lo: float, s_cap: float) -> float:
    r"""A certified upper bound of $\sup_{\sigma \ge s_{lo}} \sigma^2 / (\max(\sigma, s_{cap})\,(\alpha^2 p +
    \sigma^2))$ over every VP schedule: the norm of the band skip's exact linear part $w(I - \alpha K_t)$ in
    the band of variance $p$, at every noise level from $s_{lo}$ on (``proofs/05`` item 10).

    Below the cap ($\sigma \le s_{cap}$, $w = 1/s_{cap}$) the value increases with $\sigma$ and meets the
    uncapped one at $s_{cap}$. Above it, with $\alpha^2 = 1 - \sigma^2$, it is
    $g(\sigma) = \sigma/(p + (1 - p)\sigma^2)$, whose derivative has the sign of $p - (1 - p)\sigma^2$: for
    $p \ge 1/2$ it increases on $[0, 1]$ (sup $g(1) = 1$); otherwise it increases up to
    $\sigma^* = \sqrt{p/(1-p)} \le 1$, where $g = 1/(2\sqrt{p(1-p)})$, and decreases after. So the sup over
    $[\max(s_{lo}, s_{cap}), 1]$ is $g(\sigma^*)$ if $\sigma^*$ lies in it, else its value at the left end.
    Inflated by $10^{-9}$ relative for its own float64 evaluation.
    """
    s = max(float(s_lo), float(s_cap))
    if p >= 0.5:
        exact = 1.0
    elif s <= math.sqrt(p / (1.0 - p)):
        exact = 1.0 / (2.0 * math.sqrt(p * (1.0 - p)))
    else:
        exact = s / (p + (1.0 - p) * s * s)
    return math.nextafter(exact * (1.0 + 1e-9), math.inf)


def _check_options(in_channels: Any, base_channels: Any, channel_mults: Any, blocks_per_level: Any,
                   lipschitz_budget: Any, activation: Any, alpha_max: Any, modulation: Any, skip_max: Any,
                   alpha_init: Any, emb_dim: Any, data_variance: Any, lipschitz_kappa: Any,
                   parameterization: Any) -> tuple[int, int, int, int, list[int]]:
    """Validate :class:`CondUNet`'s options (one :class:`~injcert.errors.ConfigError` line for a bad one);
    returns the integer options ``(in_channels, base_channels, blocks_per_level, emb_dim, mults)``."""
    in_channels = _int("in_channels", in_channels, 1)
    base_channels = _int("base_channels", base_channels, 1)
    blocks_per_level = _int("blocks_per_level", blocks_per_level, 0)
    emb_dim = _int("emb_dim", emb_dim, 2)
    if not isinstance(channel_mults, (list, tuple)) or not channel_mults:
        raise ConfigError(f"model option channel_mults must be a non-empty list of ints, got {channel_mults!r}")
    mults = [_int("channel_mults[i]", v, 1) for v in channel_mults]
    if lipschitz_budget is not None:
        if isinstance(lipschitz_budget, bool) or not isinstance(lipschitz_budget, (int, float)) \
                or not math.isfinite(lipschitz_budget) or lipschitz_budget <= 0:
            raise ConfigError(f"lipschitz_budget must be a finite number > 0 (or null), got {lipschitz_budget!r}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choices: {sorted(ACTIVATIONS)}")
    if isinstance(alpha_max, bool) or not isinstance(alpha_max, (int, float)) or not 0 < alpha_max < math.inf:
        raise ConfigError(f"alpha_max must be a finite number > 0, got {alpha_max!r}")
    if isinstance(modulation, bool) or not isinstance(modulation, (int, float)) or not 0 <= modulation < 1:
        raise ConfigError(f"modulation must lie in [0, 1), got {modulation!r}")
    if isinstance(skip_max, bool) or not isinstance(skip_max, (int, float)) or not 0 <= skip_max < math.inf:
        raise ConfigError(f"skip_max must be a finite number >= 0, got {skip_max!r}")
    if isinstance(alpha_init, bool) or not isinstance(alpha_init, (int, float)) or not 0 < alpha_init < alpha_max:
        raise ConfigError(f"alpha_init must lie in (0, alpha_max={alpha_max!r}), got {alpha_init!r}")
    if data_variance is not None and (isinstance(data_variance, bool) or not isinstance(data_variance, (int, float))
                                      or not 0 < data_variance < math.inf):
        raise ConfigError(f"data_variance must be a finite number > 0 (or null), got {data_variance!r}")
    if lipschitz_kappa is not None:
        if isinstance(lipschitz_kappa, bool) or not isinstance(lipschitz_kappa, (int, float)) \
                or not 0 < lipschitz_kappa < math.inf:
            raise ConfigError(f"lipschitz_kappa must be a finite number > 0 (or null), got {lipschitz_kappa!r}")
        if lipschitz_budget is None:
            raise ConfigError("lipschitz_kappa needs a finite lipschitz_budget (the cap of L(t))")
    if parameterization not in PARAMETERIZATIONS:
        raise ConfigError(f"unknown parameterization {parameterization!r}; choices: {list(PARAMETERIZATIONS)}")
    if parameterization == "denoiser" and lipschitz_kappa is None:
        raise ConfigError("parameterization 'denoiser' needs lipschitz_kappa (and a finite lipschitz_budget)")
    return in_channels, base_channels, blocks_per_level, emb_dim, mults


def _check_heads(cond_head: Any, parameterization: str, bands: Optional[dict], data_variance: Optional[float]) -> None:
    """The optional heads' options: ``cond_head`` a bool needing the denoiser; bands the denoiser without
    ``data_variance``."""
    if not isinstance(cond_head, bool):
        raise ConfigError(f"cond_head must be true or false, got {cond_head!r} of type {type(cond_head).__name__}")
    if cond_head and parameterization != "denoiser":
        raise ConfigError("cond_head needs parameterization 'denoiser' (it adds to the denoiser D)")
    if bands is not None and (parameterization != "denoiser" or data_variance is not None):
        raise ConfigError("spectral_bands needs parameterization 'denoiser' and replaces data_variance "
                          "(set data_variance to null)")


def _check_restorer(restorer: Any, parameterization: str, bands: Optional[dict] = None) -> None:
    """``restorer``: null, or ``{'width': ..., 'mults': ..., 'symmetries': ...}`` (the last optional) with the denoiser parameterization; band
    ``residual_variances`` need one."""
    if restorer is None and bands is not None and "residual_variances" in bands:
        raise ConfigError("spectral_bands.residual_variances needs a restorer (they are the variances of what it "
                          "leaves)")
    if restorer is not None:
        if not isinstance(restorer, dict) or not set(restorer) <= {"width", "mults", "symmetries"}:
            raise ConfigError(f"restorer must be null or {{'width': int, 'mults': [ints], 'symmetries': 1 or 8}}, "
                              f"got {restorer!r}")
        if parameterization != "denoiser":
            raise ConfigError("restorer needs parameterization 'denoiser' (R(c) anchors the denoiser D)")


def weights_config(cfg: Any) -> Any:
    """A model config without the restorer's ``symmetries``: how the restorer is evaluated, not what
    its weights are (equal for checkpoints whose weights fit each other)."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("restorer"), dict):
        return cfg
    return dict(cfg, restorer={k: v for k, v in cfg["restorer"].items() if k != "symmetries"})


def _model_config(*, in_channels: int, base_channels: int, channel_mults: Any, blocks_per_level: int,
                  lipschitz_budget: Optional[float], activation: str, alpha_max: float, modulation: float,
                  skip_max: float, alpha_init: float, emb_dim: int, schedule: VPSchedule,
                  data_variance: Optional[float], lipschitz_kappa: Optional[float], parameterization: str,
                  bands: Optional[dict], cond_head: bool) -> dict[str, Any]:
    """The JSON-able constructor arguments of a :class:`CondUNet` (the restorer's filled in once built)."""
    return {
        "in_channels": in_channels,
        "base_channels": base_channels,
        "channel_mults": channel_mults,
        "blocks_per_level": blocks_per_level,
        "lipschitz_budget": None if lipschitz_budget is None else float(lipschitz_budget),
        "activation": activation,
        "alpha_max": float(alpha_max),
        "modulation": float(modulation),
        "skip_max": float(skip_max),
        "alpha_init": float(alpha_init),
        "emb_dim": emb_dim,
        "schedule": schedule.to_config(),
        "data_variance": data_variance,
        "lipschitz_kappa": None if lipschitz_kappa is None else float(lipschitz_kappa),
        "parameterization": parameterization,
        "spectral_bands": None if bands is None else {k: list(v) for k, v in bands.items()},
        "cond_head": cond_head,
        "restorer": None,
    }


MIX_SLACK = 2.0**-20
r"""With two band skips mixed (:meth:`CondUNet.mixed_band_skip`), the float roots of the mixing weights
satisfy $|s^2 + c^2 - 1| \le$ ``MIX_SLACK``, which widens the linear part's eigenvalue range by that much."""


def _band_charge(bands: Optional[dict]) -> float:
    """The float32 rounding of the band skip's coefficients d_0, d_j - d_{j-1} and kernels (proofs/05 item 10);
    with ``residual_variances`` both skips' (they are summed) and the products with the mixing weights
    (proofs/05 item 19)."""
    if bands is None:
        return 0.0
    sups = [wiener_skip_sup(v) for v in all_band_variances(bands)]
    return 4e-6 * (math.fsum(sups) + (max(sups) if "residual_variances" in bands else 0.0))


def _zero_cond_head(chans: Sequence[int], in_channels: int) -> nn.ModuleList:
    """The condition-only head: a 1x1 convolution per level, zero at initialisation."""
    head = nn.ModuleList([nn.Conv2d(c, in_channels, 1) for c in chans])
    for conv in head:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return head


@register_model("cond_unet")
class CondUNet(nn.Module):
    r"""Conditional ε-prediction U-Net, certifiably ``lipschitz_budget``-Lipschitz in $x$.

    Arguments:
        in_channels: image channels $C$ (1 or 3).
        base_channels: channels at the finest level.
        channel_mults: one multiplier per level (``len`` = number of levels).
        blocks_per_level: residual blocks per level (encoder and decoder).
        lipschitz_budget: $L_{\max} > 0$, or ``None`` for the unconstrained baseline.
        activation: ``"maxmin"`` (exact arithmetic, hence tile-stable), ``"silu"``, ``"relu"``, ``"gelu"`` or ``"tanh"``.
        alpha_max: bound on each residual weight $|\alpha|$.
        modulation: $s_{\max} \in [0, 1)$ of the time-dependent channel scale.
        skip_max: $a_{\max}$ of the linear skip $a(t) \odot x$ (capped at $L_{\max}/2$).
        alpha_init: initial residual weight $\alpha$ (in $(0, \alpha_{\max})$).
        emb_dim: time-embedding width (even).
        schedule: schedule config dict or name (see :func:`~injcert.model.schedule.get_schedule`).
        data_variance: the scalar Gaussian-data skip's variance (or ``None``).
        lipschitz_kappa: $\kappa$ of the noise-adaptive budget $B(t) = \min(\kappa/\sigma_t, L_{\max})$ (or ``None``).
        parameterization: ``"eps"`` or ``"denoiser"``.
        spectral_bands: the band skip's orders and variances (``injcert.model.bands``) or ``None``.
        cond_head: add the condition-only term $h(c, t)$ to the denoiser (:meth:`condition_estimate`).
        restorer: ``None`` or the options of the conditional restorer $R(c)$
            (:class:`~injcert.model.restorer.Restorer`, e.g. ``{"width": 32, "mults": [1, 2, 3, 4], "symmetries": 8}``): the
            denoiser's exact linear part becomes the Gaussian posterior mean around $R(c)$ (:meth:`anchor`).

    Attributes:
        schedule: the :class:`~injcert.model.schedule.VPSchedule`.
        lipschitz_budget: $L_{\max}$ (``math.inf`` when unconstrained).
        structural_bound: $S$, the bound implied by the caps.
        gain: the output gain $L_{\max}/S$ (a buffer, saved with the weights).
        downsampling_factor: $2^{\text{levels}-1}$; inputs are padded to a multiple of it.
        receptive_field_radius: int upper bound $r$ (pixels, Chebyshev) on how far an output
            pixel looks in $x$, $y$ and $m$.

    Raises:
        ConfigError: an unknown option or a bad value (one line).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        blocks_per_level: int = 1,
        lipschitz_budget: Optional[float] = 30.0,
        activation: str = "maxmin",
        alpha_max: float = 1.0,
        modulation: float = 0.25,
        skip_max: float = 1.0,
        alpha_init: float = 0.5,
        emb_dim: int = 128,
        schedule: Union[str, dict, VPSchedule, None] = None,
        data_variance: Optional[float] = None,
        lipschitz_kappa: Optional[float] = None,
        parameterization: str = "eps",
        spectral_bands: Optional[dict[str, Any]] = None,
        cond_head: bool = False,
        restorer: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        in_channels, base_channels, blocks_per_level, emb_dim, mults = _check_options(
            in_channels, base_channels, channel_mults, blocks_per_level, lipschitz_budget, activation, alpha_max,
            modulation, skip_max, alpha_init, emb_dim, data_variance, lipschitz_kappa, parameterization)
        self.bands = check_bands(spectral_bands)
        _check_heads(cond_head, parameterization, self.bands, data_variance)
        self.schedule: VPSchedule = get_schedule(schedule)
        self.data_variance = None if data_variance is None else float(data_variance)
        self.gaussian_skip_max = 0.0 if data_variance is None else gaussian_skip_sup(float(data_variance))
        self._config = _model_config(
            in_channels=in_channels, base_channels=base_channels, channel_mults=mults,
            blocks_per_level=blocks_per_level, lipschitz_budget=lipschitz_budget, activation=activation,
            alpha_max=alpha_max, modulation=modulation, skip_max=skip_max, alpha_init=alpha_init, emb_dim=emb_dim,
            schedule=self.schedule, data_variance=self.data_variance, lipschitz_kappa=lipschitz_kappa,
            parameterization=parameterization, bands=self.bands, cond_head=cond_head)
        _check_restorer(restorer, parameterization, self.bands)
        self.parameterization = parameterization
        self.wiener_max = 0.0 if data_variance is None else wiener_skip_sup(float(data_variance))
        self.lipschitz_kappa = None if lipschitz_kappa is None else float(lipschitz_kappa)
        cap = None if lipschitz_budget is None else 1.0
        self.in_channels = in_channels
        self.lipschitz_budget = math.inf if lipschitz_budget is None else float(lipschitz_budget)
        chans = [base_channels * k for k in mults]
        self.num_levels = len(chans)
        self.downsampling_factor = 2 ** (self.num_levels - 1)
        self.band_charge = _band_charge(self.bands)  # set before the budget, which reserves it
        self._build(chans, emb_dim, activation, cap, alpha_max, modulation, alpha_init, blocks_per_level,
                    skip_max, lipschitz_budget)
        # the condition-only head h(c, t) of the denoiser: zero at initialisation, so a checkpoint without it
        # computes the same function with it; it never reads x, so it adds nothing to Lip in x (Theorem 5)
        self.cond_head = _zero_cond_head(chans, in_channels) if cond_head else None
        # R(c): reads only (y, m), so it is a constant for every bound in x (proofs/05, item 19)
        self.restorer = None if restorer is None else Restorer(in_channels, MAP_CHANNELS, **restorer)
        #: two band skips mixed by where the condition leaves holes (spectral_bands.residual_variances)
        self.band_mix = self.bands is not None and "residual_variances" in self.bands
        self._config["restorer"] = None if self.restorer is None else dict(self.restorer.config)
        self._anchor_cache, self._uncond_anchor_cache = {}, {}  # :meth:`anchor`'s, an entry per thread
        self._init_budget(parameterization, skip_max, lipschitz_budget)
        self.receptive_field_radius = self._receptive_field_radius(chans, blocks_per_level)

    def _build(self, chans: Sequence[int], emb_dim: int, activation: str, cap: Optional[float], alpha_max: float,
               modulation: float, alpha_init: float, blocks_per_level: int, skip_max: float,
               lipschitz_budget: Optional[float]) -> None:
        """The layers: time embedding, condition encoder, the U-Net's levels, the linear skip head."""
        in_channels = self.in_channels
        self.time_embed = _TimeEmbedding(emb_dim)
        self.cond_encoder = _CondEncoder(in_channels + MAP_CHANNELS, chans, emb_dim, activation)
        self.in_conv = LipConv2d(in_channels, chans[0], 3, cap=cap)
        self.pool = nn.AvgPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        block = dict(emb_dim=emb_dim, activation=activation, cap=cap, alpha_max=alpha_max, modulation=modulation,
                     alpha_init=alpha_init)
        # linear skip eps += a(t) * x with |a| <= skip_max: at most half the budget
        self.skip_max = float(skip_max) if lipschitz_budget is None else min(float(skip_max), 0.5 * self.lipschitz_budget)
        self.skip_head = nn.Linear(emb_dim, in_channels)
        self.down = nn.ModuleList()
        prev = chans[0]
        for lvl, c in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level):
                blocks.append(ResBlock(prev, c, cond_channels=c, **block))
                prev = c
            self.down.append(blocks)
        self.mid = ResBlock(prev, prev, cond_channels=chans[-1], **block)
        self.up = nn.ModuleList()
        self._up_in: list[int] = []
        for lvl in reversed(range(self.num_levels - 1)):
            c = chans[lvl]
            blocks = nn.ModuleList()
            cin = prev + self._skip_channels(chans, lvl, blocks_per_level)
            for b in range(max(blocks_per_level, 1)):
                blocks.append(ResBlock(cin, c, cond_channels=c, **block))
                cin = c
            self.up.append(blocks)
            prev = c
        self.out_act = make_activation(activation)
        self.out_conv = LipConv2d(prev, in_channels, 3, cap=cap)
        self.register_buffer("gain", torch.tensor(1.0, dtype=torch.float32))

    def _init_budget(self, parameterization: str, skip_max: float, lipschitz_budget: Optional[float]) -> None:
        """The structural bound and the output gain that keep the network within its budget."""
        self.structural_bound = self._structural_bound()
        if parameterization == "denoiser":
            # eps = w(t) (x - alpha_t D(x)), D = gain F + d(t) x + b(t) x, Lip(D) <= kappa - 1 (proofs/05 item 9)
            self.skip_max = float(skip_max)
            # D's charges beyond the deep path (lipschitz_at): wiener_max, skip_max and the band skip's rounding
            room = self.lipschitz_kappa - 1.0 - self.wiener_max - self.skip_max - self.band_charge
            if not room > 0:
                raise ConfigError(f"lipschitz_kappa {self.lipschitz_kappa!r} leaves no room for the denoiser beyond "
                                  f"1 + its linear skips ({self.wiener_max!r} + {self.skip_max!r} + "
                                  f"{self.band_charge!r})")
            self.sigma_cap = self.lipschitz_kappa / self.lipschitz_budget
            self._set_gain(room)
        elif lipschitz_budget is not None:
            room = self.lipschitz_budget - self.skip_max - self.gaussian_skip_max
            if not room > 0:
                raise ConfigError(f"lipschitz_budget {self.lipschitz_budget!r} leaves no room beyond the linear skips "
                                  f"({self.skip_max!r} + {self.gaussian_skip_max!r})")
            if self.lipschitz_kappa is not None:
                floor = self.lipschitz_kappa / float(self.schedule.sigma(self.schedule.t_max))
                if not floor - self.skip_max - self.gaussian_skip_max > 0:
                    raise ConfigError(f"lipschitz_kappa {self.lipschitz_kappa!r} leaves no room at t_max beyond the "
                                      f"linear skips ({self.skip_max!r} + {self.gaussian_skip_max!r}): "
                                      f"L(t_max) = kappa/sigma(t_max) = {floor:.4g}")
            self._set_gain(room)

    # ------------------------------------------------------------------ config / io

    @staticmethod
    def _skip_channels(chans: Sequence[int], lvl: int, blocks_per_level: int) -> int:
        # The skip saved at level lvl is the output of that level's last down block (or in_conv).
        if blocks_per_level > 0:
            return chans[lvl]
        return chans[0]

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (``from_config(model.config)`` rebuilds the model)."""
        restorer = self._config["restorer"]
        return dict(self._config, channel_mults=list(self._config["channel_mults"]),
                    schedule=dict(self._config["schedule"]),
                    restorer=None if restorer is None else dict(restorer, mults=list(restorer["mults"])))

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "CondUNet":
        """Build from a config dict; unknown keys raise :class:`ConfigError` (one line)."""
        if not isinstance(cfg, dict):
            raise ConfigError(f"model config must be a dict, got {type(cfg).__name__}")
        unknown = sorted(set(cfg) - set(DEFAULT_MODEL_CONFIG))
        if unknown:
            raise ConfigError(f"unknown model option(s) {unknown}; known: {sorted(DEFAULT_MODEL_CONFIG)}")
        return cls(**cfg)

    @classmethod
    def shipped(cls) -> "CondUNet":
        """The shipped model's architecture (``injcert/assets/default.ckpt``'s configuration, read from
        its header without its weights), freshly initialised: what ``CondUNet()``'s small defaults are
        not. Load the trained weights with :func:`injcert.load_checkpoint` instead."""
        from ..io import read_checkpoint_header

        cfg = read_checkpoint_header(SHIPPED_CHECKPOINT)
        return cls.from_config(dict(cfg["model_config"]))

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor, t: Union[Tensor, float], y: Optional[Tensor] = None,
                m: Optional[Tensor] = None, anchor: Optional[Tensor] = None) -> Tensor:
        """Predict $\\varepsilon$ for ``x`` (N×C×H×W) at times ``t`` ((N,), 0-d or float).

        ``y`` (N×C×H×W) and ``m`` (N×1×H×W or N×3×H×W) default to zeros (unconditional). With a
        restorer, ``anchor`` is $R(y, m)$ already computed (:meth:`anchor`; tiled evaluation passes a
        crop of the whole image's); by default it is computed here.
        """
        x, t, y, m, anchor, (h, w) = self._forward_inputs(x, t, y, m, anchor)
        emb = self.time_embed(t)
        conds = self.cond_encoder(torch.cat([y, m], dim=1).to(self.cond_encoder.stem.weight.dtype), emb)
        conds = [c.to(x.dtype) for c in conds]
        out = self._deep_path(x, emb, conds)
        if self.cond_head is not None:
            out = out + self.condition_estimate(conds)
        if self.parameterization == "denoiser":
            mix = mix_weights(m, x.dtype) if self.band_mix and anchor is not None else None
            return self._denoiser_eps(out, x, t, emb, anchor, mix)[:, :, :h, :w]
        if self.lipschitz_kappa is not None:
            out = out * self.gain_scale(t).to(x.dtype)[:, None, None, None]
        if self.skip_max > 0:
            a = self.skip_max * torch.tanh(self.skip_head(emb)).to(x.dtype)
            out = out + a[:, :, None, None] * x
        if self.data_variance is not None:
            out = out + self.gaussian_skip(t).to(x.dtype)[:, None, None, None] * x
        return out[:, :, :h, :w]

    def _forward_inputs(self, x: Tensor, t: Union[Tensor, float], y: Optional[Tensor], m: Optional[Tensor],
                        anchor: Optional[Tensor]) -> tuple:
        """``forward``'s inputs checked, defaulted and padded to a multiple of the downsampling factor:
        ``(x, t, y, m, anchor, (h, w))`` with ``t`` of shape (N,) and ``(h, w)`` the unpadded size."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"x must be N×{self.in_channels}×H×W, got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(n)
        elif t.shape != (n,):
            raise InputError(f"t must be a scalar or of shape ({n},), got shape {tuple(t.shape)}")
        if self.restorer is None:
            anchor = None  # a model without a restorer has no anchor term
        elif anchor is None and y is None and m is None:
            anchor = self._unconditional_anchor(x)
        elif anchor is None:
            anchor = self.anchor(x.new_zeros(x.shape) if y is None else y, m)
        y = torch.zeros_like(x) if y is None else y.to(x.dtype)
        m = x.new_zeros(n, MAP_CHANNELS, h, w) if m is None else expand_map(m.to(x.dtype))
        if y.shape != x.shape or m.shape[2:] != x.shape[2:] or m.shape[0] != n:
            raise InputError(f"y {tuple(y.shape)} and m {tuple(m.shape)} must match x {tuple(x.shape)}")
        if anchor is not None:
            anchor = anchor.to(x.dtype)
            if anchor.shape != x.shape:
                raise InputError(f"anchor {tuple(anchor.shape)} must match x {tuple(x.shape)}")
        f = self.downsampling_factor
        ph, pw = (-h) % f, (-w) % f
        if ph or pw:
            x, y, m = (F.pad(v, (0, pw, 0, ph)) for v in (x, y, m))
            if anchor is not None:
                anchor = F.pad(anchor, (0, pw, 0, ph))
        return x, t, y, m, anchor, (h, w)

    def _deep_path(self, x: Tensor, emb: Tensor, conds: list[Tensor]) -> Tensor:
        """The U-Net: in_conv, the down levels (their skips saved), the middle block, the up levels, the
        output convolution times the gain."""
        hcur = self.in_conv(x)
        skips = []
        for lvl, blocks in enumerate(self.down):
            for blk in blocks:
                hcur = blk(hcur, emb, conds[lvl])
            if lvl < self.num_levels - 1:
                skips.append(hcur)
                hcur = self.pool(hcur)
        hcur = self.mid(hcur, emb, conds[-1])
        for i, blocks in enumerate(self.up):
            lvl = self.num_levels - 2 - i
            hcur = torch.cat([self.upsample(hcur), skips[lvl]], dim=1)
            for blk in blocks:
                hcur = blk(hcur, emb, conds[lvl])
        return self.out_conv(self.out_act(hcur)) * self.gain.to(x.dtype)

    def condition_estimate(self, conds: list[Tensor]) -> Tensor:
        r"""$h(c, t)$, the condition-only term of the denoiser, $D = K_t x + \mathrm{gain}\,F(x, c) + h(c, t)$:
        a 1×1 convolution of the condition encoder's features at every level, summed from the coarsest
        level down with nearest 2× upsampling (exact copies, so tiles agree), times
        :data:`COND_HEAD_SCALE`. It reads $(y, m)$ and $t$
        only: a term constant in $x$, which leaves every Lipschitz bound in $x$ as it is (``proofs/05``
        item 11) and lets the network carry what the observation says straight to its output (the deep
        path's output is scaled by ``gain``, so a condition that only enters inside it reaches $D$
        damped by it)."""
        acc: Optional[Tensor] = None
        act = self.cond_encoder.act
        for lvl in reversed(range(self.num_levels)):
            v = self.cond_head[lvl](act(conds[lvl]))
            acc = v if acc is None else acc + v
            if lvl > 0:
                acc = self.upsample(acc)
        return acc * COND_HEAD_SCALE

    def _set_gain(self, room: float) -> None:
        """``gain`` = ``room`` $(1 - 10^{-6})/S$, the deep path's share of the budget; the float32 value
        never exceeds the exact ratio (stepped down one ulp if rounding went up)."""
        g = room * (1.0 - 1e-6) / self.structural_bound
        g32 = torch.tensor(g, dtype=torch.float32)
        if float(g32) > g:
            g32 = torch.nextafter(g32, torch.tensor(0.0, dtype=torch.float32))
        self.gain.fill_(float(g32))

    def _skip_charge(self) -> float:
        """$a_{\\max}$ as charged: forward rounds ``skip_max`` to the parameter dtype (and $|\\tanh| \\le 1$);
        charge the larger of the two values."""
        return max(float(self.skip_max), float(torch.tensor(float(self.skip_max), dtype=self.gain.dtype)))

    def _deep_gain_at(self, t: Optional[float]) -> float:
        """The deep path's output gain charged for every $t' \\ge t$ (``None``: its sup over $t$):
        ``gain`` times $\\min(1, r(t)(1 + 10^{-6}))$ with the noise-adaptive budget (the factor covers
        the float32 roundings, :meth:`certified_lipschitz_at`), else ``gain``."""
        gain = float(self.gain.detach().to(torch.float64))
        if self.lipschitz_kappa is not None and t is not None:
            r = float(self.gain_scale(torch.tensor(float(t), dtype=torch.float64)))
            gain = gain * min(1.0, r * (1.0 + 1e-6))
        return gain

    def _denoiser_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """$w(t) = 1/\\max(\\sigma_t, \\sigma_c)$ and $\\alpha_t$ (float64)."""
        t64 = t.detach().to(torch.float64)
        w = 1.0 / torch.clamp(self.schedule.sigma(t64), min=self.sigma_cap)
        return w, self.schedule.alpha(t64)

    def _denoiser_eps(self, deep: Tensor, x: Tensor, t: Tensor, emb: Tensor,
                      anchor: Optional[Tensor] = None, mix: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        r"""$\varepsilon = w(t)\,(x - \alpha_t D)$ with $D = $ ``deep`` $+ (d(t) + b(t))\,x$: the denoiser
        parameterisation (Karras et al. 2022 precondition the same way). The ideal $\varepsilon$'s slope
        $\approx 1/\sigma_t$ across the data comes from the exact linear term $w\,x$; the network learns a
        denoiser $D$ with $\mathrm{Lip}(D) \le \kappa - 1$, so $L(t) \le w(1 + \alpha(\kappa-1)) \le B(t)$."""
        d = deep
        if self.data_variance is not None:
            d = d + self.wiener_skip(t).to(x.dtype)[:, None, None, None] * x
        if self.bands is not None:
            d = d + self.linear_skip(x, t, mix)
        if anchor is not None:
            # the Gaussian posterior mean around R: K_t x + (I - alpha_t K_t) R; the R terms are constant in x
            d = d + anchor - self.schedule.alpha(t.detach().to(torch.float64)).to(x.dtype)[:, None, None, None] \
                * self.linear_skip(anchor, t, mix)
        if self.skip_max > 0:
            b = self.skip_max * torch.tanh(self.skip_head(emb)).to(x.dtype)
            d = d + b[:, :, None, None] * x
        w, a = self._denoiser_coefficients(t)
        return w.to(x.dtype)[:, None, None, None] * x - (w * a).to(x.dtype)[:, None, None, None] * d

    def linear_skip(self, v: Tensor, t: Tensor, mix: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        r"""$K_t v$: the denoiser's exact linear part applied to ``v`` (the band skip, the two band skips
        mixed by ``mix`` (:meth:`mixed_band_skip`), the scalar Wiener skip, or 0)."""
        if self.bands is not None:
            return self.band_skip(v, t) if mix is None else self.mixed_band_skip(v, t, mix)
        if self.data_variance is not None:
            return self.wiener_skip(t).to(v.dtype)[:, None, None, None] * v
        return torch.zeros_like(v)

    def anchor(self, y: Optional[Tensor], m: Optional[Tensor]) -> Tensor:
        r"""$R(y, m)$, the restorer's estimate of the image from the condition alone (zeros for ``y`` and
        ``m`` that are ``None``). Without a gradient to carry the last result is kept, with the very tensors it
        was computed from (so their memory cannot be reused by others), and returned again while
        ``y``, ``m`` (by identity and version), the weights and the dtype are unchanged: a solver calls
        the network with the same condition at every step, and $R$ runs once. Each thread keeps its own
        last result, so solvers running side by side in threads do not evict each other's. The same holds with
        gradients enabled as long as none can flow into $R$ (no weight of the restorer and neither
        ``y`` nor ``m`` requires one): the Jacobians in $x$ of the certificate reuse it.

        Raises:
            ConfigError: the model has no restorer.
        """
        if self.restorer is None:
            raise ConfigError("this model has no restorer (model option 'restorer' is null)")
        p = self.restorer.stem.weight
        if y is None or m is None:
            like = y if y is not None else m
            if like is None:
                raise InputError("anchor needs y or m (their shape)")
            n, h, w = like.shape[0], like.shape[-2], like.shape[-1]
            y = like.new_zeros(n, self.in_channels, h, w) if y is None else y
            m = like.new_zeros(n, MAP_CHANNELS, h, w) if m is None else m
        grad = torch.is_grad_enabled() and (p.requires_grad or y.requires_grad or m.requires_grad)
        versions = (y._version, m._version, self._weights_key(), p.dtype)
        tid = threading.get_ident()
        cached = self._anchor_cache.get(tid)  # (y, m, versions, R): y and m held, compared by identity
        if not grad and cached is not None and cached[0] is y and cached[1] is m and cached[2] == versions:
            return cached[3]
        with torch.set_grad_enabled(grad):  # a frozen restorer (refiner training) builds no graph
            out = self.restorer(y.to(p.dtype), expand_map(m.to(p.dtype))).to(y.dtype)
        # kept when no gradient can flow into it and it is a plain tensor (one made inside a torch.func
        # transform belongs to that transform and must not leave it)
        _keep(self._anchor_cache, tid, None if grad or transform_wrapped(out) else (y, m, versions, out))
        return out

    def _unconditional_anchor(self, x: Tensor) -> Tensor:
        """$R$ of the empty observation (no ``y``, no ``m``) for inputs shaped like ``x``: kept (when no
        gradient can flow into the restorer, as in :meth:`anchor`) per shape, dtype, device and
        weights, since an unconditional solver would otherwise run the restorer on a fresh zero
        condition at every step."""
        p = self.restorer.stem.weight
        key = (tuple(x.shape), x.dtype, x.device, self._weights_key(), p.dtype)
        grad = torch.is_grad_enabled() and p.requires_grad
        tid = threading.get_ident()
        cached = self._uncond_anchor_cache.get(tid)
        if not grad and cached is not None and cached[0] == key:
            return cached[1]
        out = self.anchor(x.new_zeros(x.shape), None)
        _keep(self._uncond_anchor_cache, tid, None if grad or transform_wrapped(out) else (key, out))
        return out

    def wiener_skip(self, t: Tensor) -> Tensor:
        r"""$d(t) = \alpha_t v/(\alpha_t^2 v + \sigma_t^2)$ (float64): the exact denoiser's slope for Gaussian
        data of variance $v$ (the Wiener filter); with it the linear part of $\varepsilon$ is exactly the
        Gaussian-data skip $c(t)$ of the ε-parameterisation (for $\sigma_t \ge \sigma_c$)."""
        t64 = t.detach().to(torch.float64)
        a = self.schedule.alpha(t64)
        s = self.schedule.sigma(t64)
        return a * float(self.data_variance) / (a * a * float(self.data_variance) + s * s)

    def band_slopes(self, t: Tensor, key: str = "variances") -> Tensor:
        r"""$d_j(t) = \alpha_t P_j/(\alpha_t^2 P_j + \sigma_t^2)$ per band (float64, ``N×(J+1)``): the Wiener
        slope of each band of ``spectral_bands`` (``injcert.model.bands``; ``key="residual_variances"``
        for the skip of the restorer's residual)."""
        t64 = t.detach().to(torch.float64).reshape(-1, 1)
        a, s = self.schedule.alpha(t64), self.schedule.sigma(t64)
        p = torch.tensor(self.bands[key], dtype=torch.float64, device=t64.device).view(1, -1)
        return a * p / (a * a * p + s * s)

    def mixed_band_skip(self, x: Tensor, t: Tensor, mix: tuple[Tensor, Tensor]) -> Tensor:
        r"""$K_t(c)\,x = \sqrt S\,K^P_t(\sqrt S x) + \sqrt{1-S}\,K^Q_t(\sqrt{1-S}\,x)$ with ``mix`` $=
        (\sqrt S, \sqrt{1-S})$ (:func:`~injcert.model.bands.mix_weights`): the image's band skip $K^P$ inside
        the condition's holes, the skip $K^Q$ of the restorer's residual where pixels are seen or scattered
        pixels are missing. Symmetric, with every eigenvalue between the smallest and the largest band
        slope of the two skips (``proofs/05`` item 19)."""
        s, c = mix
        return s * self.band_skip(s * x, t) + c * self.band_skip(c * x, t, "residual_variances")

    def band_skip(self, x: Tensor, t: Tensor, key: str = "variances") -> Tensor:
        r"""$K_t x = \sum_j d_j(t) B_j x = d_0 x + \sum_{j \ge 1}(d_j - d_{j-1}) G_{a_j} x$: the stationary
        Gaussian-data denoiser, band by band (``injcert.model.bands``; zero-padded, so local)."""
        d = self.band_slopes(t, key).to(x.dtype)
        out = d[:, :1, None, None] * x
        for j, a in enumerate(self.bands["orders"], start=1):
            out = out + (d[:, j] - d[:, j - 1])[:, None, None, None] * lowpass(x, a)
        return out

    def _weights_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in list(self.parameters()) + list(self.buffers()))

    def certified_lipschitz(self) -> float:
        """The certified, size-independent Lipschitz bound of the current weights in $x$ (uniform in
        $t$ and the condition: with ``lipschitz_kappa`` it is the sup over $t$ of
        :meth:`certified_lipschitz_at`), cached until a parameter or buffer changes."""
        key = self._weights_key()
        cached = getattr(self, "_certified_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        f = self.downsampling_factor
        value = lipschitz_bound(self, (self.in_channels, 2 * f, 2 * f), size_independent=True).value
        self._certified_cache = (key, value)
        return value

    # ------------------------------------------------------------------ the noise-adaptive budget

    def lipschitz_budget_at(self, t: float) -> float:
        r"""The declared budget $B(t) = \min(\kappa/\sigma_t, L_{\max})$ (``lipschitz_kappa`` set), else
        the uniform $L_{\max}$. Non-increasing in $t$."""
        if self.lipschitz_kappa is None:
            return self.lipschitz_budget
        s = float(self.schedule.sigma(torch.tensor(float(t), dtype=torch.float64)))
        return self.lipschitz_budget if s <= 0 else min(self.lipschitz_kappa / s, self.lipschitz_budget)

    def gain_scale(self, t: Tensor) -> Tensor:
        r"""$r(t) = (B(t) - a_{\max} - c_{\max}) / (L_{\max} - a_{\max} - c_{\max}) \in (0, 1]$ (float64),
        the factor by which the deep path's output gain shrinks at noise level $t$ so that the
        whole network stays within $B(t)$. Non-increasing in $t$."""
        t64 = t.detach().to(torch.float64)
        s = self.schedule.sigma(t64)
        budget = torch.clamp(self.lipschitz_kappa / torch.clamp(s, min=1e-300), max=self.lipschitz_budget)
        fixed = self.skip_max + self.gaussian_skip_max
        return torch.clamp((budget - fixed) / (self.lipschitz_budget - fixed), max=1.0)

    def deep_lipschitz(self) -> float:
        """The certified, size-independent bound of the deep path $F$ (before the output gain), cached
        with the weights (computed by the same registered rule as :meth:`certified_lipschitz`)."""
        key = self._weights_key()
        cached = getattr(self, "_deep_cache", None)
        if cached is None or cached[0] != key:
            f = self.downsampling_factor
            lipschitz_bound(self, (self.in_channels, 2 * f, 2 * f), size_independent=True)  # sets _deep_cache
            cached = self._deep_cache
        return cached[1]

    def certified_lipschitz_at(self, t: float) -> float:
        r"""A certified bound of $x \mapsto \varepsilon_\theta(x, t', c)$ valid for **every** $t' \ge t$
        (and every condition), from the actual weights:
        $\operatorname{gain}\cdot\min(1, r(t)(1 + 10^{-6}))\cdot\operatorname{Lip}(F) + a_{\max} + c_{\max}$,
        rounded up.

        $r$ is non-increasing, so the value at the left end of a step bounds the whole step. The
        forward pass multiplies by $\mathrm{fl}_{32}(\mathrm{gain}\cdot\mathrm{fl}_{32}(r(t_{32})))$: the
        float32 roundings of $t$, of $r$ and of the product change it by at most $2.5\cdot 10^{-7}$
        relative ($r$'s slope amplifies the rounding of $t$ by at most
        $\kappa/(\kappa - a_{\max} - c_{\max})$), and $r \le 1$ is clamped, so the factor
        $\min(1, r(t)(1 + 10^{-6}))$ bounds what runs; the $1 - 10^{-6}$ built into ``gain`` keeps
        the result within $B(t)$.
        Without ``lipschitz_kappa`` this is :meth:`certified_lipschitz` for every $t$.
        """
        if self.lipschitz_kappa is None:
            return self.certified_lipschitz()
        return self.combine_bound(self.deep_lipschitz(), float(t))

    def nonlinear_lipschitz_at(self, t: float) -> float:
        r"""A certified bound, valid for every $t' \ge t$, of $x \mapsto \varepsilon_\theta(x, t', c) - c(t')\,x$:
        everything but the exact Gaussian-data skip (the deep path and the learned skip $a(t)\odot x$),
        plus $10^{-6}$ for the float32 rounding of $c(t)$ and of $t$ in the forward pass. With
        :meth:`gaussian_skip` as the exact linear part, the logarithmic norm bounds expansion and
        contraction separately (``proofs/01``): $\mu(c\,I + J_N) \le c + \|J_N\|$,
        $-\mu(-(c\,I + J_N)) \ge c - \|J_N\|$."""
        if self.parameterization == "denoiser":
            return self._denoiser_bound(self.deep_lipschitz(), float(t), nonlinear=True)
        return sum_bound(product_bound(self.deep_lipschitz(), abs(self._deep_gain_at(float(t)))),
                         self._skip_charge(), 1e-6)

    def gaussian_skip(self, t: Tensor) -> Tensor:
        r"""$c(t) = \sigma_t / (\alpha_t^2 v + \sigma_t^2)$ (float64): the exact $\varepsilon$-predictor's
        slope for Gaussian data of variance $v$ (``data_variance``). Adding $c(t)\,x$ (EDM-style
        preconditioning, Karras et al. 2022) gives the network the right answer at high noise, where
        every error is amplified by $\varsigma$ in the flow; the network learns the residual."""
        t64 = t.detach().to(torch.float64)
        a = self.schedule.alpha(t64)
        s = self.schedule.sigma(t64)
        return s / (a * a * float(self.data_variance) + s * s)

    # ------------------------------------------------------------------ Lipschitz

    def padded_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
        c, h, w = (int(v) for v in input_shape)
        f = self.downsampling_factor
        return (c, h + (-h) % f, w + (-w) % f)

    def lipschitz_terms(self, input_shape: Sequence[int], bound: Any, structural: bool = False) -> tuple[float, tuple]:
        """The bound in $x$ of the deep path $F$ (before the output gain, which :meth:`combine_bound`
        applies) composed from sub-layer bounds ``bound(module, shape, name) -> (L, out_shape)``.

        Zero-padding and cropping have norm 1; pooling/upsampling/activations/convs are bounded by
        their rules; the U-Net skip concatenation of two maps of the same input by
        $\\sqrt{L_1^2 + L_2^2}$. ``structural=True`` charges every conv its cap and every $|\\alpha|$ its max.
        """
        c, h, w = (int(v) for v in input_shape)
        shape: tuple = self.padded_shape(input_shape)

        def sub(mod: nn.Module, s: tuple, name: str) -> tuple[float, tuple]:
            if isinstance(mod, ResBlock):
                if structural:
                    return mod.lipschitz_terms(s, lambda mm, ss, nn_: bound(mm, ss, f"{name}.{nn_}"), structural=True)
            return bound(mod, s, name)

        lip, shape = sub(self.in_conv, shape, "in_conv")
        skips = []
        for lvl, blocks in enumerate(self.down):
            for b, blk in enumerate(blocks):
                lb, shape = sub(blk, shape, f"down.{lvl}.{b}")
                lip = product_bound(lip, lb)
            if lvl < self.num_levels - 1:
                skips.append((lip, shape))
                lp, shape = sub(self.pool, shape, f"down.{lvl}.pool")
                lip = product_bound(lip, lp)
        lm, shape = sub(self.mid, shape, "mid")
        lip = product_bound(lip, lm)
        for i, blocks in enumerate(self.up):
            lvl = self.num_levels - 2 - i
            lu, shape = sub(self.upsample, shape, f"up.{i}.upsample")
            lip = product_bound(lip, lu)
            ls, sshape = skips[lvl]
            lip = concat_bound(lip, ls)
            shape = (shape[0] + sshape[0], shape[1], shape[2])
            for b, blk in enumerate(blocks):
                lb, shape = sub(blk, shape, f"up.{i}.{b}")
                lip = product_bound(lip, lb)
        la, shape = sub(self.out_act, shape, "out_act")
        lo, shape = sub(self.out_conv, shape, "out_conv")
        lip = product_bound(lip, la, lo)
        return lip, (c, h, w)

    def combine_bound(self, deep: float, t: Optional[float] = None) -> float:
        r"""The bound of $\varepsilon_\theta$ from the deep path's bound ``deep``: the output gain (at $t$,
        valid for every $t' \ge t$, or its sup over $t$ when ``t`` is ``None``) times ``deep``, plus
        the linear skips $a_{\max} + c_{\max}$ (sum rule), rounded up."""
        if self.parameterization == "denoiser":
            return self._denoiser_bound(deep, t)
        # eps = gain * r(t) * F(x) + a(t) * x with |a| <= skip_max (a diagonal map): sum rule,
        # + c(t) x with 0 <= c(t) <= gaussian_skip_max for every t (proof in gaussian_skip_sup)
        return sum_bound(product_bound(deep, abs(self._deep_gain_at(t))), self._skip_charge(), self.gaussian_skip_max)

    def _denoiser_bound(self, deep: float, t: Optional[float], nonlinear: bool = False) -> float:
        r"""Denoiser parameterisation: $L(t) = w(t)(1 + \alpha_t\,\mathrm{Lip}(D))$, $\mathrm{Lip}(D) \le
        \mathrm{gain}\cdot\mathrm{Lip}(F) + d_{\max} + b_{\max}$ (sum rule), valid for every $t' \ge t$ ($w$ and
        $\alpha$ do not increase); $t = $ ``None`` gives the sup ($t = 0$). The float32 coefficients
        $w$ and $w\alpha$ differ from their float64 values by less than $2.5\cdot10^{-7}$ relative (the
        rounding of $t$ enters through $\sigma$'s logarithmic slope, at most 1): each is charged
        $(1 + 10^{-6})$. ``nonlinear=True`` bounds everything but the exact Gaussian-data skip
        (:meth:`nonlinear_lipschitz_at`)."""
        tt = torch.tensor(0.0 if t is None else float(t), dtype=torch.float64)
        w, a = (float(v) for v in self._denoiser_coefficients(tt))
        w_up, wa_up = w * (1.0 + 1e-6), w * a * (1.0 + 1e-6) * (1.0 + 1e-6)
        deep_part = product_bound(deep, abs(float(self.gain.detach().to(torch.float64))))
        # with spectral_bands, K_t is part of the exact linear part w(I - alpha K_t) (band_linear_norm);
        # only its rounding is charged to D
        lip_d = sum_bound(deep_part, self.wiener_max, self._skip_charge(), self.band_charge)
        if not nonlinear:
            linear = w_up if self.bands is None else self.band_linear_norm(t)
            return sum_bound(linear, product_bound(wa_up, lip_d))
        # the exact linear part is w(t) x (linear_part_integral); w's float32 rounding costs 1e-6 w
        return sum_bound(product_bound(wa_up, lip_d), 1e-6 * w_up)

    def band_linear_norm(self, t: Optional[float]) -> float:
        r"""A bound, valid for every $t' \ge t$ ($t = $ ``None``: every $t$), of the norm of the band skip's
        exact linear part as it runs: $w(I - \alpha K_t)$ has eigenvalues $w\sigma^2/(\alpha^2 P_j + \sigma^2)$
        (their convex combinations), largest at the smallest variance, whose sup over $t' \ge t$ is
        :func:`band_linear_sup`; the mixed skip widens the range by $\epsilon w$ (``MIX_SLACK``), and the
        float32 $w$ and $w\alpha$ (each within $10^{-6}$ relative) add $3\cdot10^{-6} w$. The rounding of $t$
        is covered by taking the sup from $\sigma_t(1 - 10^{-6})$ on (``proofs/05`` item 10)."""
        tt = torch.tensor(0.0 if t is None else float(t), dtype=torch.float64)
        w = float(self._denoiser_coefficients(tt)[0])
        s_lo = float(self.schedule.sigma(tt)) * (1.0 - 1e-6)
        eps = MIX_SLACK if self.band_mix else 0.0
        sup = band_linear_sup(min(all_band_variances(self.bands)), s_lo, self.sigma_cap)
        return sum_bound(sup, product_bound(w, eps + 3e-6))

    def linear_part_integral(self, s0: float, s1: float) -> tuple[float, float]:
        r"""Enclosure $[\underline I, \overline I]$ of $\int_{\varsigma_0}^{\varsigma_1} s(\varsigma)\,d\varsigma$, where $s\,\bar x$
        is the exact linear part of the drift in $\bar x$ (Theorem 1, tight form; ``proofs/01``).

        ε-parameterisation with ``data_variance`` $v$: $s = \alpha c(t) = \varsigma/(v + \varsigma^2)$, integral
        $\tfrac12\log\frac{v+\varsigma_1^2}{v+\varsigma_0^2}$. Denoiser parameterisation: $s = \alpha w = 1/\varsigma$ where
        $\sigma \ge \sigma_c$ (integral $\log(\varsigma_1/\varsigma_0)$) and $\alpha/\sigma_c$ below (integral
        $(\operatorname{asinh}\varsigma_1 - \operatorname{asinh}\varsigma_0)/\sigma_c$).

        Raises:
            ValueError: the model has no exact linear part (ε-parameterisation without ``data_variance``).
        """
        lo_r, hi_r = 1.0 - 2.0**-40, 1.0 + 2.0**-40
        if self.bands is not None:
            return self._band_linear_integral(s0, s1, lo_r, hi_r)
        if self.parameterization == "denoiser":
            total_lo = total_hi = 0.0
            below, above = self._split_at_cap(s0, s1)
            if below is not None:
                v = (math.asinh(below[1]) - math.asinh(below[0])) / self.sigma_cap
                total_lo, total_hi = total_lo + v * lo_r, total_hi + v * hi_r
            if above is not None:
                v = math.log(above[1] / above[0])
                total_lo, total_hi = total_lo + v * lo_r, total_hi + v * hi_r
            return total_lo, total_hi
        if self.data_variance is None:
            raise ConfigError("this model has no exact linear part (eps-parameterisation without data_variance)")
        v = float(self.data_variance)
        val = 0.5 * (math.log1p(s1 * s1 / v) - math.log1p(s0 * s0 / v))
        return val * lo_r, val * hi_r

    def _band_linear_integral(self, s0: float, s1: float, lo_r: float, hi_r: float) -> tuple[float, float]:
        r"""The enclosure of :meth:`linear_part_integral` with ``spectral_bands``: the exact linear part
        $w(I - \alpha K_t)$ has eigenvalues in $[\min_j c_j, \max_j c_j]$, $c_j = w\sigma^2/(\alpha^2P_j+\sigma^2)$,
        and $\alpha c_j$ is $\varsigma/(P_j + \varsigma^2)$ where $\sigma \ge \sigma_c$ (decreasing in $P_j$:
        $\int$ is $\tfrac12\log\frac{P + \varsigma_1^2}{P + \varsigma_0^2}$ at $P_{\min}$ for the upper end, at
        $P_{\max}$ for the lower) and in $[0, \alpha/\sigma_c]$ below (upper end $(\operatorname{asinh}\varsigma_1 -
        \operatorname{asinh}\varsigma_0)/\sigma_c$, lower end 0)."""
        variances = all_band_variances(self.bands)
        p_min, p_max = min(variances), max(variances)
        eps = MIX_SLACK if self.band_mix else 0.0  # s^2 + c^2 within eps of 1 (proofs/05 item 19)
        lo = hi = 0.0
        below, above = self._split_at_cap(s0, s1)
        if below is not None:
            v = (math.asinh(below[1]) - math.asinh(below[0])) / self.sigma_cap
            hi += v * hi_r
            lo -= eps * v * hi_r
        if above is not None:
            a, b = above
            hi += (0.5 * (math.log1p(b * b / p_min) - math.log1p(a * a / p_min)) + eps * math.log(b / a)) * hi_r
            lo += 0.5 * (math.log1p(b * b / p_max) - math.log1p(a * a / p_max)) * lo_r - eps * math.log(b / a) * hi_r
        return lo, hi

    def _split_at_cap(self, s0: float, s1: float) -> tuple[Optional[tuple[float, float]], Optional[tuple[float, float]]]:
        r"""$[\varsigma_0, \varsigma_1]$ split at $\varsigma_c$ (where $\sigma = \sigma_c$, the denoiser
        parameterisation's cap): the part below (capped gain) and the part above, each ``None`` where empty."""
        s_c = self.sigma_cap / math.sqrt(1.0 - self.sigma_cap**2)
        below, above = (min(s0, s_c), min(s1, s_c)), (max(s0, s_c), max(s1, s_c))
        return (below if below[1] > below[0] else None), (above if above[1] > above[0] else None)

    def _structural_bound(self) -> float:
        """$S$: the composition with every conv charged its cap and every $|\\alpha|$ its max."""
        shape0 = (self.in_channels, 2 * self.downsampling_factor, 2 * self.downsampling_factor)

        def bound(mod: nn.Module, s: tuple, name: str) -> tuple[float, tuple]:
            if isinstance(mod, LipConv2d):
                return mod.cap, mod.output_shape(s)
            val = lipschitz_bound(mod, s, size_independent=True).value
            with torch.no_grad():
                out = mod(torch.zeros(1, *s))
            return float(val), tuple(out.shape[1:])

        lip, _ = self.lipschitz_terms(shape0, bound, structural=True)
        return float(lip)

    def _receptive_field_radius(self, chans: Sequence[int], blocks_per_level: int) -> int:
        """Conservative sum of every layer's reach on the $x$ path plus the condition encoder's; at least
        the band skip's largest binomial radius (plus the mixing weights' blur of the map)."""
        deep = self._deep_receptive_field_radius(blocks_per_level)
        if self.bands is None:
            return deep
        return max(deep, max(self.bands["orders"]) + (MIX_ORDER if self.band_mix else 0))

    def _deep_receptive_field_radius(self, blocks_per_level: int) -> int:
        """The deep path's and the condition encoder's reach."""

        def conv_reach(k: int, lvl: int) -> int:
            s = 2**lvl
            return (k // 2) * s + (s - 1)

        def resample_reach(lvl: int) -> int:  # between levels lvl and lvl+1
            return 2 ** (lvl + 1)

        r = conv_reach(3, 0)  # in_conv
        last = self.num_levels - 1
        for lvl in range(self.num_levels):
            r += blocks_per_level * 2 * conv_reach(3, lvl)
            if lvl < last:
                r += resample_reach(lvl)
        r += 2 * conv_reach(3, last)  # mid
        for lvl in reversed(range(last)):
            r += resample_reach(lvl) + max(blocks_per_level, 1) * 2 * conv_reach(3, lvl)
        r += conv_reach(3, 0)  # out_conv
        # condition encoder (stem + 2 convs per level + pools); its features enter at every level
        rc = conv_reach(3, 0)
        for lvl in range(self.num_levels):
            if lvl > 0:
                rc += resample_reach(lvl - 1)
            rc += 2 * conv_reach(3, lvl)
        return int(r + rc)


@register_lipschitz_rule(CondUNet)
def _cond_unet_rule(module: CondUNet, input_shape: tuple, ctx: Any) -> tuple[float, tuple]:
    r"""Bound in $x$ only, uniform over all conditions $(y, m)$ and over every $t' \ge$ ``ctx.t``
    (every $t$ when the context has none)."""
    t = getattr(ctx, "t", None)
    deep, shape = module.lipschitz_terms(tuple(input_shape), ctx.bound)
    if ctx.size_independent:
        module._deep_cache = (module._weights_key(), float(deep))
    return module.combine_bound(float(deep), t), shape
