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


_EPS64 = 2.0**-52


def _up(v: float, ulps: int = 1) -> float:
    """``v`` moved ``ulps`` floats towards ``+inf``."""
    for _ in range(ulps):
        v = math.nextafter(v, math.inf)
    return v


def gronwall_constants(
    lipschitz_per_interval: Sequence[float] | Tensor, interval_lengths: Sequence[float] | Tensor
) -> tuple[float, float, float]:
    r"""Return $(e^{-\Lambda}, e^{\Lambda}, \Lambda)$ with $\Lambda = \sum_k L_k |\Delta_k|$, rounded outward.

    For the exact flow $\Phi$ of $\dot x = f(x,t)$ with $f(\cdot,t)$ $L_k$-Lipschitz for every
    $t$ in interval $k$: $e^{-\Lambda}\|x-y\| \le \|\Phi x - \Phi y\| \le e^{\Lambda}\|x-y\|$
    (proofs/01). ``lipschitz_per_interval[k]`` must be the **maximum** over the interval.
    Signed lengths are allowed (backward integration); their absolute value is used.

    Rounding (proofs/01): the returned $\Lambda$ is $\ge$ the exact sum (``math.fsum`` of the
    products, each product and the sum moved up by ulps), the first entry is $\le e^{-\Lambda}$
    and the second $\ge e^{\Lambda}$ of that $\Lambda$ (``math.exp`` is inflated by a relative
    $4\varepsilon$ and one ulp outward).

    Raises:
        ValueError: for mismatched lengths, negative or non-finite constants or lengths.
    """
    lips = [float(v) for v in torch.as_tensor(lipschitz_per_interval, dtype=torch.float64).reshape(-1)]
    lens = [float(v) for v in torch.as_tensor(interval_lengths, dtype=torch.float64).reshape(-1)]
    if len(lips) != len(lens):
        raise ValueError(f"got {len(lips)} Lipschitz constants for {len(lens)} intervals")
    for v in lips:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"Lipschitz constants must be finite and >= 0, got {v!r}")
    for v in lens:
        if not math.isfinite(v):
            raise ValueError(f"interval lengths must be finite, got {v!r}")
    # each product rounded up by one ulp (it is within half an ulp), fsum is correctly rounded
    # (within half an ulp of the exact sum of the rounded-up products): one more ulp up.
    terms = [_up(lk * abs(dk)) if lk * abs(dk) > 0 else (0.0 if lk == 0 or dk == 0 else 5e-324) for lk, dk in zip(lips, lens)]
    lam = math.fsum(terms)
    lam = _up(lam) if lam > 0 else lam
    if math.isinf(lam):
        return 0.0, math.inf, math.inf
    if lam == 0.0:
        return 1.0, 1.0, 0.0
    # math.exp is accurate to < 1 ulp (not guaranteed correctly rounded): inflate by 4 eps, then one ulp
    try:
        hi = math.nextafter(math.exp(lam) * (1.0 + 4 * _EPS64), math.inf)
    except OverflowError:
        hi = math.inf
    lo = math.nextafter(math.exp(-lam) * (1.0 - 4 * _EPS64), 0.0)
    return lo, hi, lam


def step_margins(h: Sequence[float] | Tensor | float, lipschitz: Sequence[float] | Tensor | float) -> Tensor:
    r"""Contraction factors $q_k = |h_k| L_k$ (float64 tensor). Step $k$ is injective iff-certified when $q_k < 1$."""
    hh = torch.as_tensor(h, dtype=torch.float64)
    ll = torch.as_tensor(lipschitz, dtype=torch.float64)
    if bool((ll < 0).any()) or bool(ll.isnan().any()):
        raise ValueError(f"Lipschitz constants must be >= 0 (not NaN), got {lipschitz!r}")
    if not bool(torch.isfinite(hh).all()):
        raise ValueError(f"step sizes must be finite, got {h!r}")
    q = hh.abs() * ll
    # each product rounded to nearest: move it up one ulp so that q_k >= |h_k| L_k exactly
    return torch.where(q > 0, torch.nextafter(q, torch.full_like(q, math.inf)), q)


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


