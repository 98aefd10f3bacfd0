r"""An analytic-score problem: a per-pixel Gaussian mixture with a closed-form $\varepsilon$.

The exact-score reference of ``bench`` (:mod:`injcert.cli.compare`), the benchmarks and the tests;
re-exported by :mod:`injcert.testing` for users' CI. Its reference flow map :func:`flow_map` lives in
:mod:`injcert.solvers` (it integrates the flow); ``injcert.model.analytic.flow_map`` still resolves to it.

Data: every pixel is drawn independently from $p_0 = \sum_k w_k\,\mathcal N(\mu_k, s^2)$ (one
common standard deviation $s$). Under the VP forward process $x_t = \alpha_t x_0 + \sigma_t\varepsilon$,

$$p_t(x) = \sum_k w_k\,\mathcal N(x;\ \alpha_t\mu_k,\ V_t),\qquad V_t = \alpha_t^2 s^2 + \sigma_t^2,$$

and the exact noise prediction is

$$\varepsilon(x, t) = -\sigma_t\,\partial_x\log p_t(x) = \frac{\sigma_t}{V_t}\Big(x - \alpha_t\sum_k r_k(x)\,\mu_k\Big),
\qquad r_k \propto w_k\,e^{-(x-\alpha_t\mu_k)^2/(2V_t)}.$$

**Certified Lipschitz bound.** The map is per pixel, so its Lipschitz constant (in $\ell_2$ over the
whole image) is $\sup|\partial_x\varepsilon|$. With $g_k = (x - \alpha\mu_k)/V$,
$-\partial_x^2\log p_t = 1/V - \operatorname{Var}_r[g] $ and $\operatorname{Var}_r[g] =
\alpha^2\operatorname{Var}_r[\mu]/V^2 \le \alpha^2 D^2/(4V^2)$ (Popoviciu; $D = \max\mu - \min\mu$), so

$$-\frac{\sigma\alpha^2 D^2}{4V^2} \le \partial_x\varepsilon \le \frac{\sigma}{V}.$$

Write $c = 1 - s^2$, $V = s^2 + c\,\sigma^2$ and use $\alpha^2 \le 1$. Over $\sigma\in[0,1]$ (all $t$):
$\sigma/V \le 1/(2s\sqrt c)$ (maximum at $\sigma^2 = s^2/c$, by AM-GM) and
$\sigma/V^2 \le 9/(16\sqrt{3c}\,s^3)$ (maximum at $\sigma^2 = s^2/(3c)$), valid for $s^2 \le 1/2$. Hence

$$\operatorname{Lip}_x\varepsilon(\cdot, t) \le L = \max\Big(\frac{1}{2s\sqrt{1-s^2}},\ \frac{9D^2}{64\sqrt{3(1-s^2)}\,s^3}\Big)
\quad\text{for every } t,$$

which :attr:`AnalyticMixtureScore.lipschitz_budget` returns (times $1 + 10^{-9}$ for rounding).
``tests/test_solvers.py`` checks it against a dense grid of derivatives.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from .schedule import VPSchedule, get_schedule

__all__ = ["AnalyticMixtureScore", "flow_map"]


class AnalyticMixtureScore(nn.Module):
    r"""Exact $\varepsilon(x, t)$ of a per-pixel Gaussian mixture, with the model call signature.

    ``forward(x, t, y=None, m=None)`` ignores the conditioning (the problem is unconditional).

    Arguments:
        means: component means $\mu_k$ (in $[-1, 1]$).
        weights: mixture weights (normalised); uniform by default.
        std: the common component standard deviation $s \in (0, 1/\sqrt 2]$.
        schedule: the VP schedule (default cosine, $t_{\max} = 0.995$).

    Raises:
        ValueError: bad means, weights or std.
    """

    def __init__(
        self,
        means: Sequence[float] = (-0.6, 0.1, 0.7),
        weights: Optional[Sequence[float]] = None,
        std: float = 0.1,
        schedule: Optional[VPSchedule] = None,
    ) -> None:
        super().__init__()
        means_t = torch.as_tensor(list(means), dtype=torch.float64)
        if means_t.ndim != 1 or means_t.numel() < 1 or not bool(torch.isfinite(means_t).all()):
            raise ArgumentError(f"means must be a non-empty sequence of finite floats, got {means!r}")
        if weights is None:
            w = torch.full_like(means_t, 1.0 / means_t.numel())
        else:
            w = torch.as_tensor(list(weights), dtype=torch.float64)
            if w.shape != means_t.shape or bool((w <= 0).any()):
                raise ArgumentError(f"weights must be positive, one per mean, got {weights!r}")
            w = w / w.sum()
        std = float(std)
        if not (0.0 < std <= 1 / math.sqrt(2)):
            raise ArgumentError(f"std must lie in (0, 1/sqrt(2)], got {std!r}")
        self.register_buffer("means", means_t)
        self.register_buffer("log_weights", w.log())
        self.std = std
        self.schedule = get_schedule(schedule)
        c = 1.0 - std * std
        d = float(means_t.max() - means_t.min())
        bound = max(1.0 / (2 * std * math.sqrt(c)), 9 * d * d / (64 * math.sqrt(3 * c) * std**3))
        self.lipschitz_budget = bound * (1 + 1e-9)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None, m: Optional[Tensor] = None) -> Tensor:
        t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if t64.numel() == 1:
            t64 = t64.expand(x.shape[0])
        shape = (-1,) + (1,) * (x.ndim - 1)
        alpha = self.schedule.alpha(t64).reshape(shape)
        sigma = self.schedule.sigma(t64).reshape(shape)
        var = alpha**2 * self.std**2 + sigma**2
        x64 = x.to(torch.float64)
        mu = alpha.unsqueeze(-1) * self.means  # (N,1,1,1,K)
        logits = self.log_weights - (x64.unsqueeze(-1) - mu) ** 2 / (2 * var.unsqueeze(-1))
        r = torch.softmax(logits, dim=-1)
        mean = (r * mu).sum(-1)
        return (sigma / var * (x64 - mean)).to(x.dtype)

    def sample_data(self, n: int, shape: Tuple[int, ...], generator: Optional[torch.Generator] = None,
                    dtype: torch.dtype = torch.float64) -> Tensor:
        """Draw ``n`` images of shape ``shape`` (C, H, W) from the data distribution $p_0$."""
        size = (int(n),) + tuple(int(s) for s in shape)
        k = torch.multinomial(self.log_weights.exp(), math.prod(size), replacement=True, generator=generator)
        z = torch.randn(size, dtype=torch.float64, generator=generator)
        return (self.means[k].reshape(size) + self.std * z).to(dtype)


def __getattr__(name: str):
    """``flow_map``, moved to :mod:`injcert.solvers` (it integrates the flow), from its old path."""
    if name == "flow_map":
        from ..solvers import flow_map  # layout: lazy (the old path of a name that moved up to solvers)

        return flow_map
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
