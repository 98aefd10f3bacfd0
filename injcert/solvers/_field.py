r"""The probability-flow vector field, behind one uniform callable.

Every integrator takes a *field* ``field(s, xbar, c) -> dxbar/ds`` (the k-diffusion convention of
hiding the network behind one signature, Karras et al. 2022), where ``s`` is $\varsigma$, ``xbar``
is $\bar x = x/\alpha$ and ``c = (y, m)`` or ``None``. In these coordinates

$$\frac{d\bar x}{d\varsigma} = \varepsilon_\theta(\alpha\,\bar x,\ t(\varsigma),\ c),\qquad
\alpha = (1 + \varsigma^2)^{-1/2},$$

and an Euler step in $\varsigma$ is a DDIM step (Song, Meng, Ermon 2021, eq. 14).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Protocol, Tuple, Union

import torch
from torch import Tensor

from ..errors import ArgumentError
from ..model.schedule import VPSchedule

__all__ = ["Field", "Cond", "ProbabilityFlowField", "probability_flow_field", "unit_roundoff"]

Cond = Optional[Tuple[Tensor, Tensor]]


class Field(Protocol):
    """``field(s, xbar, c) -> dxbar/ds``; ``s`` a float (or 0-dim tensor) value of $\\varsigma$."""

    def __call__(self, s: Union[float, Tensor], xbar: Tensor, c: Cond) -> Tensor: ...


class ProbabilityFlowField:
    r"""$f(\varsigma, \bar x, c) = \varepsilon_\theta(\alpha\bar x, t(\varsigma), c)$ for a model.

    The network is evaluated in the dtype of ``xbar``; ``t`` is passed as a tensor of shape ``(N,)``.

    Attributes:
        model: the $\varepsilon$-network, ``model(x, t, y=None, m=None) -> eps``.
        schedule: the VP schedule giving $t(\varsigma)$.
        nfe: number of network evaluations made through this field so far.
    """

    def __init__(self, model: Callable[..., Tensor], schedule: VPSchedule) -> None:
        self.model = model
        self.schedule = schedule
        self.nfe = 0

    def __call__(self, s: Union[float, Tensor], xbar: Tensor, c: Cond = None) -> Tensor:
        s64 = torch.as_tensor(s, dtype=torch.float64).detach().cpu()
        alpha = float(self.schedule.alpha_of_varsigma(s64))
        t = float(self.schedule.t_of_varsigma(s64))
        x = xbar * alpha
        tt = torch.full((xbar.shape[0],), t, dtype=xbar.dtype, device=xbar.device)
        self.nfe += 1
        if c is None:
            return self.model(x, tt)
        y, m = c
        return self.model(x, tt, y=y, m=m)

    def lipschitz(self, s: Union[float, Tensor]) -> float:
        r"""A Lipschitz bound of $\bar x \mapsto f(\varsigma', \bar x, c)$ for every $\varsigma' \ge \varsigma$:
        $\alpha(\varsigma)\cdot L$ with $L$ the model's noise-adaptive ``certified_lipschitz_at(t(s))``
        when it has one, else its ``certified_lipschitz()`` (the bound of its actual weights, never
        above the budget), else ``model.lipschitz_budget``.

        For a model with ``lipschitz_pointwise`` (:class:`injcert.ScoreModel`) the bound is valid at
        $\varsigma$ itself only (not for later $\varsigma'$): callers use it where the field is evaluated.

        Raises:
            ArgumentError: the model has no ``lipschitz_budget`` attribute.
        """
        # the field multiplies xbar by fl(alpha) in the network's dtype: charge alpha (1 + u), u its unit roundoff
        alpha = float(self.schedule.alpha_of_varsigma(torch.as_tensor(s, dtype=torch.float64)))
        alpha = math.nextafter(alpha * (1.0 + unit_roundoff(self.model)), math.inf)
        per_t = getattr(self.model, "certified_lipschitz_at", None)
        if callable(per_t) and getattr(self.model, "lipschitz_pointwise", False):
            # a user model (injcert.ScoreModel): its bound holds at t(s) itself only, which is where every
            # integrator that asks for it (fixed_point's step n, the margins at the left ends) evaluates it
            t = float(self.schedule.t_of_varsigma(torch.as_tensor(s, dtype=torch.float64)))
            return alpha * float(per_t(t))
        if callable(per_t) and getattr(self.model, "lipschitz_kappa", None) is not None:
            # noise-adaptive budget: L(t) of the actual weights, valid for every t' >= t(s)
            t = float(self.schedule.t_of_varsigma(torch.as_tensor(s, dtype=torch.float64)))
            return alpha * float(per_t(t))
        budget = getattr(self.model, "lipschitz_budget", None)
        certified = getattr(self.model, "certified_lipschitz", None)
        if callable(certified):  # a tighter certified bound of the actual weights (never above the budget)
            budget = certified() if budget is None else min(float(budget), float(certified()))
        if budget is None:
            raise ArgumentError(
                f"model of type {type(self.model).__name__} has no `lipschitz_budget`; "
                "the fixed_point inverse needs a certified Lipschitz bound"
            )
        return alpha * float(budget)


def unit_roundoff(model: Any) -> float:
    """The unit roundoff of ``model``'s floating dtype (its first floating parameter; float32 if none):
    the relative error of the field's multiplication by $\\alpha$ in that dtype."""
    params = model.parameters() if callable(getattr(model, "parameters", None)) else ()
    for p in params:
        if p.is_floating_point():
            return float(torch.finfo(p.dtype).eps) / 2.0
    return float(torch.finfo(torch.float32).eps) / 2.0


def probability_flow_field(model: Any, schedule: Optional[VPSchedule] = None) -> ProbabilityFlowField:
    """Wrap ``model`` (signature ``model(x, t, y=None, m=None)``) as a probability-flow field.

    Arguments:
        model: the $\\varepsilon$-prediction network.
        schedule: the VP schedule; defaults to ``model.schedule``.

    Raises:
        ArgumentError: no schedule is given and the model has none.
    """
    if schedule is None:
        schedule = getattr(model, "schedule", None)
        if schedule is None:
            raise ArgumentError(f"model of type {type(model).__name__} has no `schedule`; pass schedule=")
    return ProbabilityFlowField(model, schedule)
