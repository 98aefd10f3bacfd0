r"""The entries ``drift_lipschitz`` and ``flow_bilipschitz``: the drift constants
$\alpha(\varsigma_k)L$ per step and the Grönwall constants $e^{\pm\Lambda}$ of the exact flow
(``proofs/01-flow-stability.md``), with the tighter one-sided log-norm constants when the model
exposes an exact linear part. The formulas are :mod:`injcert.theory.flow`'s.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ..errors import UnsupportedModuleError
from ..model.bands import all_band_variances
from ..theory.flow import LipschitzProfile, discrete_log_constants, gronwall_exponent, gronwall_profile, \
    lognorm_exponents
from .context import CertContext
from .result import FAIL, INFO, PASS, THEOREMS, Property, exp_or_none, fmt_exp

__all__ = ["check", "drift_property", "flow_property", "NOT_CERTIFIED"]

#: The summary prefix of an entry that is reported but not proven (status ``INFO``, never ``PASS``).
NOT_CERTIFIED = "NOT CERTIFIED"


def check(ctx: CertContext) -> list[Property]:
    """``drift_lipschitz`` and ``flow_bilipschitz`` (the per-step numbers into ``ctx.data``)."""
    hs, ls, qs = ctx.margins
    ctx.data.update(grid=ctx.grid, h=hs, drift=ls, margins=qs)
    return [drift_property(ctx), flow_property(ctx)]


def drift_property(ctx: CertContext) -> Property:
    """The drift's Lipschitz constant in $\\bar x$ per step, $\\alpha(\\varsigma_k)L(t_k)$."""
    g, ls = ctx.grid, ctx.margins.drift
    kmax = max(range(len(ls)), key=lambda k: ls[k])
    kmin = min(range(len(ls)), key=lambda k: ls[k])
    what = "alpha(s_k)*L(t_k)" if ctx.adaptive else "alpha(s_k)*L"
    return Property(
        "drift_lipschitz", PASS, "certified", max(ls), None, THEOREMS["flow"],
        f"drift Lipschitz in x̄ per step {what}: max {max(ls):.4g} (step {kmax}), min {min(ls):.4g} (step {kmin})",
        {"per_step": ls, "varsigma_left": g[:-1],
         "note": "alpha(s) = 1/sqrt(1+s^2) and L(t) do not increase, so the left end bounds the drift over "
                 "[s_k, s_{k+1}]"},
    )


def lognorm(model: Any, schedule: Any, s_max: float) -> Optional[dict[str, Any]]:
    """The tight, one-sided flow constants when the model exposes an exact linear part."""
    rest = getattr(model, "nonlinear_lipschitz_at", None)
    integral = getattr(model, "linear_part_integral", None)
    if not callable(rest) or not callable(integral):
        return None
    try:
        prof = LipschitzProfile(rest, float(rest(0.0)), "nonlinear part")
        lo, hi = lognorm_exponents(prof, integral, schedule, s_max)
    except (UnsupportedModuleError, ValueError):
        return None
    bands = getattr(model, "bands", None)
    if bands is not None:
        var = all_band_variances(bands)
        mixed = " and the restorer residual's, mixed by the condition" if "residual_variances" in bands else ""
        what = (f"w(t)(I - alpha K_t) with the spectral band skip{mixed} (orders {bands['orders']}, "
                f"variances {min(var):.4g}..{max(var):.4g})")
    elif getattr(model, "parameterization", "eps") == "denoiser":
        what = "w(t) x of the denoiser parameterisation"
    else:
        what = f"the Gaussian-data skip (v = {getattr(model, 'data_variance', None)})"
    return {"Lambda_minus": lo, "Lambda_plus": hi, "lower_text": fmt_exp(lo), "upper_text": fmt_exp(hi),
            "linear_part": what,
            "formula": "Lambda+- = int s(varsigma) d varsigma +- int alpha l(t) d varsigma (logarithmic norm)"}


