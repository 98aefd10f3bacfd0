r"""Log-determinants of Jacobians (Theorem 6, ``proofs/06-log-determinants.md``).

* :func:`logdet` with ``method="exact"``: $\log|\det J(x_i)|$ per batch element from the dense
  per-example Jacobian (``torch.func.jacfwd`` + ``vmap``) and ``torch.linalg.slogdet``.
* ``method="hutchinson"`` / ``"hutchpp"``: the map is a **drift** $f$ and the log-determinant of
  its flow is $\int_0^T \operatorname{tr} \partial f/\partial x\,dt$ (Liouville); the trace is
  estimated by Hutchinson (1989) or Hutch++ (Meyer, Musco, Musco, Woodruff, SOSA 2021), see
  :func:`trace_estimate` and :func:`liouville_logdet`.
* :func:`step_logdet_interval`: certified interval for $\log|\det(I + hJ)|$ when $h\|J\| \le hL<1$.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from injcert.errors import ArgumentError
from .._compat import quiet_jvp_decompositions

__all__ = [
    "TraceEstimate",
    "LogDetEstimate",
    "logdet",
    "trace",
    "exact_logdet",
    "trace_estimate",
    "liouville_logdet",
    "step_logdet_interval",
    "per_example_jacobian",
]

_TRACE_METHODS = ("exact", "hutchinson", "hutchpp")
_PROBES = ("rademacher", "gaussian")


@dataclasses.dataclass(frozen=True)
class TraceEstimate:
    """A stochastic estimate of a trace: ``value`` and ``stderr`` of shape ``(N,)``, and the method name.

    ``stderr`` is the sample standard deviation of the per-probe estimates divided by
    $\\sqrt{\\text{probes}}$ (Hutchinson), or of the residual Hutchinson part (Hutch++).
    """

    value: Tensor
    stderr: Tensor
    method: str


#: The former name of :class:`TraceEstimate` (it never held a log-determinant).
LogDetEstimate = TraceEstimate


def per_example_jacobian(fn: Callable[[Tensor], Tensor], x: Tensor, chunk_size: int | None = None) -> Tensor:
    """Dense per-example Jacobians ``(N, d_out, d_in)`` of a batch-to-batch ``fn``.

    ``fn`` must act on each batch element independently. Uses ``torch.func.jacfwd`` under
    ``vmap`` (forward mode: ``d_in`` Jacobian-vector products, batched). ``chunk_size`` bounds the
    number of Jacobian-vector products evaluated at once (memory grows with it; ``None``: all
    ``d_in``): at ``d = 12288`` one batch of all of them does not fit a GPU.
    """
    shape = x.shape[1:]
    d = int(math.prod(shape))


    quiet_jvp_decompositions()

    def single(xi: Tensor) -> Tensor:
        return fn(xi.unsqueeze(0)).squeeze(0)

    n = x.shape[0]
    if chunk_size is None or chunk_size >= d:
        jac = torch.func.vmap(torch.func.jacfwd(single))(x)
        return jac.reshape(n, -1, d)
    if chunk_size < 1:
        raise ArgumentError(f"chunk_size must be >= 1 (or None), got {chunk_size!r}")
    rows = []
    for xi in x:
        cols = []
        for start in range(0, d, chunk_size):
            idx = torch.arange(start, min(d, start + chunk_size), device=x.device)
            basis = torch.zeros(idx.numel(), d, dtype=x.dtype, device=x.device)
            basis[torch.arange(idx.numel(), device=x.device), idx] = 1.0
            basis = basis.reshape(-1, *shape)
            jv = torch.func.vmap(lambda v: torch.func.jvp(single, (xi,), (v,))[1])(basis)
            cols.append(jv.reshape(idx.numel(), -1))
        rows.append(torch.cat(cols).T)  # (d_out, d_in)
    return torch.stack(rows)


def exact_logdet(fn: Callable[[Tensor], Tensor], x: Tensor, chunk_size: int | None = None) -> Tensor:
    """$\\log|\\det J(x_i)|$ per example, ``(N,)``; ``-inf`` where singular. ``fn`` must be square.

    ``chunk_size``: Jacobian-vector products per batch (see :func:`per_example_jacobian`)."""
    jac = per_example_jacobian(fn, x, chunk_size)
    if jac.shape[-1] != jac.shape[-2]:
        raise ArgumentError(f"logdet needs a map R^d -> R^d, got a Jacobian of shape {tuple(jac.shape[1:])}")
    _, logabs = torch.linalg.slogdet(jac)
    return logabs


def _probes(shape: tuple, n: int, probe: str, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None) -> Tensor:
    if probe == "rademacher":
        z = torch.randint(0, 2, (n, *shape), generator=generator, device=device).to(dtype)
        return 2.0 * z - 1.0
    if probe == "gaussian":
        return torch.randn((n, *shape), generator=generator, device=device, dtype=dtype)
    raise ArgumentError(f"unknown probe {probe!r}; choose one of {_PROBES}")


def trace_estimate(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    method: str = "hutchinson",
    n_probes: int = 16,
    generator: torch.Generator | None = None,
    probe: str = "rademacher",
) -> tuple[Tensor, Tensor]:
    r"""Estimate $\operatorname{tr} J(x_i)$ per example; returns ``(estimate, stderr)``, each ``(N,)``.

    * ``"hutchinson"``: $\frac1m\sum_{j=1}^m z_j^\top J z_j$ with $E[zz^\top] = I$ (Hutchinson
      1989); stderr = sample std / $\sqrt m$.
    * ``"hutchpp"``: Hutch++ (Meyer et al. 2021, Algorithm 1): $m/3$ probes build $Q$ = an
      orthonormal basis of $JS$; $\operatorname{tr}(Q^\top J Q)$ exactly plus Hutchinson with
      $m/3$ probes on $(I-QQ^\top)J(I-QQ^\top)$; stderr from that Hutchinson part. Uses vjps for
      $J^\top$ products (the sketch is of $J$, exact for the trace since
      $\operatorname{tr}(Q^\top J Q) + \operatorname{tr}((I-QQ^\top)J(I-QQ^\top)) = \operatorname{tr} J$).

    ``fn`` must map a batch to a batch of the same shape and act on examples independently.

    Raises:
        ArgumentError: for an unknown method or probe, or too few probes.
    """
    if method not in ("hutchinson", "hutchpp"):
        raise ArgumentError(f"unknown trace method {method!r}; choose 'hutchinson' or 'hutchpp'")
    quiet_jvp_decompositions()

    def jvp(v: Tensor) -> Tensor:  # v: (N, *shape)
        return torch.func.jvp(fn, (x,), (v,))[1]

    if method == "hutchinson":
        return _hutchinson(jvp, x, n_probes, generator, probe)
    return _hutchpp(jvp, x, n_probes, generator, probe)


def _hutchinson(jvp: Callable[[Tensor], Tensor], x: Tensor, n_probes: int, generator: torch.Generator | None,
                probe: str) -> tuple[Tensor, Tensor]:
    """Hutchinson's estimate of :func:`trace_estimate` from ``jvp`` (``v -> J v``)."""
    n, shape = x.shape[0], tuple(x.shape[1:])
    if n_probes < 1:
        raise ArgumentError(f"n_probes must be >= 1, got {n_probes!r}")
    vals = []
    for _ in range(n_probes):
        z = _probes((n, *shape), 1, probe, x.dtype, x.device, generator)[0]
        vals.append((z * jvp(z)).flatten(1).sum(1))
    v = torch.stack(vals)  # (m, N)
    est = v.mean(0)
    se = v.std(0, unbiased=True) / math.sqrt(n_probes) if n_probes > 1 else torch.full_like(est, math.inf)
    return est.detach(), se.detach()