def _per_example_norm(v: Tensor) -> Tensor:
    """Per-example Euclidean norms in float64 (a scalar counts as one example)."""
    v = v.detach().to(torch.float64)
    if v.dim() == 0:
        return v.abs().reshape(1)
    return v.reshape(v.shape[0], -1).norm(dim=1)


def _eps(*tensors: Tensor) -> float:
    """The largest machine epsilon among the (floating) dtypes of ``tensors``."""
    return max(torch.finfo(t.dtype).eps if t.is_floating_point() else _EPS64 for t in tensors)


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

    With $q = |h|L < 1$ the map $T(x) = y - hf(x)$ is a $q$-contraction. Two certified bounds on
    the error of an iterate (per example, in the Euclidean norm; proofs/02), both charging the
    floating-point rounding:

    * step (a posteriori): $\|x_k - x^*\| \le (q\|x_k - x_{k-1}\| + \delta_T)/(1-q)$, with
      $\delta_T = 4\varepsilon(\|x_{k-1}\| + |h|\|f(x_{k-1})\| + \|y\|)$ covering the rounding
      of computing $T(x_{k-1})$ in the working dtype ($\varepsilon$ its machine epsilon);
    * residual: $\|x - x^*\| \le (\|r\| + \delta_r)/(1-q)$ with $r = x + hf(x) - y$ computed in
      float64 ($f$ evaluated in the input dtype) and $\delta_r = 4\varepsilon_{64}(\|x\| +
      |h|\|f(x)\| + \|y\|)$ covering the rounding of that float64 computation.

    The reported bound is the maximum over the batch of the per-example minimum of the two, and
    is never 0 unless $r = 0$ and $\delta_r = 0$ exactly. Iteration stops at the first iterate
    whose certified bound is $\le$ ``tol``. $x^*$ is the exact solution for $f$ **as
    evaluated** (the floating-point field, assumed $L$-Lipschitz); the rounding of the
    iteration itself is charged. $f$ must act on examples independently.

    Arguments:
        step_fn: the drift $f$ (batch to batch).
        y: the output of the step.
        h: the step size.
        lipschitz: a certified Lipschitz constant $L$ of $f$.
        tol: target error bound (absolute, in the max over the batch of per-example norms).
        max_iter: iteration budget (evaluations of ``step_fn``).
        x0: starting point (default ``y``).

    Returns:
        :class:`FixedPointResult` with the certified ``error_bound`` $\le$ ``tol``;
        ``iterations`` counts the evaluations of ``step_fn``.

    Raises:
        NonConvergenceError: if $q \ge 1$ (no guarantee; ``error=inf``, ``iterations=0``), if
            ``tol`` is below the rounding floor $4\varepsilon_{64}\max_i\|y_i\|/(1-q)$ that no
            certified bound can beat (``iterations=0``), if the iteration reaches a
            floating-point fixed point whose certified bound is still above ``tol`` (the
            tolerance is below the rounding floor of the working dtype), or if the budget runs
            out (with the reached bound and the iteration count). An unconverged iterate is
            never returned. Also raised if an iterate becomes non-finite.
        ValueError: for ``tol <= 0``, ``max_iter < 1``, a non-finite ``h``, or a ``lipschitz``
            that is negative, NaN or infinite (checked before anything is evaluated).
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    h = float(h)
    lip = float(lipschitz)
    # a negative or NaN L would make q < 1 "pass" with a meaningless (even negative) error bound
    if not (math.isfinite(lip) and lip >= 0.0) or not math.isfinite(h):
        raise ValueError(
            f"fixed_point_inverse needs a finite step h and a finite Lipschitz constant L >= 0, got h={h!r}, L={lipschitz!r}"
        )
    q = math.nextafter(abs(h) * lip, math.inf)  # rounded up
    if not (math.isfinite(q) and q < 1.0):
        raise NonConvergenceError(
            f"fixed_point_inverse needs |h|*L < 1 for a certified inverse, got |h|*L = {abs(h) * float(lipschitz)!r} "
            f"(h={h!r}, L={lipschitz!r})",
            error=math.inf,
            iterations=0,
        )
    one_minus_q = math.nextafter(1.0 - q, 0.0)  # rounded down
    # every float64 quantity below (norms of n entries, a few products/quotients) is within a
    # relative (n + 8) eps64 of the exact one: inflate by twice that.
    n = max(1, y[0].numel() if y.dim() > 0 else 1)
    infl = 1.0 + 2.0 * (n + 8) * _EPS64
    ny = _per_example_norm(y)
    # rounding floor: no certified bound can be below 4 eps64 ||y_i|| / (1 - q)
    floor = float((4.0 * _EPS64 * ny).max()) / one_minus_q if ny.numel() else 0.0
    if tol < floor:
        raise NonConvergenceError(
            f"fixed_point_inverse: tol={tol!r} is below the rounding floor {floor:.3e} (= 4 eps64 max||y|| / (1 - q), "
            f"q={q:.6g}); no certified error bound can reach it",
            error=floor,
            iterations=0,
        )
    y64 = y.detach().to(torch.float64)
    x = y if x0 is None else x0
    step_bound: Tensor | None = None  # per-example step bound of the current x (None for x0)
    best = math.inf
    with torch.no_grad():
        for k in range(1, max_iter + 1):
            fx = step_fn(x)
            nx, nf = _per_example_norm(x), _per_example_norm(fx)
            if not (bool(torch.isfinite(nx).all()) and bool(torch.isfinite(nf).all())):
                raise NonConvergenceError(
                    f"fixed_point_inverse produced a non-finite iterate or field value at iteration {k}",
                    error=math.inf,
                    iterations=k,
                )
            scale = nx + abs(h) * nf + ny
            # residual bound of x
            r = x.detach().to(torch.float64) + h * fx.detach().to(torch.float64) - y64
            res_bound = (_per_example_norm(r) * infl + 4.0 * _EPS64 * scale * infl) / one_minus_q * infl
            bound_t = res_bound if step_bound is None else torch.minimum(res_bound, step_bound)
            err = float(bound_t.max()) if bound_t.numel() else 0.0
            best = min(best, err)
            if err <= tol:
                return FixedPointResult(x, err, k)
            # next iterate and its step bound
            x_new = y - h * fx
            delta = _per_example_norm(x_new.detach().to(torch.float64) - x.detach().to(torch.float64))
            if not bool(torch.isfinite(delta).all()):
                raise NonConvergenceError(f"fixed_point_inverse produced a non-finite iterate at iteration {k}", error=math.inf, iterations=k)
            d_t = 4.0 * _eps(x_new, fx, y) * scale
            new_step = (q * delta * infl + d_t * infl) / one_minus_q * infl
            err_new = float(new_step.max()) if new_step.numel() else 0.0
            best = min(best, err_new)
            if err_new <= tol:
                return FixedPointResult(x_new, err_new, k)
            if bool((delta == 0).all()):  # x_new == x: every later iterate and bound would repeat
                raise NonConvergenceError(
                    f"fixed_point_inverse: tol={tol!r} is below the rounding floor of {x_new.dtype}: the iteration reached "
                    f"a floating-point fixed point at iteration {k} whose certified error bound is {best:.3e} "
                    f"(q={q:.6g}); use a larger tol or a wider dtype",
                    error=best,
                    iterations=k,
                )
            x, step_bound = x_new, new_step
    raise NonConvergenceError(
        f"fixed_point_inverse did not reach tol={tol!r} in {max_iter} iterations (q={q:.6g}); certified error bound "
        f"reached: {best:.3e} (rounding floor of the working dtype near "
        f"{float((4.0 * _eps(x, y) * (2 * ny)).max()) / one_minus_q:.3e})",
        error=best,
        iterations=max_iter,
    )
