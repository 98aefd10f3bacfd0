"""torchdiffeq's adaptive dopri5: the accuracy reference (its inverse is approximate)."""

from __future__ import annotations

from typing import List

import torch

from ._base import Solver, SolverState, _Counter, register
from ._field import Cond

__all__ = ["Dopri5"]


@register
class Dopri5(Solver):
    r"""Adaptive Dormand--Prince 5(4) (Dormand & Prince 1980) via ``torchdiffeq.odeint``.

    Only the grid's end points are used. Arguments: ``rtol``, ``atol`` (default ``1e-6``).
    """

    name = "dopri5"

    def __init__(self, rtol: float = 1e-6, atol: float = 1e-6) -> None:
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be positive, got {rtol!r}, {atol!r}")
        self.rtol = float(rtol)
        self.atol = float(atol)

    def _run(self, field: _Counter, x: torch.Tensor, s0: float, s1: float, c: Cond) -> torch.Tensor:
        from torchdiffeq import odeint

        ts = torch.tensor([s0, s1], dtype=torch.float64)
        return odeint(lambda s, z: field(float(s), z, c), x, ts, rtol=self.rtol, atol=self.atol, method="dopri5")[-1]

    def _encode(self, field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState:
        return SolverState(x=self._run(field, state.x, g[0], g[-1], c), dtype=state.dtype)

    def _decode(self, field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState:
        return SolverState(x=self._run(field, state.x, g[-1], g[0], c), dtype=state.dtype)
