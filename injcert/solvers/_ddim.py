"""Euler in $\\varsigma$ (= DDIM) and its naive reversal (= naive DDIM inversion).

:func:`euler_step` is the one explicit Euler/DDIM step of injcert: the ``ddim`` and
``fixed_point`` solvers step with it, and through :func:`~injcert.solvers.integrate` so do the
certificate's empirical checks and its log-determinant checks.
"""

from __future__ import annotations

from typing import List, Optional

from torch import Tensor

from ._base import Reset, Solver, SolverState, register
from ._field import Cond, Field

__all__ = ["DDIM", "euler_step"]


def euler_step(field: Field, s: float, x: Tensor, h: float, c: Cond) -> Tensor:
    r"""One explicit Euler step in $\varsigma$, $\bar x + h\,f(\varsigma, \bar x, c)$: a DDIM step
    (Song, Meng, Ermon 2021, eq. 13) when $h = \varsigma' - \varsigma$."""
    return x + h * field(s, x, c)


class _EulerEncode(Solver):
    """Encode by explicit Euler at the left end of every step (shared by ``ddim`` and ``fixed_point``)."""

    def step(self, field: Field, plan: List[float], n: int, state: SolverState, c: Cond,
             reset: Optional[Reset] = None) -> SolverState:
        x = euler_step(field, plan[n], state.x, plan[n + 1] - plan[n], c)
        return SolverState(x=x, dtype=state.dtype)


@register
class DDIM(_EulerEncode):
    r"""Explicit Euler in $\varsigma$: $\bar x_{n\pm1} = \bar x_n \pm h_n f(\varsigma_n, \bar x_n)$.

    Decoding is deterministic DDIM sampling (Song, Meng, Ermon 2021, eq. 13); encoding is naive
    DDIM inversion, which evaluates the field at the *known* end of each step and so only
    approximately inverts decoding (first order in the step).
    """

    name = "ddim"

    def unstep(self, field: Field, plan: List[float], n: int, state: SolverState, c: Cond,
               reset: Optional[Reset] = None) -> SolverState:
        x = euler_step(field, plan[n + 1], state.x, -(plan[n + 1] - plan[n]), c)
        return SolverState(x=x, dtype=state.dtype)
