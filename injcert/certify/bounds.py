r"""The certified Lipschitz bound $L$ of $\varepsilon_\theta$ in $x$ and its comparison with the declared
budget (``proofs/05-compositional-lipschitz.md``): the computation behind the entry ``lipschitz_bound``.

:class:`~injcert.certify.context.CertContext` computes $L$ once through :func:`certified_lipschitz`
(and $L_{64}$ of its float64 copy through :func:`float64_bound`); :mod:`injcert.certify.lipschitz`
reports it. Both bounds come from :func:`~injcert.theory.lipschitz.lipschitz_bound` as imported here.
This module sits below both (it imports neither), so the import graph flows one way.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch
from torch import nn

from ..errors import UnsupportedModuleError
from ..theory.flow import LipschitzProfile
from ..theory.lipschitz import lipschitz_bound
from .numerics import frozen
from .result import FAIL, PASS, THEOREMS, Property

__all__ = ["certified_lipschitz", "float64_bound", "pointwise_lipschitz", "grid_profile"]


def float64_bound(model64_cpu: nn.Module, shape: tuple, fallback: float) -> float:
    """$L_{64}$: the certified bound of the float64 copy (``fallback`` if it has no rule)."""
    try:
        return float(lipschitz_bound(model64_cpu, shape, size_independent=True).value)
    except UnsupportedModuleError:
        return float(fallback)


def certified_lipschitz(model: nn.Module, shape: tuple, budget: Optional[float],
                        grid_t: Optional[list[float]] = None) -> tuple[Property, Any]:
    """The certified, size-independent bound of $\\varepsilon_\\theta$ in $x$ and its comparison with the budget.

    A model with a noise-adaptive budget (``certified_lipschitz_at`` and ``lipschitz_budget_at``,
    ``lipschitz_kappa`` set) is certified per noise level: $L(t_k) \\le B(t_k)$ at every grid time
    ``grid_t``, and the returned bound is a :class:`LipschitzProfile`. Otherwise it is one number.
    Returns ``(property, bound)``; the bound is ``None`` when there is none.
    """
    m = model if next(iter(model.parameters()), torch.empty(0)).device.type == "cpu" else copy.deepcopy(model).cpu()
    theorem = THEOREMS["lipschitz"]
    if getattr(m, "lipschitz_pointwise", False):  # a user model (injcert.ScoreModel): bounds at the grid times
        return pointwise_lipschitz(m, shape, budget, grid_t or [])
    try:
        lb = lipschitz_bound(frozen(m), shape, size_independent=True)
    except UnsupportedModuleError as exc:
        return Property("lipschitz_bound", FAIL, "certified", None, budget, theorem,
                        f"no certified bound: {str(exc).splitlines()[0]}", {"error": str(exc)}), None
    L = float(lb.value)
    layers = [{"name": r.name or "<root>", "type": r.type, "bound": float(r.bound)} for r in lb.layers]
    details: dict[str, Any] = {"size_independent": True, "input_shape": list(shape), "layers": layers,
                               "uniform_over": "every t in [0, t_max] and every condition (y, m)"}
    if not math.isfinite(L):
        return Property("lipschitz_bound", FAIL, "certified", None, budget, theorem,
                        "the certified bound is not finite", details), None
    adaptive = getattr(m, "lipschitz_kappa", None) is not None and callable(getattr(m, "certified_lipschitz_at", None))
    if adaptive and grid_t:
        return _adaptive(m, L, budget, grid_t, details)
    return _uniform(L, budget, details), L


def _uniform(L: float, budget: Optional[float], details: dict[str, Any]) -> Property:
    """One number $L$ against the declared budget (if any)."""
    theorem = THEOREMS["lipschitz"]
    if budget is None:
        return Property("lipschitz_bound", PASS, "certified", L, None, theorem,
                        f"L = {L:.6g} (certified, every input size; the model declares no budget)", details)
    if not math.isfinite(budget) or L <= budget:
        slack = "" if not math.isfinite(budget) else f", {100 * (1 - L / budget):.3g}% below"
        return Property("lipschitz_bound", PASS, "certified", L, budget, theorem,
                        f"L = {L:.6g} <= declared budget {budget:.6g}{slack}", details)
    return Property("lipschitz_bound", FAIL, "certified", L, budget, theorem,
                    f"L = {L:.6g} EXCEEDS the declared budget {budget:.6g} by {L - budget:.4g} "
                    f"({100 * (L / budget - 1):.3g}%)", details)


def _adaptive(m: nn.Module, L: float, budget: Optional[float], grid_t: list[float],
              details: dict[str, Any]) -> tuple[Property, LipschitzProfile]:
    """$L(t_k) \\le B(t_k)$ at every grid time; the bound is the profile $t \\mapsto L(t)$."""
    theorem = THEOREMS["lipschitz"]
    rows = []
    for t in grid_t:
        lt, bt = float(m.certified_lipschitz_at(t)), float(m.lipschitz_budget_at(t))
        rows.append({"t": float(t), "certified": lt, "budget": bt})
    details.update(uniform_over="every condition (y, m) and every t' >= t (non-increasing in t)",
                   per_t=rows, kappa=float(m.lipschitz_kappa), cap=budget)
    over = [r for r in rows if r["certified"] > r["budget"]]
    profile = LipschitzProfile(m.certified_lipschitz_at, L)
    if over or (budget is not None and L > budget):
        worst = max(over, key=lambda r: r["certified"] / r["budget"]) if over else {"t": 0.0, "certified": L,
                                                                                   "budget": budget}
        return Property("lipschitz_bound", FAIL, "certified", worst["certified"], worst["budget"], theorem,
                        f"L(t) = {worst['certified']:.6g} EXCEEDS the budget B(t) = {worst['budget']:.6g} at "
                        f"t = {worst['t']:.4g}", details), profile
    ratio = max(r["certified"] / r["budget"] for r in rows)
    return Property("lipschitz_bound", PASS, "certified", L, budget, theorem,
                    f"L(t) <= B(t) = min({m.lipschitz_kappa:g}/sigma_t, {budget:g}) at all {len(rows)} grid times "
                    f"(at most {100 * ratio:.3g}% of it); L(t_min) = {rows[0]['certified']:.4g}, "
                    f"L(t_max) = {rows[-1]['certified']:.4g}; sup_t L = {L:.6g}", details), profile


# ----------------------------------------------------------------------------- user models (pointwise in t)


def grid_profile(fn: Any, times: list[float], values: list[float], name: str = "L(t) at the grid times"
                 ) -> LipschitzProfile:
    """A profile from bounds that hold at their own ``t`` only (:class:`injcert.ScoreModel`).

    Its value at ``t`` is ``max(fn(t), every grid value at a grid time >= t)``: a bound at ``t`` itself and
    at every *grid* time after it — non-increasing on the grid, so an Euler step $[t_k, t_{k+1}]$ is charged
    both the times it is evaluated at (encode at $t_k$, decode at $t_{k+1}$). It is **not** a bound between
    grid times, so it must not be integrated (Grönwall): the certificate does not do that for it.
    """
    known = {float(t): float(v) for t, v in zip(times, values)}
    order = sorted(known)

    def at(t: float) -> float:
        t = float(t)
        tail = [known[u] for u in order if u >= t]
        here = known[t] if t in known else float(fn(t))
        return max([here] + tail)

    return LipschitzProfile(at, max(values), name)


def pointwise_lipschitz(m: nn.Module, shape: tuple, budget: Optional[float],
                        times: list[float]) -> tuple[Property, Any]:
    """``lipschitz_bound`` of a model whose bound holds pointwise in ``t``: $L(t_k)$ at every grid time
    (both ends of every step), each against the declared budget when there is one."""
    theorem = THEOREMS["lipschitz"]
    rows = []
    try:
        for t in times:
            rows.append({"t": float(t), "certified": float(m.certified_lipschitz_at(float(t), shape))})
    except UnsupportedModuleError as exc:
        return Property("lipschitz_bound", FAIL, "certified", None, budget, theorem,
                        f"no certified bound: {str(exc).splitlines()[0]}", {"error": str(exc)}), None
    values = [r["certified"] for r in rows]
    details: dict[str, Any] = {
        "size_independent": True, "input_shape": list(shape), "layers": [], "per_t": rows, "pointwise": True,
        "uniform_over": "every condition (y, m) and input size, at each grid time only (the bound of a user "
                        "model is pointwise in t: nothing is certified between grid times)"}
    if not values or not all(math.isfinite(v) for v in values):
        return Property("lipschitz_bound", FAIL, "certified", None, budget, theorem,
                        "the certified bound is not finite at some grid time", details), None
    sup = max(values)
    profile = grid_profile(lambda t: m.certified_lipschitz_at(t, shape), [r["t"] for r in rows], values)
    kmax = values.index(sup)
    where = (f"at the {len(rows)} grid times where the integrators evaluate the network: max {sup:.6g} "
             f"(t = {rows[kmax]['t']:.4g}), min {min(values):.6g}")
    if budget is not None:
        over = [r for r in rows if r["certified"] > budget]
        details["budget"] = budget
        if over:
            worst = max(over, key=lambda r: r["certified"])
            return Property("lipschitz_bound", FAIL, "certified", worst["certified"], budget, theorem,
                            f"L(t) = {worst['certified']:.6g} EXCEEDS the declared budget {budget:.6g} at "
                            f"t = {worst['t']:.4g} ({len(over)} of {len(rows)} grid times)", details), profile
        return Property("lipschitz_bound", PASS, "certified", sup, budget, theorem,
                        f"L(t_k) <= declared budget {budget:.6g} {where}", details), profile
    return Property("lipschitz_bound", PASS, "certified", sup, None, theorem,
                    f"L(t_k) certified {where} (pointwise in t)", details), profile
