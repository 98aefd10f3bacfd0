"""Theorem 4 (proofs/04-operator-norms.md): certified operator norms vs materialised Jacobians."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from injcert.errors import UnsupportedModuleError
from injcert.theory.spectral import (
    ROUNDING_SLACK,
    conv_size_independent_bound,
    conv_symbol_grid_bound,
    fantastic_four_bound,
    gram_iteration_bound,
    gram_iteration_bound_closed_form_grad,
    operator_norm_bound,
    operator_norm_interval,
)

from helpers import linear_norm


@st.composite
def conv_layers(draw):
    transposed = draw(st.booleans())
    g = draw(st.sampled_from([1, 2]))
    cin = g * draw(st.integers(1, 2))
    cout = g * draw(st.integers(1, 2))
    k = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    dil = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 2))
    n = draw(st.integers(3, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    scale = 10.0 ** draw(st.integers(-3, 3))
    torch.manual_seed(draw(st.integers(0, 10_000)))
    if transposed:
        op = draw(st.integers(0, max(stride, dil) - 1))
        layer = nn.ConvTranspose2d(cin, cout, k, stride, pad, op, g, True, dil)
        ext = dil * (k - 1) + 1
        if (n - 1) * stride - 2 * pad + ext + op < 1:
            pad = 0
            layer.padding = (0, 0)
    else:
        mode = draw(st.sampled_from(["zeros", "circular", "reflect", "replicate"]))
        if mode in ("circular", "reflect", "replicate"):
            pad = min(pad, n - 1)
        layer = nn.Conv2d(cin, cout, k, stride, pad, dil, g, True, mode)
        ext = dil * (k - 1) + 1
        if n + 2 * pad < ext:
            n = ext
    with torch.no_grad():
        layer.weight.mul_(scale)
    return layer.to(dtype), (cin, n, n)


@given(conv_layers())
def test_conv_bound_is_sound(case):
    layer, shape = case
    truth = linear_norm(layer, shape)
    bound = operator_norm_bound(layer, shape)
    assert bound >= truth * (1 - 1e-9)
    si = operator_norm_bound(layer, shape, size_independent=True)
    assert si >= truth * (1 - 1e-9)
    lo, hi = operator_norm_interval(layer, shape, n_iter=10)
    assert lo <= truth * (1 + 1e-9) and hi == bound


@given(st.integers(1, 8), st.integers(1, 8), st.integers(-3, 3), st.sampled_from([torch.float32, torch.float64]), st.integers(0, 999))
def test_linear_bound_is_sound(n_in, n_out, log_scale, dtype, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out).to(dtype)
    with torch.no_grad():
        layer.weight.mul_(10.0**log_scale)
    truth = linear_norm(layer, (n_in,))
    assert operator_norm_bound(layer, (n_in,)) >= truth * (1 - 1e-9)
    lo, hi = operator_norm_interval(layer, (n_in,), n_iter=30)
    assert lo <= truth * (1 + 1e-9) <= hi * (1 + 2e-9)


@given(st.integers(1, 3), st.sampled_from([1, 3]), st.integers(1, 2), st.integers(3, 6), st.integers(0, 999))
def test_circular_stride1_same_is_exact(c, k, dil, n, seed):
    torch.manual_seed(seed)
    pad = dil * (k - 1) // 2
    # pad <= 2 < 3 <= n: circular padding never wraps more than once (PyTorch refuses that)
    layer = nn.Conv2d(c, c, k, padding=pad, dilation=dil, padding_mode="circular").double()
    truth = linear_norm(layer, (c, n, n))
    bound = operator_norm_bound(layer, (c, n, n))
    assert truth * (1 - 1e-9) <= bound <= truth * (1 + 1e-6)


@given(st.integers(1, 5), st.integers(1, 5), st.integers(0, 8), st.booleans(), st.integers(0, 999))
def test_gram_iteration_upper_bound(m, n, n_iter, cplx, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, m, n, dtype=torch.complex128 if cplx else torch.float64, generator=g)
    truth = torch.linalg.matrix_norm(a, ord=2)
    b = gram_iteration_bound(a, n_iter)
    assert b.shape == (3,)
    assert bool((b >= truth * (1 - 1e-12)).all())


def test_gram_iteration_no_overflow_and_converges():
    a = torch.randn(20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e150
    b = gram_iteration_bound(a, 12)
    truth = torch.linalg.matrix_norm(a, ord=2)
    # exact-arithmetic upper bound; float64 rounding is what ROUNDING_SLACK covers
    assert torch.isfinite(b) and b >= truth * (1 - 1e-12) and b <= truth * 1.001
    assert gram_iteration_bound(torch.zeros(3, 4), 6) == 0


def test_gram_iteration_differentiable_float32():
    w = torch.randn(8, 5, requires_grad=True)
    gram_iteration_bound(w, 6).backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    torch.autograd.gradcheck(lambda m: gram_iteration_bound(m, 3), (torch.randn(4, 3, dtype=torch.float64, requires_grad=True),))


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(0, 6), st.integers(-3, 3),
       st.lists(st.sampled_from([0.0, 1.0, -2.5]), min_size=1, max_size=4), st.integers(0, 999))
def test_gram_closed_form_gradient_equals_autograd(batch, m, n, n_iter, log_scale, weights, seed):
    """Same values as gram_iteration_bound (bit for bit: the same operations) and, for every shape,
    orientation, scale and number of steps, the gradient autograd computes through the iteration;
    items whose incoming gradient is zero get exactly zero."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, m, n, dtype=torch.float64, generator=gen) * 10.0**log_scale
    probe = torch.tensor((weights * batch)[:batch], dtype=torch.float64)
    a1, a2 = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    ref = gram_iteration_bound(a1, n_iter)
    got = gram_iteration_bound_closed_form_grad(a2, n_iter)
    assert torch.equal(ref.detach(), got.detach())
    (ref * probe).sum().backward()
    (got * probe).sum().backward()
    assert torch.allclose(a2.grad, a1.grad, rtol=1e-7, atol=1e-10 * a1.grad.abs().max().item())
    assert bool((a2.grad[probe == 0] == 0).all())
    with torch.no_grad():  # no grad wanted: the plain iteration
        assert torch.equal(gram_iteration_bound_closed_form_grad(a, n_iter), gram_iteration_bound(a, n_iter))