def _hutchpp(jvp: Callable[[Tensor], Tensor], x: Tensor, n_probes: int, generator: torch.Generator | None,
             probe: str) -> tuple[Tensor, Tensor]:
    """The Hutch++ estimate of :func:`trace_estimate` from ``jvp`` (``v -> J v``)."""
    n, shape = x.shape[0], tuple(x.shape[1:])
    k = n_probes // 3
    if k < 1 or n_probes - 2 * k < 2:
        raise ArgumentError(f"hutchpp needs n_probes >= 4 (got {n_probes!r})")
    m_res = n_probes - 2 * k
    s = _probes((n, *shape), k, probe, x.dtype, x.device, generator)  # (k, N, ...)
    js = torch.stack([jvp(s[j]) for j in range(k)]).flatten(2)  # (k, N, d)
    q, _ = torch.linalg.qr(js.permute(1, 2, 0))  # (N, d, k)
    exact_part = torch.zeros(n, dtype=x.dtype, device=x.device)
    for j in range(q.shape[-1]):
        qj = q[..., j].reshape(n, *shape)
        exact_part = exact_part + (qj * jvp(qj)).flatten(1).sum(1)
    vals = []
    for _ in range(m_res):
        g = _probes((n, *shape), 1, probe, x.dtype, x.device, generator)[0].flatten(1)
        g = g - (q @ (q.transpose(1, 2) @ g.unsqueeze(-1))).squeeze(-1)  # (I - QQ^T) g
        jg = jvp(g.reshape(n, *shape)).flatten(1)
        vals.append((g * jg).sum(1))
    v = torch.stack(vals)
    est = exact_part + v.mean(0)
    se = v.std(0, unbiased=True) / math.sqrt(m_res)
    return est.detach(), se.detach()


