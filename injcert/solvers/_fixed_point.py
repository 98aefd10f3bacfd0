"""Euler encode with a certified fixed-point inverse of every step (``proofs/02``)."""

from __future__ import annotations

from typing import List, Optional

import torch

from ..errors import ArgumentError, NonConvergenceError
from ..theory.flow import fixed_point_error_bound, fixed_point_inverse, margin_products
from ._base import Reset, SolverState, register
from ._ddim import _EulerEncode
from ._field import Cond, Field

__all__ = ["FixedPoint"]


@register
class FixedPoint(_EulerEncode):
    r"""Encode by Euler (DDIM); decode by inverting each Euler step exactly up to a certified bound.

    The step $\bar x_{n+1} = \bar x_n + h_n f(\varsigma_n, \bar x_n)$ is inverted by the fixed-point
    iteration $x \leftarrow \bar x_{n+1} - h_n f(\varsigma_n, x)$
    (:func:`~injcert.theory.flow.fixed_point_inverse`), a contraction with factor
    $q = h_n L_n$, $L_n = \alpha(\varsigma_n)\operatorname{Lip}_x\varepsilon_\theta$ (the field's
    ``lipschitz(s)``), with a certified a-posteriori bound. The whole decode's bound is propagated
    by :func:`~injcert.theory.flow.fixed_point_error_bound` (rounded outward).

    Arguments:
        tol: the per-step certified error target, relative to $\max(1, \|\bar x_{n+1}\|)$;
            default ``1e-10`` in float64 and ``1e-5`` in float32.
        max_iter: iteration cap per step.

    Raises (from decode):
        NonConvergenceError: $h_n L_n \ge 1$ at some step, or no convergence within ``max_iter``.
        ArgumentError: the field has no ``lipschitz`` bound.
    """

    name = "fixed_point"

    def __init__(self, tol: Optional[float] = None, max_iter: int = 200) -> None:
        if tol is not None and not tol > 0:
            raise ArgumentError(f"tol must be positive, got {tol!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ArgumentError(f"max_iter must be an int >= 1, got {max_iter!r}")
        self.tol = tol
        self.max_iter = max_iter

    def unstep(self, field: Field, plan: List[float], n: int, state: SolverState, c: Cond,
               reset: Optional[Reset] = None) -> SolverState:
        lip = getattr(field, "lipschitz", None)
        if lip is None:
            raise ArgumentError(f"fixed_point needs a field with a `lipschitz(s)` bound, got {type(field).__name__}")
        h, s = plan[n + 1] - plan[n], plan[n]
        L = float(lip(s))
        q = float(margin_products(h, L))
        if not q < 1:
            raise NonConvergenceError(
                f"step {n}: h*L = {h:.4g}*{L:.4g} = {h * L:.4g} >= 1, the Euler step is not certified "
                "invertible; use more steps", iterations=0)
        x = state.x
        rtol = self.tol if self.tol is not None else (1e-10 if state.dtype == torch.float64 else 1e-5)
        tol = rtol * max(1.0, float(x.flatten(1).norm(dim=1).max()))
        # start from y - h f(s_{n+1}, x_{n+1}) (the drift the previous step last evaluated, close to
        # f(s_n, x_n)) rather than from y: the solution is the same, reached in fewer iterations
        x0 = None if state.carry is None or state.carry.shape != x.shape else x - h * state.carry
        res = fixed_point_inverse(lambda z: field(s, z, c), x, h=h, lipschitz=L, tol=tol, max_iter=self.max_iter,
                                  x0=x0)
        # bounds and margins collected in decode order (n = N-1, ..., 0); finish() puts them in grid order
        return SolverState(x=res.x, dtype=state.dtype, error_bounds=state.error_bounds + [float(res.error_bound)],
                           margins=state.margins + [q], carry=res.last_drift)

    def finish(self, state: SolverState, plan: List[float], direction: str) -> SolverState:
        if direction == "encode":
            return SolverState(x=state.x, dtype=state.dtype)
        bounds, margins = state.error_bounds[::-1], state.margins[::-1]
        out = SolverState(x=state.x, dtype=state.dtype, error_bounds=bounds, margins=margins)
        out.error_bound = fixed_point_error_bound(bounds, margins)
        return out
