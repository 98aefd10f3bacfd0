"""torchdiffeq's adaptive dopri5: the accuracy reference (its inverse is approximate), and
:func:`flow_map`, the reference flow of the tests and benchmarks."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ._base import Reset, Solver, SolverState, register
from ._field import Cond, Field, probability_flow_field

__all__ = ["Dopri5", "flow_map"]


@register
class Dopri5(Solver):
    r"""Adaptive Dormand--Prince 5(4) (Dormand & Prince 1980) via ``torchdiffeq.odeint``.

    Only the grid's end points are used (one adaptive step for the driver; ``keep`` records the two
    ends). Arguments: ``rtol``, ``atol`` (default ``1e-6``).
    """

    name = "dopri5"

    def __init__(self, rtol: float = 1e-6, atol: float = 1e-6) -> None:
        if not (rtol > 0 and atol > 0):
            raise ArgumentError(f"rtol and atol must be positive, got {rtol!r}, {atol!r}")
        self.rtol = float(rtol)
        self.atol = float(atol)

    def _run(self, field: Field, x: torch.Tensor, s0: float, s1: float, c: Cond) -> torch.Tensor:
        from torchdiffeq import odeint  # imported on use: torchdiffeq is only needed by this solver

        ts = torch.tensor([s0, s1], dtype=torch.float64)
        return odeint(lambda s, z: field(float(s), z, c), x, ts, rtol=self.rtol, atol=self.atol, method="dopri5")[-1]

    def prepare(self, g: List[float]) -> List[float]:
        return [g[0], g[-1]]  # adaptive: one step over the whole grid

    def n_steps(self, plan: List[float], g: List[float]) -> int:
        return 1

    def step(self, field: Field, plan: List[float], n: int, state: SolverState, c: Cond,
             reset: Optional[Reset] = None) -> SolverState:
        return SolverState(x=self._run(field, state.x, plan[0], plan[1], c), dtype=state.dtype)

    def unstep(self, field: Field, plan: List[float], n: int, state: SolverState, c: Cond,
               reset: Optional[Reset] = None) -> SolverState:
        return SolverState(x=self._run(field, state.x, plan[1], plan[0], c), dtype=state.dtype)


def flow_map(model: nn.Module, x: Tensor, t_from: float, t_to: float, *, rtol: float = 1e-10,
             atol: float = 1e-10) -> Tensor:
    r"""The probability-flow map from time ``t_from`` to ``t_to`` in x-space, by torchdiffeq dopri5.

    Integrates $d\bar x/d\varsigma = \varepsilon(\alpha\bar x, t(\varsigma))$ in float64 at tight
    tolerances: the reference solution for convergence tests and benchmarks.
    """
    from torchdiffeq import odeint  # imported on use: torchdiffeq is only needed here and by Dopri5

    field = probability_flow_field(model)
    sched = field.schedule
    s0 = float(sched.varsigma(float(t_from)))
    s1 = float(sched.varsigma(float(t_to)))
    a0 = float(sched.alpha_of_varsigma(s0))
    a1 = float(sched.alpha_of_varsigma(s1))
    xbar = x.to(torch.float64) / a0
    ts = torch.tensor([s0, s1], dtype=torch.float64)
    out = odeint(lambda s, z: field(s, z, None), xbar, ts, rtol=rtol, atol=atol, method="dopri5")[-1]
    return (out * a1).to(x.dtype)
