r"""The log-determinant entries (``proofs/06-log-determinants.md``): ``logdet_interval`` (the
certified per-step intervals of $\log|\det(I + h_kJ_k)|$ against the exact values on a small
input), ``logdet_liouville`` (exact vs the trace integral $\sum_k h_k\,\mathrm{tr}\,J_k$) and
``logdet_hutchpp`` (a Hutch++ estimate of that trace integral on a full-size input).

All run the float64 copy along the states of :func:`injcert.solvers.integrate`'s ``ddim`` solver,
the Euler map that is certified.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..errors import InjcertError
from ..solvers import make_grid, probability_flow_field
from ..theory.flow import step_margins
from ..theory.logdet import step_logdet_interval, trace_estimate
from ..theory.rounding import round_down, round_up
from .context import CertContext
from .numerics import dense_jacobian, euler_flow, heldout_patches, random_conditions
from .result import FAIL, FLOAT64_TOLERANCE, INFO, PASS, THEOREMS, Property

__all__ = ["check", "HUTCHPP_SIGMAS"]

#: Number of standard errors beyond which a Hutch++ estimate outside the certified interval is
#: treated as a contradiction (for bounded Rademacher probes this has negligible probability).
HUTCHPP_SIGMAS = 8.0


class Exact(NamedTuple):
    """Per-step exact log-dets and trace terms on the small input, and the certified intervals."""

    d: int
    exact: list[float]
    trace: list[float]
    lo: list[float]
    hi: list[float]


def check(ctx: CertContext) -> list[Property]:
    """``logdet_interval``, ``logdet_liouville`` and ``logdet_hutchpp`` (their arrays into ``ctx.data``)."""
    ex = _exact(ctx)
    ctx.data.update(logdet_exact=ex.exact, logdet_lo=ex.lo, logdet_hi=ex.hi, logdet_trace=ex.trace,
                    logdet_dim=ex.d)
    return [_interval(ctx, ex), _liouville(ctx, ex), _hutchpp(ctx)]


def intervals(hs: list[float], qs: list[float], d: int) -> tuple[list[float], list[float]]:
    """The certified per-step intervals of $\\log|\\det(I + h_kJ_k)|$ in dimension ``d``."""
    lo_k, hi_k = [], []
    for h, q in zip(hs, qs):
        if q < 1.0:
            lo, hi = step_logdet_interval(h, q / h if h > 0 else 0.0, d)
            lo, hi = min(lo, round_down(d * math.log1p(-q))), max(hi, round_up(d * math.log1p(q)))
        else:
            lo, hi = -math.inf, round_up(d * math.log1p(q))
        lo_k.append(lo)
        hi_k.append(hi)
    return lo_k, hi_k


def _exact(ctx: CertContext) -> Exact:
    """Exact per-step values along the Euler trajectory of one held-out patch (+ corruption)."""
    cfg, schedule, g = ctx.cfg, ctx.schedule, ctx.grid
    c, s = ctx.channels, cfg.logdet_size
    d = c * s * s
    hs = [b - a for a, b in zip(g, g[1:])]
    lo_k, hi_k = intervals(hs, ctx.margins64.q, d)  # the constants of model64, whose log-dets are computed
    try:
        x = heldout_patches(1, c, s, cfg.seed + 1, torch.float64, ctx.device)
    except InjcertError:
        x = torch.rand((1, c, s, s), generator=torch.Generator().manual_seed(cfg.seed),
                       dtype=torch.float64).to(ctx.device)
    _, y, m = random_conditions(x, cfg.seed + 1, float(schedule.t_max))
    cond = (y, m)
    field = probability_flow_field(ctx.model64, schedule)
    exact_k, trace_k = [], []
    kept: list = []
    # the states of the integrator that runs; it also leaves R(c) kept for the Jacobians that follow
    euler_flow(ctx.model64, x, cond, schedule, g, keep=kept)
    for a, h, st in zip(g, hs, kept):
        jac = dense_jacobian(lambda z, a=a: field(a, z, cond), st.x)
        eye = torch.eye(d, dtype=jac.dtype, device=jac.device)
        _, la = torch.linalg.slogdet(eye + h * jac)
        exact_k.append(float(la))
        trace_k.append(h * float(torch.diagonal(jac).sum()))
    return Exact(d, exact_k, trace_k, lo_k, hi_k)


def _interval(ctx: CertContext, ex: Exact) -> Property:
    """The exact log|det| of the Euler map (and of every step) inside the certified interval."""
    c, s, d, tol = ctx.channels, ctx.cfg.logdet_size, ex.d, FLOAT64_TOLERANCE
    sum_lo = -math.inf if any(v == -math.inf for v in ex.lo) else round_down(math.fsum(ex.lo))
    sum_hi = round_up(math.fsum(ex.hi))
    exact = math.fsum(ex.exact)
    bad_steps = [k for k, (v, lo, hi) in enumerate(zip(ex.exact, ex.lo, ex.hi))
                 if v < lo - tol * (1 + abs(lo)) or v > hi + tol * (1 + abs(hi))]
    in_sum = sum_lo - tol * (1 + abs(sum_lo) if math.isfinite(sum_lo) else 1) <= exact <= sum_hi + tol * (1 + abs(sum_hi))
    details = {"dim": d, "input_shape": [c, s, s], "exact": exact, "certified_lower": sum_lo,
               "certified_upper": sum_hi, "per_step_exact": ex.exact, "per_step_lower": ex.lo,
               "per_step_upper": ex.hi, "steps_outside": bad_steps,
               "map": "discrete Euler/DDIM encode map, log|det| = sum_k log|det(I + h_k J_k)|"}
    if bad_steps or not in_sum:
        return Property(
            "logdet_interval", FAIL, "certified", exact, sum_hi, THEOREMS["logdet"],
            f"SOUNDNESS FAILURE: exact log|det| {exact:.6g} (d = {d}) outside the certified interval "
            f"[{sum_lo:.6g}, {sum_hi:.6g}] (steps {bad_steps[:5]})", details, soundness_failure=True)
    one_sided = "" if math.isfinite(sum_lo) else " (lower end -inf: some h_k L_k >= 1)"
    return Property(
        "logdet_interval", PASS, "certified", exact, sum_hi, THEOREMS["logdet"],
        f"exact log|det| = {exact:.6g} on a {c}x{s}x{s} input lies in the certified "
        f"[{sum_lo:.6g}, {sum_hi:.6g}]{one_sided}, and so does every step", details)


def _liouville(ctx: CertContext, ex: Exact) -> Property:
    """Liouville: log|det(I + hJ)| - h tr J, certified |.| <= d q^2 / (2 (1 - q)) when q < 1."""
    d, tol = ex.d, FLOAT64_TOLERANCE
    exact, trace_sum = math.fsum(ex.exact), math.fsum(ex.trace)
    diffs = [e - t for e, t in zip(ex.exact, ex.trace)]
    gaps = [round_up(d * q * q / (2 * (1 - q))) if q < 1 else math.inf for q in ctx.margins64.q]
    viol = [k for k, (df, gp) in enumerate(zip(diffs, gaps)) if abs(df) > gp + tol * (1 + abs(df))]
    total_gap = math.fsum(gaps) if all(math.isfinite(v) for v in gaps) else math.inf
    ld = {"trace_integral": trace_sum, "exact": exact, "difference": exact - trace_sum,
          "certified_tolerance": total_gap, "per_step_difference": diffs, "per_step_tolerance": gaps,
          "rule": "|log|det(I+hJ)| - h tr J| <= d q^2 / (2(1-q)), q = h L < 1"}
    if viol:
        return Property(
            "logdet_liouville", FAIL, "certified", exact - trace_sum, total_gap, THEOREMS["logdet"],
            f"SOUNDNESS FAILURE: per-step |log det - h tr J| exceeds d q^2/(2(1-q)) at steps {viol[:5]}",
            ld, soundness_failure=True)
    return Property(
        "logdet_liouville", INFO, "certified", exact - trace_sum, total_gap, THEOREMS["logdet"],
        f"exact {exact:.6g} vs trace integral sum h_k tr J_k = {trace_sum:.6g}: difference "
        f"{exact - trace_sum:.3g} (certified tolerance {total_gap:.3g})", ld)


def _hutchpp_trace(ctx: CertContext) -> tuple[list[float], float, float, list[float]]:
    """Hutch++ on a full-size input along a coarser grid: ``(per-step h_k tr J_k, stderr, bound, grid)``."""
    cfg, schedule, device, c = ctx.cfg, ctx.schedule, ctx.device, ctx.channels
    gen = torch.Generator(device=device.type if device.type != "mps" else "cpu").manual_seed(cfg.seed + 2)
    try:
        xf = heldout_patches(1, c, cfg.patch_size, cfg.seed + 2, torch.float64, device)
    except InjcertError:
        xf = torch.zeros((1, *ctx.shape), dtype=torch.float64, device=device)
    _, yf, mf = random_conditions(xf, cfg.seed + 2, float(schedule.t_max))
    condf = (yf, mf)
    field = probability_flow_field(ctx.model64, schedule)
    gc = make_grid(schedule, min(cfg.steps, cfg.hutchpp_steps), cfg.grid).tolist()
    hc = [b - a for a, b in zip(gc, gc[1:])]
    qc = step_margins(gc, ctx.L64_profile, schedule, alpha_rel=2.0**-53)[2]
    est_k, var = [], 0.0
    keptf: list = []
    euler_flow(ctx.model64, xf, condf, schedule, gc, keep=keptf)
    for a, h, st in zip(gc, hc, keptf):
        est, se = trace_estimate(lambda z, a=a: field(a, z, condf), st.x, "hutchpp", cfg.hutchpp_queries, generator=gen)
        est_k.append(h * float(est[0]))
        var += (h * float(se[0])) ** 2
    dim = c * cfg.patch_size * cfg.patch_size
    cert = round_up(dim * math.fsum(qc))  # |sum h_k tr J_k| <= D sum_k h_k L_k
    return est_k, math.sqrt(var), cert, gc


def _hutchpp(ctx: CertContext) -> Property:
    """Hutch++ estimate of the trace integral, a contradiction if it lies far outside $\\pm D\\sum_k q_k$."""
    cfg, c = ctx.cfg, ctx.channels
    est_k, se_sum, cert, gc = _hutchpp_trace(ctx)
    D = c * cfg.patch_size * cfg.patch_size
    est_sum = math.fsum(est_k)
    outside = max(0.0, abs(est_sum) - cert)
    ctx.data.update(hutchpp_grid=gc, hutchpp_per_step=est_k, hutchpp_se=se_sum, hutchpp_bound=cert, hutchpp_dim=D)
    hd = {"estimate": est_sum, "stderr": se_sum, "dim": D, "input_shape": list(ctx.shape),
          "certified_abs_bound": cert, "queries_per_step": cfg.hutchpp_queries, "per_step": est_k,
          "grid_steps": len(gc) - 1, "rule": "|sum_k h_k tr J_k| <= D sum_k h_k alpha(s_k) L on its own grid",
          "estimator": "Hutch++ (Meyer, Musco, Musco, Woodruff 2021) of sum_k h_k tr J_k"}
    if outside > HUTCHPP_SIGMAS * se_sum + FLOAT64_TOLERANCE * (1 + cert):
        return Property(
            "logdet_hutchpp", FAIL, "empirical", est_sum, cert, THEOREMS["logdet"],
            f"SOUNDNESS FAILURE: Hutch++ trace integral {est_sum:.6g} ± {se_sum:.2g} lies "
            f"{outside / max(se_sum, 1e-300):.3g} standard errors outside the certified ±{cert:.6g}",
            hd, soundness_failure=True)
    return Property(
        "logdet_hutchpp", INFO, "empirical", est_sum, cert, THEOREMS["logdet"],
        f"Hutch++ trace integral on {c}x{cfg.patch_size}x{cfg.patch_size}: {est_sum:.6g} ± {se_sum:.2g} "
        f"(certified |.| <= {cert:.4g})", hd)
