"""Euler encode with a certified fixed-point inverse of every step (``proofs/02``)."""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional

import torch
from torch import Tensor

from ..errors import NonConvergenceError
from ._base import Solver, SolverState, _Counter, _steps, register
from ._field import Cond
from ._ddim import euler_encode

__all__ = ["FixedPoint"]


class _Result(NamedTuple):
    x: Tensor
    error_bound: float
    iterations: int


def _fallback_inverse(step_fn: Callable[[Tensor], Tensor], y: Tensor, *, h: float, lipschitz: float,
                      tol: float = 1e-10, max_iter: int = 200) -> _Result:
    # Used only while injcert.theory.flow is unavailable; same contract as its fixed_point_inverse.
    q = h * lipschitz
    if not q < 1:
        raise NonConvergenceError(f"h*L = {q!r} >= 1: the Euler step is not certified injective", iterations=0)
    x = y - h * step_fn(y)
    for k in range(1, max_iter + 1):
        x_new = y - h * step_fn(x)
        bound = q / (1 - q) * float((x_new - x).flatten(1).norm(dim=1).max())
        x = x_new
        if bound <= tol:
            return _Result(x, bound, k)
    raise NonConvergenceError(f"no convergence to {tol:.3g} in {max_iter} iterations (bound {bound:.3g})",
                              error=bound, iterations=max_iter)


def _inverse() -> Callable[..., Any]:
    try:
        from ..theory.flow import fixed_point_inverse
    except ImportError:
        return _fallback_inverse
    return fixed_point_inverse


@register
class FixedPoint(Solver):
    r"""Encode by Euler (DDIM); decode by inverting each Euler step exactly up to a certified bound.

    The step $\bar x_{n+1} = \bar x_n + h_n f(\varsigma_n, \bar x_n)$ is inverted by the fixed-point
    iteration $x \leftarrow \bar x_{n+1} - h_n f(\varsigma_n, x)$, a contraction with factor
    $q = h_n L_n$, $L_n = \alpha(\varsigma_n)\operatorname{Lip}_x\varepsilon_\theta$ (the field's
    ``lipschitz(s)``), with the a-posteriori bound $q/(1-q)\,\|x_k - x_{k-1}\|$ (Banach).

    Arguments:
        tol: the per-step certified error target, relative to $\max(1, \|\bar x_{n+1}\|)$;
            default ``1e-10`` in float64 and ``1e-5`` in float32.
        max_iter: iteration cap per step.

    Raises (from decode):
        NonConvergenceError: $h_n L_n \ge 1$ at some step, or no convergence within ``max_iter``.
        ValueError: the field has no ``lipschitz`` bound.
    """

    name = "fixed_point"

    def __init__(self, tol: Optional[float] = None, max_iter: int = 200) -> None:
        if tol is not None and not tol > 0:
            raise ValueError(f"tol must be positive, got {tol!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        self.tol = tol
        self.max_iter = max_iter

    def _encode(self, field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState:
        return euler_encode(field, state, g, c, progress)

    def _decode(self, field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState:
        lip = getattr(field.field, "lipschitz", None)
        if lip is None:
            raise ValueError(f"fixed_point needs a field with a `lipschitz(s)` bound, got {type(field.field).__name__}")
        inverse = _inverse()
        rtol = self.tol if self.tol is not None else (1e-10 if state.dtype == torch.float64 else 1e-5)
        x = state.x
        bounds: List[float] = []
        total = 0.0
        for n in _steps(g, progress, "decode", reverse=True):
            h = g[n + 1] - g[n]
            L = float(lip(g[n]))
            if not h * L < 1:
                raise NonConvergenceError(
                    f"step {n}: h*L = {h:.4g}*{L:.4g} = {h * L:.4g} >= 1, the Euler step is not certified "
                    "invertible; use more steps", iterations=0)
            tol = rtol * max(1.0, float(x.flatten(1).norm(dim=1).max()))
            s = g[n]
            res = inverse(lambda z, s=s: field(s, z, c), x, h=h, lipschitz=L, tol=tol, max_iter=self.max_iter)
            x = res.x
            bounds.append(float(res.error_bound))
            # the exact inverse step is 1/(1 - hL)-Lipschitz, so earlier errors grow by at most that
            total = total / (1.0 - h * L) + float(res.error_bound)
        out = SolverState(x=x, dtype=state.dtype)
        out.error_bounds = bounds[::-1]
        out.error_bound = total
        return out
