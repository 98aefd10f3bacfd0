r"""Flow stability and discrete injectivity (Theorems 1 and 2).

* :func:`gronwall_constants`: $\Lambda = \sum_k L_k|\Delta_k|$ and $(e^{-\Lambda}, e^{\Lambda})$,
  where $L_k$ must bound the drift's Lipschitz constant on the **whole** interval $k$ (a
  maximum, never a midpoint or endpoint value — a midpoint rule is not a bound).
* :func:`step_margins`: the contraction factors $q_k = |h_k| L_k$ of explicit Euler/DDIM steps.
* :func:`fixed_point_inverse`: inverts $y = x + h f(x)$ by Banach iteration with a certified
  a-posteriori error bound, or raises :class:`~injcert.errors.NonConvergenceError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from injcert.errors import NonConvergenceError

__all__ = ["gronwall_constants", "step_margins", "fixed_point_inverse", "FixedPointResult", "batch_norm"]


def gronwall_constants(
    lipschitz_per_interval: Sequence[float] | Tensor, interval_lengths: Sequence[float] | Tensor
) -> tuple[float, float, float]:
    r"""Return $(e^{-\Lambda}, e^{\Lambda}, \Lambda)$ with $\Lambda = \sum_k L_k |\Delta_k|$.

    For the exact flow $\Phi$ of $\dot x = f(x,t)$ with $f(\cdot,t)$ $L_k$-Lipschitz for every
    $t$ in interval $k$: $e^{-\Lambda}\|x-y\| \le \|\Phi x - \Phi y\| \le e^{\Lambda}\|x-y\|$
    (proofs/01). ``lipschitz_per_interval[k]`` must be the **maximum** over the interval.
    Signed lengths are allowed (backward integration); their absolute value is used. The
    returned $\Lambda$ is rounded up by a relative $10^{-12}$.

    Raises:
        ValueError: for mismatched lengths, negative or non-finite constants.
    """
    lips = [float(v) for v in torch.as_tensor(lipschitz_per_interval, dtype=torch.float64).reshape(-1)]
    lens = [float(v) for v in torch.as_tensor(interval_lengths, dtype=torch.float64).reshape(-1)]
    if len(lips) != len(lens):
        raise ValueError(f"got {len(lips)} Lipschitz constants for {len(lens)} intervals")
    for v in lips:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"Lipschitz constants must be finite and >= 0, got {v!r}")
    lam = math.fsum(lk * abs(dk) for lk, dk in zip(lips, lens)) * (1.0 + 1e-12)
    return math.exp(-lam), math.exp(lam), lam


def step_margins(h: Sequence[float] | Tensor | float, lipschitz: Sequence[float] | Tensor | float) -> Tensor:
    r"""Contraction factors $q_k = |h_k| L_k$ (float64 tensor). Step $k$ is injective iff-certified when $q_k < 1$."""
    hh = torch.as_tensor(h, dtype=torch.float64)
    ll = torch.as_tensor(lipschitz, dtype=torch.float64)
    if bool((ll < 0).any()):
        raise ValueError(f"Lipschitz constants must be >= 0, got {lipschitz!r}")
    return hh.abs() * ll


def batch_norm(v: Tensor) -> float:
    r"""The norm used by :func:`fixed_point_inverse`: max over the batch of per-example $\ell_2$."""
    if v.dim() == 0:
        return float(v.abs())
    return float(v.reshape(v.shape[0], -1).norm(dim=1).max()) if v.numel() else 0.0


@dataclasses.dataclass(frozen=True)
class FixedPointResult:
    """A converged inverse: ``x`` with $\\max_i\\|x_i - x^*_i\\|_2 \\le$ ``error_bound``."""

    x: Tensor
    error_bound: float
    iterations: int


def fixed_point_inverse(
    step_fn: Callable[[Tensor], Tensor],
    y: Tensor,
    *,
    h: float,
    lipschitz: float,
    tol: float = 1e-10,
    max_iter: int = 200,
    x0: Tensor | None = None,
) -> FixedPointResult:
    r"""Solve $y = x + h f(x)$ for $x$ by $x_{k+1} = y - h f(x_k)$ (Banach; proofs/02).

    With $q = |h|L < 1$ the map $T(x) = y - hf(x)$ is a $q$-contraction, and
    $\|x_k - x^*\| \le \frac{q}{1-q}\|x_k - x_{k-1}\|$. Iteration stops at the first $k$ with
    that bound $\le$ ``tol``. The norm is the maximum over the batch of the per-example
    Euclidean norm (:func:`batch_norm`); $f$ must act on examples independently and be
    $L$-Lipschitz per example.

    Arguments:
        step_fn: the drift $f$ (batch to batch).
        y: the output of the step.
        h: the step size.
        lipschitz: a certified Lipschitz constant $L$ of $f$.
        tol: target error bound (absolute, in the norm above).
        max_iter: iteration budget.
        x0: starting point (default ``y``).

    Returns:
        :class:`FixedPointResult` with the certified ``error_bound`` $\le$ ``tol``.

    Raises:
        NonConvergenceError: if $q \ge 1$ (no guarantee; ``error=inf``, ``iterations=0``) or the
            budget runs out (with the reached bound and the iteration count). An unconverged
            iterate is never returned. Also raised if an iterate becomes non-finite.
        ValueError: for ``tol <= 0`` or ``max_iter < 1``.
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    q = abs(float(h)) * float(lipschitz)
    if not (math.isfinite(q) and q < 1.0):
        raise NonConvergenceError(
            f"fixed_point_inverse needs |h|*L < 1 for a certified inverse, got |h|*L = {q!r} (h={h!r}, L={lipschitz!r})",
            error=math.inf,
            iterations=0,
        )
    factor = q / (1.0 - q)
    x = y if x0 is None else x0
    err = math.inf
    with torch.no_grad():
        for k in range(1, max_iter + 1):
            x_new = y - h * step_fn(x)
            delta = batch_norm(x_new - x)
            if not math.isfinite(delta):
                raise NonConvergenceError(f"fixed_point_inverse produced a non-finite iterate at iteration {k}", error=math.inf, iterations=k)
            # a-posteriori bound, rounded up slightly for float arithmetic in the norm
            err = factor * delta * (1.0 + 1e-12)
            x = x_new
            if err <= tol:
                return FixedPointResult(x, err, k)
    raise NonConvergenceError(
        f"fixed_point_inverse did not reach tol={tol!r} in {max_iter} iterations (q={q:.6g}); certified error bound "
        f"reached: {err:.3e}",
        error=err,
        iterations=max_iter,
    )
