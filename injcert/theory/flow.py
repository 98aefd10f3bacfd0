r"""Flow stability and discrete injectivity (Theorems 1 and 2): the one home of every flow formula.

Exact flow (Theorem 1):

* :func:`gronwall_constants`: $\Lambda = \sum_k L_k|\Delta_k|$ and $(e^{-\Lambda}, e^{\Lambda})$,
  where $L_k$ must bound the drift's Lipschitz constant on the **whole** interval $k$ (a
  maximum, never a midpoint or endpoint value — a midpoint rule is not a bound). Every Grönwall
  exponent in injcert is a sum of these products.
* :func:`gronwall_exponent`, :func:`gronwall_profile`: $\Lambda$ of the probability-flow drift in
  $\bar x$ over a $\varsigma$ interval, for a number or a noise-adaptive :class:`LipschitzProfile`.
* :func:`lognorm_exponents`: the tighter, one-sided constants of the logarithmic norm.

Discrete Euler/DDIM map (Theorem 2):

* :func:`margin_products` and :func:`step_margins`: the contraction factors $q_k = |h_k| L_k$.
* :func:`discrete_log_constants`: $\log\prod(1 \mp q_k)$, the bi-Lipschitz constants of the map.
* :func:`steps_needed`: the fewest grid steps with every $q_k < 1$.
* :func:`fixed_point_inverse`: inverts $y = x + h f(x)$ by Banach iteration with a certified
  a-posteriori error bound, or raises :class:`~injcert.errors.NonConvergenceError`.
* :func:`fixed_point_error_bound`: the propagation of the per-step errors through a whole decode.

The schedule is passed in (anything with ``alpha_of_varsigma`` and ``t_of_varsigma``); nothing
here imports the model or the solvers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from injcert.errors import ArgumentError, NonConvergenceError
from injcert.theory.rounding import EPS64 as _EPS64
from injcert.theory.rounding import next_up as _up
from injcert.theory.rounding import round_down, round_up

__all__ = [
    "gronwall_constants", "gronwall_exponent", "gronwall_profile", "lognorm_exponents", "LipschitzProfile",
    "lipschitz_at", "margin_products", "step_margins", "discrete_log_constants", "steps_needed",
    "fixed_point_inverse", "fixed_point_error_bound", "FixedPointResult", "batch_norm",
]


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
        raise ArgumentError(f"got {len(lips)} Lipschitz constants for {len(lens)} intervals")
    for v in lips:
        if not (math.isfinite(v) and v >= 0):
            raise ArgumentError(f"Lipschitz constants must be finite and >= 0, got {v!r}")
    for v in lens:
        if not math.isfinite(v):
            raise ArgumentError(f"interval lengths must be finite, got {v!r}")
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


def margin_products(h: Sequence[float] | Tensor | float, lipschitz: Sequence[float] | Tensor | float) -> Tensor:
    r"""Contraction factors $q_k = |h_k| L_k$ (float64 tensor), each rounded up. Step $k$ is
    certified injective when $q_k < 1$."""
    hh = torch.as_tensor(h, dtype=torch.float64)
    ll = torch.as_tensor(lipschitz, dtype=torch.float64)
    if bool((ll < 0).any()) or bool(ll.isnan().any()):
        raise ArgumentError(f"Lipschitz constants must be >= 0 (not NaN), got {lipschitz!r}")
    if not bool(torch.isfinite(hh).all()):
        raise ArgumentError(f"step sizes must be finite, got {h!r}")
    q = hh.abs() * ll
    # each product rounded to nearest: move it up one ulp so that q_k >= |h_k| L_k exactly
    return torch.where(q > 0, torch.nextafter(q, torch.full_like(q, math.inf)), q)


@dataclasses.dataclass(frozen=True)
class LipschitzProfile:
    r"""A certified noise-adaptive bound $t \mapsto L(t)$ of $x \mapsto \varepsilon_\theta(x, t', c)$,
    valid for **every** $t' \ge t$ (so non-increasing), with its supremum ``sup`` over $t$.

    ``float(profile)`` and format specs give the supremum (the uniform bound), so code and
    messages that need one number keep working; :func:`lipschitz_at` evaluates it per step.
    """

    fn: Callable[[float], float]
    sup: float
    name: str = "L(t)"

    def __call__(self, t: float) -> float:
        v = float(self.fn(float(t)))
        if not (v >= 0.0):
            raise ArgumentError(f"{self.name} returned an invalid bound {v!r} at t={t!r}")
        return v

    def __float__(self) -> float:
        return float(self.sup)

    def __format__(self, spec: str) -> str:
        return format(float(self.sup), spec)


def lipschitz_at(lipschitz: float | LipschitzProfile, schedule: object, s: float) -> float:
    r"""The bound of $\varepsilon_\theta$ in $x$ valid for every $\varsigma' \ge \varsigma$ = ``s``:
    ``lipschitz`` itself when it is a number, its value at $t(\varsigma)$ when it is a profile.

    $t(\varsigma)$ is computed in float64 (relative error $\le 2^{-50}$), far inside the relative
    $10^{-6}$ the model's gain keeps below its budget (``CondUNet.certified_lipschitz_at``)."""
    if isinstance(lipschitz, LipschitzProfile):
        return lipschitz(float(schedule.t_of_varsigma(torch.tensor(float(s), dtype=torch.float64))))  # type: ignore[attr-defined]
    return float(lipschitz)


def gronwall_exponent(lipschitz: float | LipschitzProfile, s0: float, s1: float, schedule: object = None) -> float:
    r"""Certified $\Lambda = L\int_{\varsigma_0}^{\varsigma_1} \alpha(\varsigma)\,d\varsigma
    = L\,(\operatorname{asinh}\varsigma_1 - \operatorname{asinh}\varsigma_0)$, rounded up.

    The drift $\bar x\mapsto\varepsilon_\theta(\alpha\bar x, t(\varsigma), c)$ is
    $\alpha(\varsigma)L$-Lipschitz with $\alpha = (1+\varsigma^2)^{-1/2}$ (chain rule), whose
    antiderivative is $\operatorname{asinh}$ (``proofs/01``): the $\Lambda$ of :func:`gronwall_constants`
    for one interval of length $\operatorname{asinh}\varsigma_1 - \operatorname{asinh}\varsigma_0$
    (rounded up) in $\rho = \operatorname{asinh}\varsigma$. A :class:`LipschitzProfile` is charged its
    value at $\varsigma_0$ (it bounds every later time; ``schedule`` is then required); sum over a fine
    grid for a tight $\Lambda$ (:func:`gronwall_profile`).
    """
    if not (0.0 <= s0 <= s1):
        raise ArgumentError(f"need 0 <= s0 <= s1, got s0={s0!r}, s1={s1!r}")
    if isinstance(lipschitz, LipschitzProfile):
        if schedule is None:
            raise ArgumentError("a LipschitzProfile needs the schedule to map varsigma to t")
        lipschitz = lipschitz_at(lipschitz, schedule, s0)
    if lipschitz == 0.0:
        return 0.0
    span = round_up(math.asinh(round_up(s1))) - round_down(math.asinh(round_down(s0)))
    return gronwall_constants([float(lipschitz)], [round_up(span)])[2]


def gronwall_profile(lipschitz: float | LipschitzProfile, schedule: object, s_max: float, pieces: int = 400) -> float:
    r"""Certified $\Lambda = \int_0^{\varsigma_{\max}} \alpha L\,d\varsigma$ for a profile: the sum of
    :func:`gronwall_exponent` over ``pieces`` geometric pieces of $[\varsigma_{\max}10^{-6}, \varsigma_{\max}]$
    and one piece $[0, \varsigma_{\max}10^{-6}]$, each charged its left end (sound because $L$ is
    non-increasing in $t$). A number is charged as is (the sum equals $L\operatorname{asinh}\varsigma_{\max}$)."""
    if not isinstance(lipschitz, LipschitzProfile):
        return gronwall_exponent(lipschitz, 0.0, s_max)
    lo = s_max * 1e-6
    pts = [0.0] + [lo * (s_max / lo) ** (k / pieces) for k in range(pieces)] + [s_max]
    return round_up(math.fsum(gronwall_exponent(lipschitz, a, b, schedule) for a, b in zip(pts, pts[1:]) if b > a))


def lognorm_exponents(rest: float | LipschitzProfile, linear: object, schedule: object, s_max: float,
                      pieces: int = 400) -> tuple[float, float]:
    r"""Certified $(\Lambda^-, \Lambda^+)$ with $e^{\Lambda^-}\|x-y\| \le \|\Phi x - \Phi y\| \le
    e^{\Lambda^+}\|x-y\|$ for the exact encode flow over $[0, \varsigma_{\max}]$ (``proofs/01``, tight form).

    The drift in $\bar x$ is $s(\varsigma)\bar x + N$ with an exact linear part $s$ and $N$ Lipschitz with
    constant $\alpha\,\ell(t)$ (``rest(t)`` $= \ell(t)$, non-increasing, valid for every later time). The
    logarithmic norm gives $\Lambda^\pm = \int s \pm \int \alpha\ell$; $\int\alpha\ell$ is charged piecewise at
    left ends on the grid of :func:`gronwall_profile`. ``linear`` is either the data variance $v$ of
    the Gaussian-data skip (then $s = \varsigma/(v + \varsigma^2)$ and $\int_0^{\varsigma_{\max}} s =
    \tfrac12\log(1 + \varsigma_{\max}^2/v)$ for every VP schedule) or a callable ``(s0, s1) -> (lo, hi)``
    enclosing $\int_{s_0}^{s_1} s$ (e.g. ``CondUNet.linear_part_integral``).
    """
    rest_prof = rest if isinstance(rest, LipschitzProfile) else float(rest)
    if callable(linear):
        lin_lo, lin = (float(v) for v in linear(0.0, float(s_max)))
        lin, lin_lo = round_up(lin), round_down(lin_lo)
    else:
        lin = round_up(0.5 * math.log1p(round_up(s_max) ** 2 / float(linear)))  # type: ignore[arg-type]
        lin_lo = round_down(0.5 * math.log1p(round_down(s_max) ** 2 / float(linear)))  # type: ignore[arg-type]
    nonlin = gronwall_profile(rest_prof, schedule, s_max, pieces)
    return round_down(lin_lo - nonlin), round_up(lin + nonlin)


def step_margins(grid: Sequence[float] | Tensor, lipschitz: float | LipschitzProfile,
                 schedule: object, alpha_rel: float = 0.0) -> tuple[list[float], list[float], list[float]]:
    r"""Per-step ``(h_k, L_k, q_k)`` of an Euler/DDIM grid in $\varsigma$, all rounded up.

    $h_k = \varsigma_{k+1}-\varsigma_k$, $L_k = \alpha(\varsigma_k)L(t(\varsigma_k))$ (the drift's constant
    at the left end, its maximum over the step since $\alpha$ and the profile $L$ do not increase),
    $q_k = h_kL_k$ (:func:`margin_products`). Both the encode step (evaluated at $\varsigma_k$) and
    the decode step (at $\varsigma_{k+1}$) are $q_k$-perturbations of the identity.

    ``alpha_rel``: the relative rounding of $\alpha$ in the network's dtype (the field multiplies
    $\bar x$ by $\mathrm{fl}(\alpha) \le \alpha(1 + u)$, $u = 2^{-24}$ in float32; ``proofs/08``):
    $\alpha$ is charged $\alpha(1 + $ ``alpha_rel``$)$.
    """
    g = [float(v) for v in grid]
    hs, ls = [], []
    for a, b in zip(g, g[1:]):
        alpha = round_up(float(schedule.alpha_of_varsigma(torch.tensor(a, dtype=torch.float64)))  # type: ignore[attr-defined]
                         * (1.0 + float(alpha_rel)))
        hs.append(round_up(b - a))
        ls.append(round_up(alpha * round_up(lipschitz_at(lipschitz, schedule, a))))
    qs = [float(q) for q in margin_products(hs, ls)] if hs else []
    return hs, ls, qs


def discrete_log_constants(qs: Sequence[float]) -> tuple[float, float]:
    r"""Certified $(\log\prod_k(1-q_k), \log\prod_k(1+q_k))$: the discrete Euler map is bi-Lipschitz
    with these constants (``proofs/02``); the first is ``-inf`` if some $q_k \ge 1$."""
    lo = 0.0
    for q in qs:
        lo = -math.inf if q >= 1.0 else lo + round_down(math.log1p(-q))
    hi = 0.0
    for q in qs:
        hi += round_up(math.log1p(q))
    return round_down(lo), round_up(hi)


def steps_needed(lipschitz: float | LipschitzProfile, schedule: object, make_grid: Callable[[int], Sequence[float]],
                 limit: int = 1 << 20) -> int | None:
    """Smallest number of grid steps ``n`` with every margin ``q_k < 1`` on ``make_grid(n)``
    (``None`` beyond ``limit``); bisection, assuming more steps never hurt."""

    def ok(n: int) -> bool:
        return max(step_margins(make_grid(n), lipschitz, schedule)[2]) < 1.0

    if not math.isfinite(float(lipschitz)):
        return None
    hi = 1
    while not ok(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def fixed_point_error_bound(error_bounds: Sequence[float], margins: Sequence[float]) -> float:
    r"""Certified $\|\hat x_0 - x_0\|$ after a fixed-point decode of an exactly known encoded state.

    Step $n$ (grid order) leaves an error $\le e_n$ (its a-posteriori bound) in $\bar x_n$; the exact
    inverses of steps $n-1, \dots, 0$ are $1/(1-q_j)$-Lipschitz (``proofs/02``), so
    $E = \sum_n e_n \prod_{j<n} (1-q_j)^{-1}$, every operation rounded up (``inf`` if some
    $q_j \ge 1$ carries an error).
    """
    if len(error_bounds) != len(margins):
        raise ArgumentError(f"got {len(error_bounds)} step errors for {len(margins)} margins")
    total, growth = 0.0, 1.0
    for e, q in zip(error_bounds, margins):
        total += round_up(float(e) * growth)
        growth = round_up(growth / round_down(1.0 - float(q))) if q < 1 else math.inf
    return round_up(total)


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
    #: the last evaluation of the drift, $f$ at ``x`` or at the iterate before it: a cheap
    #: starting guess $y' - h'f$ for the next step of a decode (nothing certified rests on it).
    last_drift: Tensor | None = None


def _per_example_norm(v: Tensor) -> Tensor:
    """Per-example Euclidean norms in float64 (a scalar counts as one example)."""
    v = v.detach().to(torch.float64)
    if v.dim() == 0:
        return v.abs().reshape(1)
    return v.reshape(v.shape[0], -1).norm(dim=1)


def _eps(*tensors: Tensor) -> float:
    """The largest machine epsilon among the (floating) dtypes of ``tensors``."""
    return max(torch.finfo(t.dtype).eps if t.is_floating_point() else _EPS64 for t in tensors)


def _banach_constants(h: float, lipschitz: float, tol: float, max_iter: int) -> tuple[float, float, float]:
    """Validated ``(h, q, 1 - q)`` of :func:`fixed_point_inverse`: $q = |h|L$ rounded up, $1 - q$ rounded
    down; refuses bad arguments before anything is evaluated and $q \\ge 1$ (no contraction)."""
    if not tol > 0:
        raise ArgumentError(f"tol must be > 0, got {tol!r}")
    if max_iter < 1:
        raise ArgumentError(f"max_iter must be >= 1, got {max_iter!r}")
    h = float(h)
    lip = float(lipschitz)
    # a negative or NaN L would make q < 1 "pass" with a meaningless (even negative) error bound
    if not (math.isfinite(lip) and lip >= 0.0) or not math.isfinite(h):
        raise ArgumentError(
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
    return h, q, math.nextafter(1.0 - q, 0.0)  # 1 - q rounded down


def _check_reachable(tol: float, ny: Tensor, q: float, one_minus_q: float) -> None:
    """Refuse a ``tol`` below the rounding floor $4\\varepsilon_{64}\\max_i\\|y_i\\|/(1-q)$ that no
    certified bound can beat."""
    floor = float((4.0 * _EPS64 * ny).max()) / one_minus_q if ny.numel() else 0.0
    if tol < floor:
        raise NonConvergenceError(
            f"fixed_point_inverse: tol={tol!r} is below the rounding floor {floor:.3e} (= 4 eps64 max||y|| / (1 - q), "
            f"q={q:.6g}); no certified error bound can reach it",
            error=floor,
            iterations=0,
        )


def fixed_point_inverse(step_fn: Callable[[Tensor], Tensor], y: Tensor, *, h: float, lipschitz: float,
                        tol: float = 1e-10, max_iter: int = 200, x0: Tensor | None = None) -> FixedPointResult:
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
    whose certified bound is $\le$ ``tol``. $x^*$ is the exact solution of $y = x + h\tilde f(x)$ for
    the field **as evaluated**, $\tilde f = f + e$; the rounding of the iteration itself is charged,
    the evaluation error $e$ of the floating-point network is not: with $\|e\| \le \delta$ the exact-
    arithmetic inverse is within a further $|h|\delta/(1-q)$ (``proofs/02``, "Floating point").
    $f$ must act on examples independently.

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
    h, q, one_minus_q = _banach_constants(h, lipschitz, tol, max_iter)
    # every float64 quantity below (norms of n entries, a few products/quotients) is within a
    # relative (n + 8) eps64 of the exact one: inflate by twice that.
    n = max(1, y[0].numel() if y.dim() > 0 else 1)
    infl = 1.0 + 2.0 * (n + 8) * _EPS64
    ny = _per_example_norm(y)
    _check_reachable(tol, ny, q, one_minus_q)
    return _banach_iterate(step_fn, y, x0, h=h, q=q, one_minus_q=one_minus_q, tol=tol, max_iter=max_iter,
                           ny=ny, infl=infl)


def _banach_iterate(step_fn: Callable[[Tensor], Tensor], y: Tensor, x0: Tensor | None, *, h: float, q: float,
                    one_minus_q: float, tol: float, max_iter: int, ny: Tensor, infl: float) -> FixedPointResult:
    """The iteration of :func:`fixed_point_inverse` (its constants checked): the first iterate whose
    certified bound (the smaller of the residual and the step bound) is <= ``tol``; else
    :class:`NonConvergenceError` (a floating-point fixed point, or the budget spent)."""
    y64 = y.detach().to(torch.float64)
    x = y if x0 is None else x0
    step_bound: Tensor | None = None  # per-example step bound of the current x (None for x0)
    best = math.inf
    with torch.no_grad():
        for k in range(1, max_iter + 1):
            fx = step_fn(x)
            scale = _iterate_scale(x, fx, ny, h, k)
            res_bound = _residual_bound(x, fx, y64, h, scale, infl, one_minus_q)
            bound_t = res_bound if step_bound is None else torch.minimum(res_bound, step_bound)
            err = float(bound_t.max()) if bound_t.numel() else 0.0
            best = min(best, err)
            if err <= tol:
                return FixedPointResult(x, err, k, fx)
            # next iterate and its step bound
            x_new = y - h * fx
            delta, new_step = _step_bound(x, x_new, fx, y, scale, q, infl, one_minus_q, k)
            err_new = float(new_step.max()) if new_step.numel() else 0.0
            best = min(best, err_new)
            if err_new <= tol:
                return FixedPointResult(x_new, err_new, k, fx)
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


def _iterate_scale(x: Tensor, fx: Tensor, ny: Tensor, h: float, k: int) -> Tensor:
    """``||x|| + |h| ||f(x)|| + ||y||`` per example, the scale of the rounding terms; refuses non-finite values."""
    nx, nf = _per_example_norm(x), _per_example_norm(fx)
    if not (bool(torch.isfinite(nx).all()) and bool(torch.isfinite(nf).all())):
        raise NonConvergenceError(
            f"fixed_point_inverse produced a non-finite iterate or field value at iteration {k}",
            error=math.inf,
            iterations=k,
        )
    return nx + abs(h) * nf + ny


def _residual_bound(x: Tensor, fx: Tensor, y64: Tensor, h: float, scale: Tensor, infl: float,
                    one_minus_q: float) -> Tensor:
    """The residual bound ``(||r|| + delta_r)/(1-q)`` of ``x``, ``r = x + h f(x) - y`` in float64, inflated."""
    r = x.detach().to(torch.float64) + h * fx.detach().to(torch.float64) - y64
    return (_per_example_norm(r) * infl + 4.0 * _EPS64 * scale * infl) / one_minus_q * infl


def _step_bound(x: Tensor, x_new: Tensor, fx: Tensor, y: Tensor, scale: Tensor, q: float, infl: float,
                one_minus_q: float, k: int) -> tuple[Tensor, Tensor]:
    """``(||x_new - x||, (q ||x_new - x|| + delta_T)/(1-q))`` per example, inflated; refuses a non-finite step."""
    delta = _per_example_norm(x_new.detach().to(torch.float64) - x.detach().to(torch.float64))
    if not bool(torch.isfinite(delta).all()):
        raise NonConvergenceError(f"fixed_point_inverse produced a non-finite iterate at iteration {k}", error=math.inf, iterations=k)
    d_t = 4.0 * _eps(x_new, fx, y) * scale
    return delta, (q * delta * infl + d_t * infl) / one_minus_q * infl
