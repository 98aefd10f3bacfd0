r"""The empirical entries: measurements in float64 on held-out patches that can only *refute* a
certified bound — ``lipschitz_empirical`` (a Lipschitz lower bound against $L_{64}$), the round
trips of every integrator (:func:`injcert.certify.integrator.round_trips`),
``injectivity_empirical`` and ``growth_empirical`` (distance ratios of pairs under the discrete
Euler map against $\prod_k(1\mp h_kL_k)$), and, when asked, the round-trip-vs-steps study for the
figure. A refutation beyond :data:`~injcert.certify.result.FLOAT64_TOLERANCE` is a soundness failure.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import NonConvergenceError
from ..solvers import make_grid
from ..theory.flow import discrete_log_constants, step_margins
from ..theory.lipschitz import lipschitz_lower_bound
from . import integrator
from .context import CertContext
from .integrator import FIXED_POINT_TOL
from .numerics import frozen, keep_condition_term, model_dtype, norms, round_trip
from .result import FAIL, FLOAT64_TOLERANCE, PASS, THEOREMS, Property, fmt_exp

__all__ = ["lipschitz_check", "pairs_check", "round_trip_check", "round_trip_study"]


def lipschitz_check(ctx: CertContext) -> list[Property]:
    """``lipschitz_empirical``: a measured lower bound of the Lipschitz constant under the certified one."""
    return [_lipschitz_empirical(ctx)]


def round_trip_check(ctx: CertContext) -> list[Property]:
    """The round trips of every integrator (and the round-trip study when ``cfg.round_trip_study``)."""
    props = integrator.round_trips(ctx)
    if ctx.cfg.round_trip_study:
        ctx.data["round_trip_study"] = round_trip_study(ctx)
    return props


def pairs_check(ctx: CertContext) -> list[Property]:
    """``injectivity_empirical`` and ``growth_empirical`` on the Euler flows of the held-out pairs."""
    return _injectivity_and_growth(ctx)


def _lipschitz_empirical(ctx: CertContext) -> Property:
    """Power iteration + ascent on held-out patches, random t and c: a lower bound of the Lipschitz constant."""
    x, t, y, m = ctx.heldout
    gen = torch.Generator(device=ctx.device.type).manual_seed(ctx.cfg.seed + 3)
    k = min(x.shape[0], 4)
    tk, yk, mk = t[:k], y[:k], m[:k]
    m64 = ctx.model64

    def eps(z: Tensor) -> Tensor:
        return m64(z, tk, yk, mk)

    keep_condition_term(m64, (yk, mk))

    L64 = ctx.L64  # before the measurement, as the checks always ran
    lower = float(lipschitz_lower_bound(eps, x[:k], n_iter=ctx.cfg.lipschitz_iters, ascent_steps=1, generator=gen))
    # the samples' times are >= min(tk): a profile's value there bounds them all
    L_check = float(ctx.L64_profile(float(tk.min()))) if ctx.adaptive else L64
    if ctx.pointwise:  # a user model's bounds hold at their own t: the max over the samples' times
        L_check = max(float(m64.certified_lipschitz_at(float(v), ctx.shape)) for v in tk.tolist())
    ratio = L_check / lower if lower > 0 else math.inf
    ld = {"lower": lower, "upper": L_check, "upper_float32_model": float(ctx.L), "ratio_upper_over_lower": ratio,
          "samples": k, "method": "power iteration on J^T J + gradient ascent (achieved ratio)"}
    ctx.data["lipschitz_lower"] = lower
    if lower > L_check * (1 + FLOAT64_TOLERANCE):
        return Property("lipschitz_empirical", FAIL, "empirical", lower, L_check, THEOREMS["lipschitz"],
                        f"SOUNDNESS FAILURE: measured |J v|/|v| = {lower:.6g} exceeds the certified "
                        f"L = {L_check:.6g} by {100 * (lower / L_check - 1):.3g}%", ld, soundness_failure=True)
    return Property("lipschitz_empirical", PASS, "empirical", lower, L_check, THEOREMS["lipschitz"],
                    f"lower bound {lower:.4g} <= certified {L_check:.4g} (ratio upper/lower {ratio:.3g})", ld)


def _exp_or_inf(v: float) -> float:
    return math.exp(v) if v < 709.0 else math.inf


def _distance_ratios(ctx: CertContext) -> Tensor:
    """|phi(a) - phi(b)| / |a - b| over the pairs (A, A + delta) and (A, B) (distinct inputs only)."""
    p = ctx.euler_pairs
    ratios = [norms(p.fa - p.fd) / norms(p.xa - p.xd).clamp_min(1e-300)]
    if p.fb is not None:
        dab = norms(p.xa - p.xb)
        keep = dab > 0
        ratios.append((norms(p.fa - p.fb) / dab.clamp_min(1e-300))[keep])
    return torch.cat(ratios)


def _injectivity_and_growth(ctx: CertContext) -> list[Property]:
    """``injectivity_empirical`` and ``growth_empirical``: the pairs' distance ratios after the flow
    against the certified constants of the discrete Euler map (float64)."""
    tol, theorem = FLOAT64_TOLERANCE, THEOREMS["discrete"]
    pairs = _distance_ratios(ctx)
    log_lo, log_hi = discrete_log_constants(ctx.margins64.q)
    lower_c = 0.0 if log_lo == -math.inf else math.exp(max(log_lo, -745.0))
    valid = torch.isfinite(pairs)
    rmin = float(pairs[valid].min()) if bool(valid.any()) else math.nan
    rmax = float(pairs[valid].max()) if bool(valid.any()) else math.nan
    ctx.data.update(empirical_ratios=pairs[valid].tolist())
    idet = {"min_ratio": rmin, "max_ratio": rmax, "certified_lower": lower_c, "certified_log_lower": log_lo,
            "certified_log_upper": log_hi, "certified_upper_text": fmt_exp(log_hi),
            "pairs": int(valid.sum()), "perturbation": ctx.cfg.perturbation,
            "map": "Euler/DDIM encode map in x̄ coordinates, float64, same condition within a pair"}
    if log_lo > -math.inf and math.log(max(rmin, 1e-300)) < log_lo + math.log1p(-tol):
        inj = Property("injectivity_empirical", FAIL, "empirical", rmin, lower_c, theorem,
                       f"SOUNDNESS FAILURE: two inputs came closer (ratio {rmin:.4g}) than the certified "
                       f"lower constant {fmt_exp(log_lo)} allows", idet, soundness_failure=True)
    else:
        what = f">= certified {fmt_exp(log_lo)}" if log_lo > -math.inf else "(no certified lower constant: some h_k L_k >= 1)"
        inj = Property("injectivity_empirical", PASS, "empirical", rmin, lower_c, theorem,
                       f"min distance ratio after the flow {rmin:.4g} {what}; {int(valid.sum())} pairs", idet)
    if math.log(max(rmax, 1e-300)) > log_hi + math.log1p(tol):
        grow = Property("growth_empirical", FAIL, "empirical", rmax, _exp_or_inf(log_hi), theorem,
                        f"SOUNDNESS FAILURE: perturbation grew by {rmax:.4g} > certified {fmt_exp(log_hi)}",
                        idet, soundness_failure=True)
    else:
        grow = Property("growth_empirical", PASS, "empirical", rmax, _exp_or_inf(log_hi), theorem,
                        f"max growth {rmax:.4g} <= certified prod(1 + h_k L_k) = {fmt_exp(log_hi)}", idet)
    return [inj, grow]


def round_trip_study(ctx: CertContext) -> dict[str, list]:
    """Round-trip error vs number of steps for each integrator (for the figure), on two held-out patches."""
    cfg, schedule = ctx.cfg, ctx.schedule
    held = ctx.heldout
    x, cond = held.x[:2], (held.y[:2], held.m[:2])
    budget: Any = ctx.L64_profile if ctx.adaptive else ctx.info.get("lipschitz_budget")
    if ctx.pointwise:  # its bounds are known at this grid's times only: no fixed-point run on other grids
        budget = None
    out: dict[str, list] = {"steps": list(cfg.round_trip_steps), "reversible": [], "fixed_point": [], "ddim": []}
    dt = model_dtype(ctx.model)
    fm = frozen(ctx.model)
    m64 = ctx.model64
    for n in cfg.round_trip_steps:
        back, _, _ = round_trip(fm, x.to(dt), (cond[0].to(dt), cond[1].to(dt)), schedule, n, "reversible", cfg.grid)
        out["reversible"].append(float((back.double() - x).abs().max()))
        back, _, _ = round_trip(m64, x, cond, schedule, n, "ddim", cfg.grid)
        out["ddim"].append(float(norms(back - x).max()))
        finite = budget is not None and math.isfinite(float(budget)) and float(budget) > 0
        qs = step_margins(make_grid(schedule, n, cfg.grid).tolist(), budget, schedule)[2] if finite else [2.0]
        out["fixed_point"].append(_fixed_point_error(m64, x, cond, schedule, n, cfg.grid) if max(qs) < 1.0 else None)
    return out


def _fixed_point_error(m64: Any, x: Tensor, cond: Any, schedule: Any, n: int, grid: str) -> Any:
    """The fixed-point round trip error on the first input at ``n`` steps (``None`` if it did not converge)."""
    try:
        back, _, _ = round_trip(m64, x[:1], (cond[0][:1], cond[1][:1]), schedule, n, "fixed_point", grid,
                                tol=FIXED_POINT_TOL)
    except NonConvergenceError:
        return None
    return float(norms(back - x[:1]).max())
