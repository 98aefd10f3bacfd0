"""Theorems 1 and 2 (proofs/01, proofs/02): Grönwall constants and the fixed-point inverse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from injcert.errors import NonConvergenceError
from injcert.theory.flow import FixedPointResult, fixed_point_inverse, gronwall_constants, margin_products


@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 999))
def test_gronwall_contains_linear_flow_singular_values(d, n_int, seed):
    """x' = A_k x on interval k (piecewise constant): the flow's singular values lie in [e^-Λ, e^Λ]."""
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(0.05, 0.5, n_int)
    phi = np.eye(d)
    lips = []
    for k in range(n_int):
        a = rng.normal(size=(d, d))
        lips.append(float(np.linalg.norm(a, 2)))
        phi = scipy.linalg.expm(a * lengths[k]) @ phi
    lo, hi, lam = gronwall_constants(lips, lengths)
    s = np.linalg.svd(phi, compute_uv=False)
    assert lo * (1 - 1e-12) <= s.min() and s.max() <= hi * (1 + 1e-12)
    assert math.isclose(lam, float(np.dot(lips, lengths)), rel_tol=1e-9)


def test_gronwall_time_varying_uses_interval_max():
    # A(t) = t*B on [0, 1] split in 4 intervals; L_k = max over the interval = t_{k+1} ||B||
    b = np.array([[0.0, 2.0], [-1.0, 0.5]])
    grid = np.linspace(0, 1, 5)
    # A(t) = tB commute with each other, so the flow is exactly exp(B * int_0^1 t dt) = exp(B/2).
    phi = scipy.linalg.expm(b * 0.5)
    nb = np.linalg.norm(b, 2)
    lo, hi, _ = gronwall_constants([nb * t for t in grid[1:]], np.diff(grid))
    s = np.linalg.svd(phi, compute_uv=False)
    assert lo <= s.min() and s.max() <= hi


def test_gronwall_rejects_bad_input():
    with pytest.raises(ValueError):
        gronwall_constants([1.0], [0.1, 0.2])
    with pytest.raises(ValueError):
        gronwall_constants([-1.0], [0.1])
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="interval lengths"):
            gronwall_constants([1.0], [bad])


def test_step_margins():
    q = margin_products([0.1, -0.2], [2.0, 3.0])
    assert torch.allclose(q, torch.tensor([0.2, 0.6], dtype=torch.float64))


@given(st.floats(0.05, 0.9), st.integers(1, 4), st.integers(0, 999))
def test_fixed_point_inverse_meets_its_error_bound(q, n, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 5, dtype=torch.float64, generator=g)
    w = w / torch.linalg.matrix_norm(w, ord=2)
    f = lambda x: torch.tanh(x @ w.T)  # noqa: E731  (Lipschitz 1)
    h = q
    x_true = torch.randn(n, 5, dtype=torch.float64, generator=g)
    y = x_true + h * f(x_true)
    res = fixed_point_inverse(f, y, h=h, lipschitz=1.0, tol=1e-9, max_iter=2000)
    assert isinstance(res, FixedPointResult) and res.error_bound <= 1e-9
    err = float((res.x - x_true).norm(dim=1).max())
    assert err <= res.error_bound + 1e-13


@given(st.floats(0.05, 0.9), st.integers(1, 4), st.integers(0, 999), st.floats(0.0, 10.0))
def test_fixed_point_inverse_from_any_start_meets_its_error_bound(q, n, seed, offset):
    """The certified bound does not depend on the starting point ``x0`` (a decode's warm start):
    from a start far from or near the solution, the returned iterate is within its bound, and
    ``last_drift`` is the drift at an iterate of the run."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 5, dtype=torch.float64, generator=g)
    w = w / torch.linalg.matrix_norm(w, ord=2)
    f = lambda x: torch.tanh(x @ w.T)  # noqa: E731  (Lipschitz 1)
    x_true = torch.randn(n, 5, dtype=torch.float64, generator=g)
    y = x_true + q * f(x_true)
    x0 = x_true + offset * torch.randn(n, 5, dtype=torch.float64, generator=g)
    res = fixed_point_inverse(f, y, h=q, lipschitz=1.0, tol=1e-9, max_iter=2000, x0=x0)
    assert res.error_bound <= 1e-9
    assert float((res.x - x_true).norm(dim=1).max()) <= res.error_bound + 1e-13
    assert res.last_drift is not None and res.last_drift.shape == y.shape


def test_fixed_point_inverse_raises():
    f = lambda x: torch.sin(x)  # noqa: E731
    y = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(NonConvergenceError) as e:
        fixed_point_inverse(f, y, h=1.0, lipschitz=1.0)
    assert e.value.iterations == 0 and math.isinf(e.value.error)
    with pytest.raises(NonConvergenceError) as e:
        fixed_point_inverse(f, y, h=0.9, lipschitz=1.0, tol=1e-12, max_iter=3)
    assert e.value.iterations == 3 and e.value.error > 1e-12
    with pytest.raises(NonConvergenceError, match="rounding floor") as e:  # 4 eps ||y|| / (1 - q) > tol
        fixed_point_inverse(f, y, h=0.9, lipschitz=1.0, tol=1e-14, max_iter=3)
    assert e.value.iterations == 0 and e.value.error > 1e-14
    with pytest.raises(ValueError):
        fixed_point_inverse(f, y, h=0.5, lipschitz=1.0, tol=0.0)


@given(v=st.floats(0.05, 2.0), ell=st.floats(0.0, 1.5), s_max=st.floats(0.1, 20.0), seed=st.integers(0, 10**6))
def test_lognorm_exponents_enclose_the_linear_flow(v, ell, s_max, seed):
    """Theorem 1, tight form: dx/ds = (s/(v + s^2)) x + alpha(s) N x with ||N|| = ell (the exact
    Gaussian-data skip plus a nonlinear part, here linear for a dense truth). Every singular value of
    the flow map over [0, s_max] (scipy, rtol 1e-11) lies in [e^{Lambda-}, e^{Lambda+}]."""
    from scipy.integrate import solve_ivp

    from injcert.theory.flow import lognorm_exponents
    from injcert.model.schedule import CosineSchedule

    d = 3
    rng = np.random.default_rng(seed)
    n = rng.standard_normal((d, d))
    n = n / np.linalg.norm(n, 2) * ell

    def rhs(s, y):
        a = 1.0 / math.sqrt(1.0 + s * s)
        m = (s / (v + s * s)) * np.eye(d) + a * n
        return (m @ y.reshape(d, d)).reshape(-1)

    sol = solve_ivp(rhs, (0.0, s_max), np.eye(d).reshape(-1), rtol=1e-11, atol=1e-13, method="DOP853")
    phi = sol.y[:, -1].reshape(d, d)
    sv = np.linalg.svd(phi, compute_uv=False)
    lo, hi = lognorm_exponents(ell, v, CosineSchedule(), s_max)
    assert math.exp(lo) * (1 - 1e-8) <= sv.min() and sv.max() <= math.exp(hi) * (1 + 1e-8)
    # tighter than Groenwall with the skip charged at its sup: e^{+-(c_max + ell) asinh(s_max)}
    c_max = 1.0 / (2 * math.sqrt(v * (1 - v))) if v <= 0.5 else 1.0
    lam = (c_max + ell) * math.asinh(s_max)
    assert hi <= lam + 1e-12 and lo >= -lam - 1e-12
