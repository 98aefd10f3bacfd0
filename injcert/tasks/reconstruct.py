r"""Conditional reconstruction of a corrupted image through the exactly invertible flow.

From an observation $y$ with corruption map $m$, draw seeded noise $x_T = \sigma_{t_{\max}} z$,
$z \sim \mathcal N(0, I)$, and decode it under the condition $c = (y, m)$ with a bit-exact
integrator. Then, for pixels observed as is ($m_0 = 1$), project onto the data: those pixels of the
output are *exactly* $y$ (data consistency). The result is deterministic: the same seed gives the
same output bit for bit, and the full $t = 0$ solver state (kept in :class:`Reconstruction`) encodes
back to exactly the noise it came from.

For blur and noise corruptions (no pixel is known as is), the forward residual
$\lVert A(\hat x) - y\rVert$ is reported when the realised operator $A$ is passed.

**Noise only** (every pixel observed as is or with additive Gaussian noise of known $\sigma$,
channel 2 of the map): $y = x + \sigma\varepsilon$ *is* a point of the flow in the coordinates
$\bar x = x_0 + \varsigma\varepsilon$, at $\varsigma = \sigma$. The reconstruction then starts there
— at $\bar x = y$ plus fresh noise of std $\sqrt{\sigma_{\max}^2 - \sigma_{\text{pix}}^2}$ where a
pixel is less noisy than the most noisy one — and integrates from $\varsigma = \sigma_{\max}$ to 0
instead of from $t_{\max}$ (``start="auto"``; ``start="noise"`` forces pure noise from $t_{\max}$).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..data.corruptions import expand_map
from ..model.schedule import get_schedule
from ..solvers import SolverState, get_solver, make_grid, probability_flow_field
from .invert import decode_state

__all__ = ["Reconstruction", "reconstruct", "reconstruct_full"]


@dataclass
class Reconstruction:
    """A reconstruction with what is needed to audit it.

    Attributes:
        image: the reconstruction $\\hat x$ (known pixels equal to ``y`` exactly).
        flow_image: the decoded image before the data-consistency projection.
        state: the full $t = 0$ solver state; ``encode_state(model, state, cond, steps, method)``
            recovers the starting noise exactly for exact methods.
        noise: the starting noise $x_T$ (x-space).
        residual: $\\lVert A(\\hat x) - y\\rVert_2$ per example when an operator was given, else ``None``.
        nfe: network evaluations.
    """

    image: Tensor
    flow_image: Tensor
    state: SolverState
    noise: Tensor
    residual: Optional[Tensor]
    nfe: int
    t_start: float = 0.0


def _check(y: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(y, Tensor) or y.ndim != 4 or not y.is_floating_point():
        raise ValueError(f"y must be a float N×C×H×W tensor, got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
    if not isinstance(m, Tensor) or m.ndim != 4 or m.shape[0] != y.shape[0] or m.shape[2:] != y.shape[2:]:
        raise ValueError(f"m must be N×K×H×W matching y {tuple(y.shape)}, got {tuple(getattr(m, 'shape', ()))}")
    return y, expand_map(m.to(y.dtype))


@torch.no_grad()
def reconstruct_full(
    model: Any,
    y: Tensor,
    m: Tensor,
    steps: int = 50,
    seed: int = 0,
    *,
    method: str = "reversible",
    operator: Optional[Callable[[Tensor], Tensor]] = None,
    start: str = "auto",
    progress: bool = False,
) -> Reconstruction:
    """Reconstruct and return the audit trail (see :class:`Reconstruction`).

    Arguments:
        model: the conditional $\\varepsilon$-network.
        y: the observation, N×C×H×W in $[-1, 1]$ (missing pixels may hold anything).
        m: the corruption map N×K×H×W (K = 3, or 1 = missing-pixel map only).
        steps: integration steps.
        seed: seed of the starting noise (a CPU generator, so results agree across devices).
        method: integrator name.
        operator: the realised forward operator $A$ (e.g. ``Observation.operator``) for the residual.
        start: ``"auto"`` (start at $\\varsigma = \\sigma_{\\max}$ from $y$ when the only corruption is
            additive noise, else from noise at $t_{\\max}$) or ``"noise"`` (always from $t_{\\max}$).
        progress: show a progress bar.

    Raises:
        ValueError: shapes or dtypes that do not fit.
    """
    y, m = _check(y, m)
    if start not in ("auto", "noise"):
        raise ValueError(f"start must be 'auto' or 'noise', got {start!r}")
    gen = torch.Generator().manual_seed(int(seed))
    sched = model.schedule
    sigma_max = float(sched.sigma(sched.t_max))
    z = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device=y.device)
    noisy = m[:, 2:3] > 0
    only_noise = bool(((m[:, :1] == 1) | noisy).all()) and bool(noisy.any())
    s_noise = float(m[:, 2].max()) if only_noise else 0.0
    if start == "auto" and only_noise and 0 < s_noise < float(sched.varsigma(sched.t_max)):
        # y = x + sigma_pix * eps is the flow's state at varsigma = sigma_pix; top every pixel up to s_noise
        t_start = float(sched.t_of_varsigma(s_noise))
        short = get_schedule({**sched.to_config(), "t_max": t_start})
        extra = torch.sqrt(torch.clamp(s_noise**2 - m[:, 2:3].double() ** 2, min=0.0))
        xbar = (y.double() + extra * z).to(y.dtype)
        noise = (xbar.double() * float(short.alpha(t_start))).to(y.dtype)  # x-space start
        field = probability_flow_field(model, short)
        state = get_solver(method).decode(field, xbar, make_grid(short, steps, "geometric", t_min=min(1e-3, t_start / 2)),
                                          (y, m), progress=progress)
    else:
        t_start = float(sched.t_max)
        noise = (z * sigma_max).to(y.dtype)
        y_in = y * m[:, :1]  # missing pixels carry no information
        state = decode_state(model, noise, (y_in, m), steps=steps, method=method, progress=progress)
    flow = state.value()
    known = m[:, :1] == 1
    image = torch.where(known.expand_as(flow), y, flow)
    residual = None
    if operator is not None:
        residual = (operator(image) - y).flatten(1).norm(dim=1)
    return Reconstruction(image=image, flow_image=flow, state=state, noise=noise, residual=residual, nfe=state.nfe,
                          t_start=t_start)


def reconstruct(model: Any, y: Tensor, m: Tensor, steps: int = 50, seed: int = 0, **kwargs: Any) -> Tensor:
    """Reconstruct the corrupted observation ``y`` with map ``m``; returns the image.

    Deterministic: the same ``seed`` gives the same output bit for bit. Pixels observed as is
    (``m[:, 0] == 1``) equal ``y`` exactly. See :func:`reconstruct_full` for the arguments and the
    audit trail (noise, full state, residual).
    """
    return reconstruct_full(model, y, m, steps, seed, **kwargs).image
