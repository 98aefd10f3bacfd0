r"""The integrator entries: ``integrator`` (injectivity of the certified integrator: margins
$h_kL_k<1$ of the Euler steps, ``proofs/02-discrete-injectivity.md``, or the algebraic bijection
of the reversible scheme, ``proofs/03-bit-exact-reversibility.md``) and the measured round trips
``round_trip_reversible``, ``round_trip_fixed_point`` (against its certified a-posteriori bound)
and ``round_trip_ddim`` (naive inversion, uncertified, for comparison).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ..errors import NonConvergenceError
from ..theory.flow import discrete_log_constants, fixed_point_error_bound, step_margins
from .context import CertContext
from .numerics import ddim_decode, model_dtype, norms, round_trip
from .result import FAIL, FLOAT64_TOLERANCE, INFO, PASS, THEOREMS, Property, fmt_exp

__all__ = ["check", "round_trips", "FIXED_POINT_TOL"]

#: Relative per-step tolerance of the fixed-point inverse in the round-trip check (its certified
#: a-posteriori bound, not this target, is what the measured error is compared to).
FIXED_POINT_TOL = 1e-7


def check(ctx: CertContext) -> list[Property]:
    """``integrator``: margins $h_kL_k<1$ (Euler) or algebraic bijectivity (reversible)."""
    qs = ctx.margins.q
    qmax = max(qs)
    worst = int(max(range(len(qs)), key=lambda k: qs[k]))
    log_lo, log_hi = discrete_log_constants(qs)
    margins = {"max": qmax, "worst_step": worst, "per_step": qs, "steps_needed": ctx.steps_needed,
               "discrete_lower_text": fmt_exp(log_lo), "discrete_upper_text": fmt_exp(log_hi),
               "discrete_log_lower": log_lo, "discrete_log_upper": log_hi}
    if ctx.cfg.method == "reversible":
        return [_reversible(ctx, margins)]
    return [_euler(ctx, margins, qmax, worst, log_lo, log_hi)]


def _reversible(ctx: CertContext, margins: dict[str, Any]) -> Property:
    x, exact, err, _ = ctx.reversible
    details = {"method": "reversible", "algebraic": "bijection on the int64 lattice (Theorem 3)",
               "measured_bit_exact": exact, "measured_max_abs_error": err, "measured_on": list(x.shape),
               "dtype": str(x.dtype).replace("torch.", ""), "margins_informational": margins}
    if ctx.pointwise:
        details["frac_bits"] = ctx.frac_bits
    overflow = lattice_overflow(ctx, "integrator", details)
    if overflow is not None:
        return overflow
    if exact:
        return Property("integrator", PASS, "certified", 0.0, 0.0, THEOREMS["reversible"],
                        f"reversible: exact bijection (algebraic) and bit-exact round trip measured on "
                        f"{x.shape[0]} input(s) of shape {tuple(x.shape[1:])}", details)
    return Property("integrator", FAIL, "certified", err, 0.0, THEOREMS["reversible"],
                    f"SOUNDNESS FAILURE: reversible round trip is not bit-exact (max |error| {err:.3e})",
                    details, soundness_failure=True)


def _euler(ctx: CertContext, margins: dict[str, Any], qmax: float, worst: int, log_lo: float,
           log_hi: float) -> Property:
    """The Euler-step integrators (``ddim``, ``fixed_point``): every step injective when $h_kL_k<1$."""
    cfg, L, qs = ctx.cfg, ctx.L, ctx.margins.q
    theorem = THEOREMS["discrete"]
    budget = ctx.info.get("lipschitz_budget")
    details = {"method": cfg.method, "margins": margins}
    if cfg.method == "fixed_point" and budget is not None and math.isfinite(budget) and budget < float(L):
        return Property("integrator", FAIL, "certified", qmax, 1.0, theorem,
                        f"fixed_point inverts with the declared budget {budget:.4g} < certified L = {L:.4g}: "
                        "its error bounds are not certified", details)
    if qmax < 1.0:
        extra = ""
        if cfg.method == "fixed_point":
            extra = "; inverse by Banach iteration with a certified error bound (see round_trip_fixed_point)"
        return Property("integrator", PASS, "certified", qmax, 1.0, theorem,
                        f"{cfg.method}: every Euler step is injective, max h_k L_k = {qmax:.4g} < 1 "
                        f"(step {worst}); discrete map bi-Lipschitz in [{fmt_exp(log_lo)}, {fmt_exp(log_hi)}]{extra}",
                        details)
    bad = sum(q >= 1.0 for q in qs)
    needed = ctx.steps_needed
    need = f"; needs >= {needed} {cfg.grid} steps" if needed else ""
    return Property("integrator", FAIL, "certified", qmax, 1.0, theorem,
                    f"{cfg.method}: {bad} of {len(qs)} steps have h_k L_k >= 1 (max {qmax:.4g} at step {worst}, "
                    f"{qmax - 1:.4g} over): injectivity of the discrete map is not certified{need}", details)


def lattice_overflow(ctx: CertContext, name: str, details: dict) -> Optional[Property]:
    """A FAIL for ``name`` when the reversible round trip left the lattice range (not a soundness
    failure: the bijection holds on the lattice, and the code refused to leave it)."""
    why = ctx.reversible.overflow
    if why is None:
        return None
    return Property(name, FAIL, "certified" if name == "integrator" else "empirical", math.inf, 0.0,
                    THEOREMS["reversible"], f"the reversible integration left the int64 lattice: {why}", details)


# ----------------------------------------------------------------------------- measured round trips


def round_trips(ctx: CertContext) -> list[Property]:
    """``round_trip_reversible``, ``round_trip_fixed_point`` and ``round_trip_ddim`` (empirical), in
    that order; the reversible one is read last, since the ``integrator`` check (which may run at the
    same time, in another lane) computes the same round trip."""
    fixed, ddim = _round_trip_fixed_point(ctx), _round_trip_ddim(ctx)
    return [_round_trip_reversible(ctx), fixed, ddim]


def _round_trip_reversible(ctx: CertContext) -> Property:
    cfg = ctx.cfg
    _, exact, err, _ = ctx.reversible
    rd = {"max_abs_error": err, "bit_exact": exact, "dtype": str(model_dtype(ctx.model)).replace("torch.", ""),
          "steps": cfg.steps}
    overflow = lattice_overflow(ctx, "round_trip_reversible", rd)
    if overflow is not None:
        return overflow
    if exact:
        return Property("round_trip_reversible", PASS, "empirical", 0.0, 0.0, THEOREMS["reversible"],
                        f"decode(encode(x)) == x bit for bit on {cfg.samples} held-out patches ({rd['dtype']})", rd)
    return Property("round_trip_reversible", FAIL, "empirical", err, 0.0, THEOREMS["reversible"],
                    f"SOUNDNESS FAILURE: reversible round trip error {err:.3e} != 0", rd, soundness_failure=True)


def growth(qs: list[float]) -> float:
    """$\\prod_k 1/(1 - q_k)$: how much an error of the fixed-point inverse can grow along the steps."""
    out = 1.0
    for q in qs:
        out /= (1.0 - q)
    return out


def _round_trip_fixed_point(ctx: CertContext) -> Property:
    """The fixed-point inverse (run with the field's bound) against its certified error bound."""
    cfg, theorem = ctx.cfg, THEOREMS["discrete"]
    budget = ctx.info.get("lipschitz_budget")
    fp_ok = ctx.adaptive or (budget is not None and math.isfinite(budget) and budget >= ctx.L64)
    # the fixed-point inverse runs with the field's bound: L(t) of the weights, or the declared budget
    qs_b = step_margins(ctx.grid, budget, ctx.schedule)[2] if fp_ok and not ctx.adaptive else ctx.margins64.q
    if not fp_ok:
        return Property("round_trip_fixed_point", INFO, "empirical", None, None, theorem,
                        "not run: the fixed-point inverse needs a finite declared budget >= the certified L",
                        {"budget": budget, "L": ctx.L64})
    if max(qs_b) >= 1.0:
        return Property("round_trip_fixed_point", INFO, "empirical", None, None, theorem,
                        f"not certified at {cfg.steps} steps: max h_k L_k = {max(qs_b):.4g} >= 1 "
                        "(the fixed-point inverse would raise NonConvergenceError)", {"max_margin": max(qs_b)})
    held = ctx.heldout
    kf = min(held.x.shape[0], 2)
    xk, condk = held.x[:kf], (held.y[:kf], held.m[:kf])
    try:
        back, enc, dec = round_trip(ctx.model64, xk, condk, ctx.schedule, cfg.steps, "fixed_point", cfg.grid,
                                    tol=FIXED_POINT_TOL)
    except NonConvergenceError as exc:
        return Property("round_trip_fixed_point", INFO, "empirical", None, None, theorem,
                        f"fixed-point inverse did not converge: {str(exc).splitlines()[0]}", {})
    err = float(norms(back - xk).max())
    bound = fixed_point_error_bound(list(dec.error_bounds), qs_b)
    scale = float(norms(enc.x).max()) if enc.x.numel() else 1.0
    allowed = bound + FLOAT64_TOLERANCE * max(1.0, scale) * growth(qs_b)
    fd = {"max_l2_error": err, "certified_bound": bound, "allowed_with_rounding": allowed,
          "per_step_error_bounds": list(dec.error_bounds), "steps": cfg.steps, "samples": kf,
          "iteration_tolerance": FIXED_POINT_TOL}
    if err > allowed:
        return Property("round_trip_fixed_point", FAIL, "empirical", err, bound, theorem,
                        f"SOUNDNESS FAILURE: fixed-point round trip error {err:.3e} exceeds its certified "
                        f"bound {bound:.3e}", fd, soundness_failure=True)
    return Property("round_trip_fixed_point", PASS, "empirical", err, bound, theorem,
                    f"round trip error {err:.3e} <= certified {bound:.3e} (float64)", fd)


def _round_trip_ddim(ctx: CertContext) -> Property:
    """Naive DDIM inversion of the Euler flows of the pairs' first halves: nothing certifies it."""
    pairs = ctx.euler_pairs
    back = ddim_decode(ctx.model64, pairs.fa, pairs.cond, ctx.schedule, ctx.grid)
    derr = float(norms(back - pairs.xa).max())
    return Property("round_trip_ddim", INFO, "empirical", derr, None, THEOREMS["discrete"],
                    f"naive DDIM inversion round trip error {derr:.3e} (uncertified, for comparison)",
                    {"max_l2_error": derr, "steps": ctx.cfg.steps, "samples": pairs.xa.shape[0]})
