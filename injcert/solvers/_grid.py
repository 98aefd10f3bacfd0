r"""Time grids in $\varsigma = \sigma_t/\alpha_t$ for the probability-flow ODE."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ..errors import ArgumentError, ArgumentTypeError
from ..model.schedule import VPSchedule

__all__ = ["GRIDS", "Grid", "make_grid"]

GRIDS = ("geometric", "uniform")


def make_grid(schedule: VPSchedule, steps: int, kind: str = "geometric", t_min: float = 1e-3,
              t_end: Optional[float] = None) -> Tensor:
    r"""The $\varsigma$ values $0 = \varsigma_0 < \dots < \varsigma_{\text{steps}} = \varsigma(t_{\max})$.

    Arguments:
        schedule: the noise schedule (gives $\varsigma(t)$ and $t_{\max}$).
        steps: number of steps ($\ge 1$); the grid has ``steps + 1`` points.
        kind: ``"geometric"`` (default): $\varsigma_1, \dots, \varsigma_{\text{steps}}$ geometric
            between $\varsigma(t_{\min})$ and $\varsigma(t_{\max})$, with $\varsigma_0 = 0$ (constant
            step ratio, i.e. uniform in $\log\varsigma$, which matches the $1/\varsigma$ stiffness of
            the drift in $\bar x$); ``"uniform"``: uniform in $t$ on $[0, t_{\max}]$.
        t_min: the first nonzero time of the geometric grid (ignored by ``"uniform"``); with
            ``t_end`` it is lowered to ``t_end / 2`` when larger.
        t_end: end the grid at $\varsigma(t_{\text{end}})$ instead of $\varsigma(t_{\max})$ (a trajectory
            that starts or stops at an intermediate noise level: editing, reconstruction from an
            estimate or a noisy observation); ``None`` means $t_{\max}$.

    Returns:
        A float64 tensor of shape ``(steps + 1,)``, strictly increasing.

    Raises:
        ArgumentError: ``steps < 1``, an unknown ``kind`` or ``t_min`` outside $(0, t_{\max})$.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ArgumentError(f"steps must be an int >= 1, got {steps!r} of type {type(steps).__name__}")
    t_max = float(schedule.t_max)
    if t_end is not None:
        if not (0.0 < float(t_end) <= t_max):
            raise ArgumentError(f"t_end must lie in (0, t_max={t_max}], got {t_end!r}")
        t_max = float(t_end)
        t_min = min(float(t_min), 0.5 * t_max)
    s_max = float(schedule.varsigma(t_max))
    if kind == "geometric":
        if not (0.0 < float(t_min) < t_max):
            raise ArgumentError(f"t_min must lie in (0, t_max={t_max}), got {t_min!r}")
        s_min = float(schedule.varsigma(float(t_min)))
        if steps == 1:
            inner = torch.tensor([s_max], dtype=torch.float64)
        else:
            inner = torch.exp(torch.linspace(math.log(s_min), math.log(s_max), steps, dtype=torch.float64))
        grid = torch.cat([torch.zeros(1, dtype=torch.float64), inner])
    elif kind == "uniform":
        t = torch.linspace(0.0, t_max, steps + 1, dtype=torch.float64)
        grid = schedule.varsigma(t).to(torch.float64)
        grid[0] = 0.0
    else:
        raise ArgumentError(f"unknown grid kind {kind!r}; choices: {list(GRIDS)}")
    grid[-1] = s_max
    return grid


@dataclass(frozen=True)
class Grid:
    r"""A $\varsigma$ grid and how it was made: the one value every solver, task and check takes.

    Attributes:
        values: float64, strictly increasing, ``values[0] == 0`` for a grid from :meth:`make`.
        kind: ``"geometric"``, ``"uniform"`` (see :func:`make_grid`) or ``"custom"``.
        t_min: the first nonzero time of a geometric grid (``None`` for a custom one).
        t_end: the time the grid ends at: ``None`` for the schedule's $t_{\max}$, else an
            intermediate noise level (editing, reconstruction from an estimate): the one recipe of
            a grid that ends early.
    """

    values: Tensor
    kind: str = "custom"
    t_min: Optional[float] = None
    t_end: Optional[float] = None

    @classmethod
    def make(cls, schedule: VPSchedule, steps: int, kind: str = "geometric", t_min: float = 1e-3,
             t_end: Optional[float] = None) -> "Grid":
        """The grid of :func:`make_grid` with the same arguments, with its recipe recorded."""
        values = make_grid(schedule, steps, kind, t_min=t_min, t_end=t_end)
        return cls(values, kind, float(t_min) if kind == "geometric" else None,
                   None if t_end is None else float(t_end))

    @classmethod
    def coerce(cls, grid: Union["Grid", Tensor, Sequence[float]]) -> "Grid":
        """A :class:`Grid` from a grid, a 1-D tensor or a sequence of floats, checked.

        Raises:
            ArgumentTypeError: not a grid, tensor or sequence.
            ArgumentError: fewer than 2 points, not 1-D, or not strictly increasing.
        """
        if isinstance(grid, Grid):
            values = grid.values
        elif isinstance(grid, Tensor):
            values = grid
        elif isinstance(grid, (list, tuple)):
            values = torch.tensor([float(v) for v in grid], dtype=torch.float64)
        else:
            raise ArgumentTypeError(f"grid must be a Grid, a 1-D tensor or a list of floats, got {type(grid).__name__}")
        if values.ndim != 1 or values.numel() < 2:
            raise ArgumentError(f"grid must be a 1-D tensor with at least 2 points, got {grid!r}")
        g = [float(v) for v in values.to(torch.float64)]
        if any(not b > a for a, b in zip(g, g[1:])):
            raise ArgumentError("grid must be strictly increasing (encode runs along it, decode against it)")
        if isinstance(grid, Grid):
            return grid
        return cls(values.to(torch.float64))

    @classmethod
    def resolve(cls, schedule: VPSchedule, steps: int, grid: Union[str, "Grid"] = "geometric", t_min: float = 1e-3,
                t_end: Optional[float] = None) -> "Grid":
        """The grid a task runs on: ``grid`` is a kind (``"geometric"``/``"uniform"``, made with ``steps``,
        ``t_min`` and ``t_end``) or a :class:`Grid`, used as is (it must have ``steps`` intervals).

        Raises:
            ArgumentError: an unknown kind, or a :class:`Grid` with another number of steps.
        """
        if isinstance(grid, Grid):
            if grid.steps != steps:
                raise ArgumentError(f"the grid has {grid.steps} steps, but steps={steps!r}")
            return grid
        if not isinstance(grid, str):
            raise ArgumentTypeError(f"grid must be a kind {list(GRIDS)} or a Grid, got {type(grid).__name__}")
        return cls.make(schedule, steps, grid, t_min=t_min, t_end=t_end)

    def points(self) -> List[float]:
        """The grid's values as Python floats."""
        return [float(v) for v in self.values.to(torch.float64)]

    @property
    def steps(self) -> int:
        """Number of intervals."""
        return int(self.values.numel()) - 1

    def __len__(self) -> int:
        return int(self.values.numel())

    def tolist(self) -> List[float]:
        """Same as :meth:`points` (so a :class:`Grid` stands in where a grid tensor was used)."""
        return self.points()

    def __getitem__(self, i: Any) -> Any:
        return self.values[i]
