"""Theorem 6 (proofs/06-log-determinants.md): log-determinants and trace estimators."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from injcert.solvers import integrate
from injcert.theory.logdet import TraceEstimate, liouville_logdet, logdet, per_example_jacobian, step_logdet_interval, trace, trace_estimate

from helpers import dense_jacobian


def _field(z: torch.Tensor) -> torch.Tensor:
    return 0.4 * torch.tanh(z) + 0.3 * z.roll(1, dims=-1) - 0.1 * z.flip(-2)


def test_exact_logdet_matches_dense_slogdet():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    fn = lambda z: z + _field(z)  # noqa: E731
    got = logdet(fn, x)
    for i in range(3):
        jac = dense_jacobian(fn, x[i : i + 1])  # (18, 18), reverse mode: independent of logdet's jacfwd
        assert torch.allclose(got[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-12)


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_trace_estimators_within_three_stderr(method, probe):
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    truth = per_example_jacobian(_field, x).diagonal(dim1=-2, dim2=-1).sum(-1)
    est = trace(_field, x, method=method, n_probes=48, probe=probe, generator=torch.Generator().manual_seed(2))
    assert isinstance(est, TraceEstimate) and est.method == method
    assert bool(((est.value - truth).abs() <= 3 * est.stderr + 1e-9).all())
    value, stderr = trace_estimate(_field, x, method, 48, torch.Generator().manual_seed(3), probe)
    assert bool(((value - truth).abs() <= 3 * stderr + 1e-9).all())


def test_bad_method_and_probe():
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="unknown"):
        trace(torch.sin, x, method="nope")
    with pytest.raises(ValueError, match="probe"):
        trace(torch.sin, x, method="hutchinson", probe="nope")
    # logdet computes log-determinants only: a trace estimator is refused, not returned as one
    with pytest.raises(ValueError, match="trace"):
        logdet(torch.sin, x, method="hutchinson")


@given(st.integers(1, 6), st.floats(0.01, 2.0), st.floats(0.0, 0.99), st.integers(0, 999))
def test_step_interval_contains_truth(d, lip, q, seed):
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(d, d, dtype=torch.float64, generator=g)
    j = j / torch.linalg.matrix_norm(j, ord=2) * lip  # ||J|| = L exactly
    h = q / lip
    lo, hi = step_logdet_interval(h, lip, d)
    true = float(torch.linalg.slogdet(torch.eye(d, dtype=torch.float64) + h * j).logabsdet)
    assert lo <= true <= hi


def test_step_interval_rejects_large_steps():
    with pytest.raises(ValueError, match="< 1"):
        step_logdet_interval(1.0, 1.0, 3)


def test_liouville_linear_flow():
    a = torch.tensor([[-0.3, 0.5], [0.1, 0.2]], dtype=torch.float64)
    x0 = torch.randn(2, 2, dtype=torch.float64)
    grid = torch.linspace(0, 1, 401)
    kept: list = []  # the trajectory of the Euler integrator that runs (the one loop of injcert.solvers)
    integrate("ddim", lambda s, z, c: z @ a.T, grid.to(torch.float64), x0, direction="encode", keep=kept)
    traj = [st_.x for st_ in kept]
    ld = liouville_logdet(lambda t, z: z @ a.T, traj, grid).value
    assert torch.allclose(ld, torch.full((2,), float(torch.trace(a)), dtype=torch.float64), atol=1e-9)  # tr(A)*T, exact
    ld2 = liouville_logdet(lambda t, z: z @ a.T, traj, grid[:20], method="hutchinson", n_probes=8)
    assert ld2.value.shape == (2,) and bool((ld2.stderr >= 0).all())
    with pytest.raises(ValueError, match="states"):
        liouville_logdet(lambda t, z: z @ a.T, traj[:3], grid)


def test_chunked_jacobian_equals_the_dense_one():
    """per_example_jacobian(chunk_size=k) is the same matrix as the one-batch jacfwd."""
    from injcert.theory.logdet import exact_logdet, per_example_jacobian

    torch.manual_seed(0)
    lin = torch.nn.Conv2d(2, 2, 3, padding=1).double()
    fn = lambda z: torch.tanh(lin(z)) + z  # noqa: E731
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    full = per_example_jacobian(fn, x)
    for k in (1, 5, 24, 100):
        assert torch.allclose(per_example_jacobian(fn, x, chunk_size=k), full, rtol=0, atol=1e-14)
    assert torch.allclose(exact_logdet(fn, x, chunk_size=7), exact_logdet(fn, x), rtol=0, atol=1e-12)
