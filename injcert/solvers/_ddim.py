"""Euler in $\\varsigma$ (= DDIM) and its naive reversal (= naive DDIM inversion)."""

from __future__ import annotations

from typing import List

from ._base import Solver, SolverState, _Counter, _steps, register
from ._field import Cond

__all__ = ["DDIM"]


@register
class DDIM(Solver):
    r"""Explicit Euler in $\varsigma$: $\bar x_{n\pm1} = \bar x_n \pm h_n f(\varsigma_n, \bar x_n)$.

    Decoding is deterministic DDIM sampling (Song, Meng, Ermon 2021, eq. 13); encoding is naive
    DDIM inversion, which evaluates the field at the *known* end of each step and so only
    approximately inverts decoding (first order in the step).
    """

    name = "ddim"

    def _encode(self, field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState:
        return euler_encode(field, state, g, c, progress)

    def _decode(self, field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState:
        x = state.x
        for n in _steps(g, progress, "decode", reverse=True):
            x = x - (g[n + 1] - g[n]) * field(g[n + 1], x, c)
        return SolverState(x=x, dtype=state.dtype)


def euler_encode(field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState:
    """Explicit Euler in varsigma along the grid (a DDIM step each), shared by ``ddim`` and ``fixed_point``."""
    x = state.x
    for n in _steps(g, progress, "encode"):
        x = x + (g[n + 1] - g[n]) * field(g[n], x, c)
    return SolverState(x=x, dtype=state.dtype)