def test_gram_closed_form_gradient_zero_matrix_and_float32():
    z = torch.zeros(2, 3, 4, requires_grad=True)
    gram_iteration_bound_closed_form_grad(z, 4).sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    w = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    w1, w2 = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    gram_iteration_bound(w1, 6).backward()
    gram_iteration_bound_closed_form_grad(w2, 6).backward()
    assert torch.allclose(w2.grad, w1.grad, rtol=1e-4, atol=1e-6)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 2), st.sampled_from([1, 2]), st.integers(0, 999))
def test_size_independent_differentiable_bound_is_sound(cin, cout, k, dil, groups, seed):
    torch.manual_seed(seed)
    layer = nn.Conv2d(cin * groups, cout * groups, k, padding=k // 2 * dil, dilation=dil, groups=groups).double()
    w = layer.weight.detach()
    for n in (4, 7):
        truth = linear_norm(layer, (cin * groups, n, n))
        assert float(fantastic_four_bound(w, 6, groups)) >= truth * (1 - 1e-9)
        assert float(conv_size_independent_bound(w, groups=groups, dilation=dil, grid=None)) >= truth * (1 - 1e-9)
        assert float(conv_symbol_grid_bound(w, groups=groups, dilation=dil)) >= truth * (1 - 1e-9)
    tw = nn.ConvTranspose2d(cin * groups, cout * groups, k, stride=2, padding=0, groups=groups).double()
    truth = linear_norm(tw, (cin * groups, 4, 4))
    assert float(conv_size_independent_bound(tw.weight.detach(), groups=groups)) >= truth * (1 - 1e-9)


def test_size_independent_bound_gradient():
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    conv_size_independent_bound(w, grid=16).backward()
    assert torch.isfinite(w.grad).all()


def test_size_independent_dominates_every_size():
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 2, 3, padding=1).double()
    si = operator_norm_bound(layer, (2, 4, 4), size_independent=True)
    for n in (2, 3, 5, 9):
        assert si >= linear_norm(layer, (2, n, n))


def test_unsupported_and_bad_shapes():
    with pytest.raises(UnsupportedModuleError, match="ReLU"):
        operator_norm_bound(nn.ReLU(), (3,))
    with pytest.raises(ValueError):
        operator_norm_bound(nn.Linear(3, 2), (4,))
    with pytest.raises(ValueError):
        operator_norm_bound(nn.Conv2d(3, 2, 3), (2, 5, 5))
    assert ROUNDING_SLACK > 0 and math.isfinite(ROUNDING_SLACK)
