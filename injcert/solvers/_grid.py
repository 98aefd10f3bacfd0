r"""Time grids in $\varsigma = \sigma_t/\alpha_t$ for the probability-flow ODE."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..model.schedule import VPSchedule

__all__ = ["GRIDS", "make_grid"]

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
        ValueError: ``steps < 1``, an unknown ``kind`` or ``t_min`` outside $(0, t_{\max})$.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r} of type {type(steps).__name__}")
    t_max = float(schedule.t_max)
    if t_end is not None:
        if not (0.0 < float(t_end) <= t_max):
            raise ValueError(f"t_end must lie in (0, t_max={t_max}], got {t_end!r}")
        t_max = float(t_end)
        t_min = min(float(t_min), 0.5 * t_max)
    s_max = float(schedule.varsigma(t_max))
    if kind == "geometric":
        if not (0.0 < float(t_min) < t_max):
            raise ValueError(f"t_min must lie in (0, t_max={t_max}), got {t_min!r}")
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
        raise ValueError(f"unknown grid kind {kind!r}; choices: {list(GRIDS)}")
    grid[-1] = s_max
    return grid