def flow_property(ctx: CertContext) -> Property:
    """Injectivity and the bi-Lipschitz constants $e^{\\pm\\Lambda}$ of the exact flow over $[0, t_{\\max}]$."""
    L, schedule, cfg, g, qs = ctx.L, ctx.schedule, ctx.cfg, ctx.grid, ctx.margins.q
    s_max = float(g[-1])
    if ctx.pointwise:
        return _flow_not_certified(ctx)
    tight = lognorm(ctx.model, schedule, s_max)
    lam = gronwall_profile(L, schedule, s_max)
    t_short = min(float(cfg.short_t_max), float(schedule.t_max))
    s_short = float(schedule.varsigma(t_short))
    lam_short = gronwall_profile(L, schedule, s_short)
    per_step = [gronwall_exponent(L, a, b, schedule) for a, b in zip(g, g[1:])]
    log_lo, log_hi = discrete_log_constants(qs)
    loose = lam > math.log(1e6)
    summary = (
        f"exact flow over [0, {schedule.t_max:g}] is injective and e^-{lam:.4g} <= |Phi x - Phi y|/|x - y| <= e^{lam:.4g}"
        f" = {fmt_exp(lam)}"
    )
    if tight is not None:
        summary += (f"; log-norm (exact linear part): {tight['lower_text']} <= ratio <= {tight['upper_text']}")
    if loose:
        summary += (f" (astronomically loose but proven; tighter certified: [0, {min(cfg.short_t_max, schedule.t_max):g}]"
                    f" gives e^{lam_short:.4g} = {fmt_exp(lam_short)}, per-step max e^{max(per_step):.3g},"
                    f" discrete Euler map prod(1+h_k L_k) = e^{log_hi:.4g})")
    return Property(
        "flow_bilipschitz", PASS if math.isfinite(lam) else FAIL, "certified", lam, None, THEOREMS["flow"], summary,
        {
            "Lambda": lam,
            "upper": exp_or_none(lam),
            "lower": exp_or_none(-lam),
            "upper_text": fmt_exp(lam),
            "lower_text": fmt_exp(-lam),
            "log10_upper": lam / math.log(10.0),
            "varsigma_max": s_max,
            "formula": ("Lambda = sum over 400 geometric pieces of L(t(s_k)) * (asinh s_{k+1} - asinh s_k), rounded up"
                        if isinstance(L, LipschitzProfile) else "Lambda = L * asinh(varsigma_max), rounded up"),
            "loose": loose,
            "short_range": {"t_max": t_short, "varsigma_max": s_short,
                            "Lambda": lam_short, "upper_text": fmt_exp(lam_short)},
            "per_step_Lambda": per_step,
            "lognorm": tight,
            "discrete_euler": {"log_lower": log_lo, "log_upper": log_hi,
                               "lower_text": fmt_exp(log_lo), "upper_text": fmt_exp(log_hi),
                               "certified_injective": bool(max(qs) < 1.0)},
        },
    )


def _flow_not_certified(ctx: CertContext) -> Property:
    r"""``flow_bilipschitz`` of a user model: its bounds hold at the grid times only, and the exact flow
    evaluates the network at every $t$, so the Grönwall constants are not certified (``INFO``).

    With a declared uniform budget $B$ (checked at the grid times by ``lipschitz_bound``) the constants
    $e^{\pm B\operatorname{asinh}\varsigma_{\max}}$ are reported, conditional on that declaration."""
    s_max = float(ctx.grid[-1])
    budget = ctx.info.get("lipschitz_budget")
    details: dict[str, Any] = {"certified": False, "pointwise": True, "varsigma_max": s_max,
                               "reason": "the Lipschitz bound of a user model is certified at the grid times only; "
                                         "the exact flow evaluates the network at every t in [0, t_max]"}
    if budget is not None and math.isfinite(float(budget)):
        lam = gronwall_exponent(float(budget), 0.0, s_max)
        details.update(conditional_on_budget=float(budget), Lambda=lam, upper_text=fmt_exp(lam),
                       lower_text=fmt_exp(-lam))
        return Property("flow_bilipschitz", INFO, "certified", lam, None, THEOREMS["flow"],
                        f"{NOT_CERTIFIED}: exact flow over [0, {ctx.schedule.t_max:g}]: IF L(t) <= the declared "
                        f"budget {float(budget):.4g} for every t (checked at the grid times only), then "
                        f"e^-{lam:.4g} <= ratio <= e^{lam:.4g} = {fmt_exp(lam)}", details)
    return Property("flow_bilipschitz", INFO, "certified", None, None, THEOREMS["flow"],
                    f"{NOT_CERTIFIED}: the exact (continuous) flow; the bounds of a user model hold at the grid "
                    "times only (declare ScoreModel(lipschitz_budget=B) for constants conditional on B); the "
                    "integrator entries below are about the discrete map, evaluated at those times", details)
