"""Euler encode with a certified fixed-point inverse of every step (``proofs/02``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ArgumentError, NonConvergenceError
from ..theory.flow import fixed_point_error_bound, fixed_point_inverse, margin_products
from ._base import Reset, SolverState, register
from ._ddim import _EulerEncode
from ._field import Cond, Field

__all__ = ["FixedPoint"]


@dataclass(frozen=True)
class _FixedPointState:
    """``fixed_point``'s own state in a decode: the per-step certified error bounds and margins (in
    decode order during the run, grid order once finished), the propagated bound once finished, and
    the last drift evaluated (``carry``: the next step's starting point, within the run only)."""
    error_bounds: Tuple[float, ...] = ()
    margins: Tuple[float, ...] = ()
    error_bound: Optional[float] = None
    carry: Optional[Tensor] = None


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
        own = state.own if isinstance(state.own, _FixedPointState) else _FixedPointState()
        x0 = None if own.carry is None or own.carry.shape != x.shape else x - h * own.carry
        res = fixed_point_inverse(lambda z: field(s, z, c), x, h=h, lipschitz=L, tol=tol, max_iter=self.max_iter,
                                  x0=x0)
        # bounds and margins collected in decode order (n = N-1, ..., 0); finish() puts them in grid order
        own = _FixedPointState(own.error_bounds + (float(res.error_bound),), own.margins + (q,), carry=res.last_drift)
        return SolverState(x=res.x, dtype=state.dtype, own=own)

    def finish(self, state: SolverState, plan: List[float], direction: str) -> SolverState:
        if direction == "encode":
            return SolverState(x=state.x, dtype=state.dtype)
        own = state.own if isinstance(state.own, _FixedPointState) else _FixedPointState()
        bounds, margins = list(own.error_bounds[::-1]), list(own.margins[::-1])
        own = _FixedPointState(tuple(bounds), tuple(margins), fixed_point_error_bound(bounds, margins))
        return SolverState(x=state.x, dtype=state.dtype, own=own)

    def rest(self, own: Any) -> Any:
        """The bounds and margins outlive a step; the last drift does not."""
        return dataclasses.replace(own, carry=None) if isinstance(own, _FixedPointState) else None
