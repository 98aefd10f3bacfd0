r"""Variance-preserving noise schedules.

Conventions (``docs/design.md``): $x_t = \alpha_t x_0 + \sigma_t \varepsilon$ with
$\alpha_t^2 + \sigma_t^2 = 1$, $t \in [0, t_{\max}]$, $t_{\max} < 1$. The probability-flow ODE is
written in the coordinates $\bar x = x/\alpha_t$, $\varsigma = \sigma_t/\alpha_t$, where
$d\bar x/d\varsigma = \varepsilon_\theta(\alpha \bar x, t(\varsigma), c)$ and an Euler step in
$\varsigma$ is exactly a DDIM step (Song, Meng, Ermon 2021, eq. 14).

Schedules are objects: each gives $\alpha$, $\sigma$, $\varsigma$ and the inverse map
$t(\varsigma)$, and serialises to a small JSON-able dict.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Union

import torch

from ..errors import ConfigError

__all__ = ["VPSchedule", "CosineSchedule", "LinearSchedule", "get_schedule", "SCHEDULES"]

TensorOrFloat = Union[torch.Tensor, float]


def _as_tensor(t: TensorOrFloat) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t if t.is_floating_point() else t.double()
    return torch.tensor(float(t), dtype=torch.float64)


class VPSchedule(ABC):
    """A variance-preserving schedule on $t \\in [0, t_{\\max}]$."""

    name: str = "abstract"

    def __init__(self, t_max: float = 0.995) -> None:
        t_max = float(t_max)
        if not (0.0 < t_max < 1.0) or not math.isfinite(t_max):
            raise ConfigError(f"t_max must lie in (0, 1), got {t_max!r}")
        self.t_max = t_max

    @abstractmethod
    def alpha(self, t: TensorOrFloat) -> torch.Tensor:
        """Signal scale $\\alpha_t$."""

    def sigma(self, t: TensorOrFloat) -> torch.Tensor:
        """Noise scale $\\sigma_t = \\sqrt{1 - \\alpha_t^2}$."""
        a = self.alpha(t)
        return torch.sqrt(torch.clamp(1.0 - a * a, min=0.0))

    def varsigma(self, t: TensorOrFloat) -> torch.Tensor:
        """$\\varsigma_t = \\sigma_t / \\alpha_t$ (increasing, $\\varsigma_0 = 0$)."""
        return self.sigma(t) / self.alpha(t)

    @abstractmethod
    def t_of_varsigma(self, s: TensorOrFloat) -> torch.Tensor:
        """Inverse of :meth:`varsigma`."""

    @staticmethod
    def alpha_of_varsigma(s: TensorOrFloat) -> torch.Tensor:
        """$\\alpha = 1/\\sqrt{1 + \\varsigma^2}$, valid for every VP schedule (so a static method)."""
        s = _as_tensor(s)
        return torch.rsqrt(1.0 + s * s)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "t_max": self.t_max}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VPSchedule) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_config().items())))


class CosineSchedule(VPSchedule):
    """$\\alpha_t = \\cos(\\pi t/2)$, $\\sigma_t = \\sin(\\pi t/2)$, so $\\varsigma = \\tan(\\pi t/2)$.

    (Nichol & Dhariwal 2021, without the offset.)
    """

    name = "cosine"

    def alpha(self, t: TensorOrFloat) -> torch.Tensor:
        return torch.cos(_as_tensor(t) * (math.pi / 2))

    def sigma(self, t: TensorOrFloat) -> torch.Tensor:
        return torch.sin(_as_tensor(t) * (math.pi / 2))

    def varsigma(self, t: TensorOrFloat) -> torch.Tensor:
        return torch.tan(_as_tensor(t) * (math.pi / 2))

    def t_of_varsigma(self, s: TensorOrFloat) -> torch.Tensor:
        return torch.atan(_as_tensor(s)) * (2 / math.pi)


class LinearSchedule(VPSchedule):
    """The linear-$\\beta$ VP SDE of Song et al. (2021): $\\beta(t) = \\beta_0 + t(\\beta_1 - \\beta_0)$,
    $\\log \\alpha_t = -\\tfrac14 t^2 (\\beta_1 - \\beta_0) - \\tfrac12 t \\beta_0$.
    """

    name = "linear"

    def __init__(self, t_max: float = 0.995, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        super().__init__(t_max)
        if not (0 <= beta_min < beta_max) or not math.isfinite(beta_max):
            raise ConfigError(f"need 0 <= beta_min < beta_max, got {beta_min!r}, {beta_max!r}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: TensorOrFloat) -> torch.Tensor:
        return torch.exp(self._log_alpha(_as_tensor(t)))

    def varsigma(self, t: TensorOrFloat) -> torch.Tensor:
        # sigma/alpha = sqrt(alpha^-2 - 1) = sqrt(expm1(-2 log alpha)), accurate near t = 0.
        return torch.sqrt(torch.expm1(-2.0 * self._log_alpha(_as_tensor(t))))

    def t_of_varsigma(self, s: TensorOrFloat) -> torch.Tensor:
        s = _as_tensor(s)
        # -log alpha = 0.5*log1p(s^2) = a t^2 + b t with a = (b1-b0)/4, b = b0/2.
        c = 0.5 * torch.log1p(s * s)
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        return 2 * c / (b + torch.sqrt(b * b + 4 * a * c))

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "t_max": self.t_max, "beta_min": self.beta_min, "beta_max": self.beta_max}


SCHEDULES: dict[str, type[VPSchedule]] = {"cosine": CosineSchedule, "linear": LinearSchedule}


def get_schedule(spec: Union[str, dict[str, Any], VPSchedule, None] = None) -> VPSchedule:
    """Build a schedule from a name, a config dict (as from :meth:`VPSchedule.to_config`) or pass one through.

    Raises:
        ConfigError: an unknown name or unknown parameters; the message lists the choices.
    """
    if spec is None:
        return CosineSchedule()
    if isinstance(spec, VPSchedule):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"schedule must be a name, dict or VPSchedule, got {type(spec).__name__}")
    cfg = dict(spec)
    name = cfg.pop("name", "cosine")
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; choices: {sorted(SCHEDULES)}")
    try:
        return SCHEDULES[name](**cfg)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for schedule {name!r}: {exc}") from None