def logdet(fn: Callable[[Tensor], Tensor], x: Tensor, method: str = "exact", chunk_size: int | None = None) -> Tensor:
    r"""$\log|\det \partial\Phi/\partial x|$ per example, shape ``(N,)``, of the map ``fn`` $= \Phi$.

    Dense Jacobian and ``slogdet`` (use float64 inputs for accuracy; $d = 4096$ takes a few
    seconds). ``method`` is ``"exact"``, the only log-determinant computed here: the stochastic
    estimators give a *trace* (of a drift's Jacobian, the integrand of the Liouville formula), see
    :func:`trace` and :func:`liouville_logdet`.

    Raises:
        ArgumentError: another ``method`` (the message points to :func:`trace`).
    """
    if method != "exact":
        raise ArgumentError(f"logdet computes log-determinants exactly (method='exact'), got method={method!r}; "
                            f"the stochastic estimators {list(_TRACE_METHODS[1:])} estimate a trace: use trace()")
    return exact_logdet(fn, x, chunk_size=chunk_size)


def trace(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    method: str = "hutchpp",
    n_probes: int = 16,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    r"""$\operatorname{tr}\partial f/\partial x$ per example for a drift ``fn`` $= f$.

    ``method="exact"``: the diagonal of the dense Jacobian (``stderr`` 0); ``"hutchinson"`` or
    ``"hutchpp"``: :func:`trace_estimate` with ``n_probes`` probes.

    Raises:
        ArgumentError: an unknown method or probe.
    """
    if method == "exact":
        jac = per_example_jacobian(fn, x)
        tr = torch.diagonal(jac, dim1=-2, dim2=-1).sum(-1)
        return TraceEstimate(tr.detach(), torch.zeros_like(tr), "exact")
    if method in _TRACE_METHODS:
        est, se = trace_estimate(fn, x, method, n_probes, generator, probe)
        return TraceEstimate(est, se, method)
    raise ArgumentError(f"unknown trace method {method!r}; choose one of {list(_TRACE_METHODS)}")


def liouville_logdet(
    field: Callable[[float, Tensor], Tensor],
    trajectory: Sequence[Tensor],
    grid: Sequence[float] | Tensor,
    method: str = "exact",
    n_probes: int = 16,
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    r"""$\sum_k h_k \operatorname{tr} J_f(x_k, t_k)$ along a given trajectory (left-point rule).

    ``trajectory[k]`` is the state at ``grid[k]`` for $k = 0, \dots, K-1$ (a longer one, e.g. with
    its end point, is fine): this function does not step; the trajectory comes from the
    integrator that runs (``injcert.solvers.integrate(..., keep=...)``), so the log-determinant is
    that of the map users run. ``field(t, x)`` is the drift. For the exact flow this is an
    $O(h)$-accurate approximation of $\log|\det \partial\Phi/\partial x_0| = \int \operatorname{tr}
    J_f\,dt$; for the *discrete* Euler map the exact value is
    $\sum_k \log|\det(I + h_kJ_k)| = \sum_k h_k\operatorname{tr}J_k + O(h_k^2\|J_k\|_F^2)$
    (proofs/06). The standard errors of the stochastic methods are propagated (independent steps).

    Raises:
        ArgumentError: a grid that is not 1-D with two points, or a trajectory shorter than the grid's steps.
    """
    ts = torch.as_tensor(grid, dtype=torch.float64)
    if ts.dim() != 1 or ts.numel() < 2:
        raise ArgumentError(f"grid must be a 1-D sequence of at least two times, got {grid!r}")
    if len(trajectory) < ts.numel() - 1:
        raise ArgumentError(f"the trajectory has {len(trajectory)} states for {ts.numel() - 1} steps")
    total: Tensor | None = None
    var: Tensor | None = None
    for k in range(ts.numel() - 1):
        t, h = float(ts[k]), float(ts[k + 1] - ts[k])
        x = trajectory[k]
        est = trace(lambda z, t=t: field(t, z), x, method, n_probes, generator=generator)
        total = h * est.value if total is None else total + h * est.value
        var = (h * est.stderr) ** 2 if var is None else var + (h * est.stderr) ** 2
    assert total is not None and var is not None
    return TraceEstimate(total, var.sqrt(), method)


def step_logdet_interval(h: float, lipschitz: float, dim: int) -> tuple[float, float]:
    r"""Certified $(d\log(1-hL),\ d\log(1+hL)) \ni \log|\det(I + hJ)|$ for $\|J\|_2 \le L$.

    Every singular value of $I + hJ$ lies in $[1 - hL, 1 + hL]$ (Weyl), and
    $|\det| = \prod_i \sigma_i$. Rounding (proofs/06, part 3): $q = |h|L$ is rounded **up** (the
    float product is within half an ulp; one ulp up makes it $\ge$ the exact product), so both ends
    move outward. This matters as $q \to 1$: an error $\delta$ in $q$ moves $\log(1-q)$ by
    $\delta/(1-q)$, e.g. $6\cdot10^{-11}$ for one ulp at $1-q = 2\cdot10^{-6}$, far above a
    relative $10^{-12}$ pad. With $q$ rounded up, $1 - q$ is exact (Sterbenz, for $q \ge 1/2$) or
    within half an ulp inside ``log1p``, and the remaining errors — ``log1p`` (below 2 ulps), the
    product by $d$ (half an ulp) — are relative to the result: the pad is $10^{-12}$ of the
    larger end, plus the amplified rounding of $1 - q$, $d\,\varepsilon/(1-q)$.

    Raises:
        ArgumentError: if $h|L| \ge 1$ (after rounding up), ``dim < 1``, or a value is not finite.
    """
    h, lip = float(h), float(lipschitz)
    if not (math.isfinite(h) and math.isfinite(lip) and lip >= 0):
        raise ArgumentError(f"need finite h and finite L >= 0, got h={h!r}, L={lipschitz!r}")
    if int(dim) < 1:
        raise ArgumentError(f"dim must be >= 1, got {dim!r}")
    q = abs(h) * lip
    if q > 0:
        q = math.nextafter(q, math.inf)  # >= the exact product |h| L
    if q >= 1.0:
        raise ArgumentError(f"step_logdet_interval needs |h|*L < 1, got |h|*L = {q!r} (h={h!r}, L={lipschitz!r})")
    d = int(dim)
    lo = d * math.log1p(-q)
    hi = d * math.log1p(q)
    eps = 2.0**-52
    pad_lo = 1e-12 * max(1.0, abs(lo)) + d * eps * q / (1.0 - q)
    pad_hi = 1e-12 * max(1.0, abs(hi)) + d * eps * q
    return math.nextafter(lo - pad_lo, -math.inf), math.nextafter(hi + pad_hi, math.inf)
