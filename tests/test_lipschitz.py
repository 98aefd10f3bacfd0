"""Theorem 5 (proofs/05-compositional-lipschitz.md): compositional bounds are sound."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from injcert.errors import UnsupportedModuleError
from injcert.testing import exact_jacobian_norm
from injcert.theory import lipschitz as lip
from injcert.theory.lipschitz import (
    LipschitzBound,
    concat_bound,
    finite_difference_lower_bound,
    lipschitz_bound,
    lipschitz_lower_bound,
    register_lipschitz_rule,
    residual_bound,
    sum_bound,
)


def _max_jacobian_norm(net: nn.Module, shape: tuple, n_points: int = 4, seed: int = 0) -> float:
    """The largest exact Jacobian norm at ``n_points`` standard normal points (drawn one at a time)."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.cat([torch.randn((1, *shape), dtype=torch.float64, generator=g) for _ in range(n_points)])
    return exact_jacobian_norm(net, xs)


@st.composite
def small_nets(draw):
    torch.manual_seed(draw(st.integers(0, 10_000)))
    acts = [nn.ReLU(), nn.SiLU(), nn.GELU(), nn.Tanh(), nn.LeakyReLU(0.2), nn.ELU(1.5), nn.Sigmoid()]
    c = draw(st.integers(1, 3))
    layers = [nn.Conv2d(2, c, 3, padding=1, padding_mode=draw(st.sampled_from(["zeros", "circular"])))]
    layers.append(draw(st.sampled_from(acts)))
    pool = draw(st.sampled_from(["avg", "max", "none", "up"]))
    if pool == "avg":
        layers.append(nn.AvgPool2d(2))
    elif pool == "max":
        layers.append(nn.MaxPool2d(3, 1, 1))
    elif pool == "up":
        layers.append(nn.Upsample(scale_factor=2))
    layers += [nn.Conv2d(c, 2, 3, stride=draw(st.integers(1, 2)), padding=1), nn.Flatten()]
    net = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 2, 4, 4, dtype=torch.float64)).shape[1]
    net.append(nn.Linear(out, 3).double())
    return net


@given(small_nets())
def test_network_bound_dominates_sampled_jacobians(net):
    shape = (2, 4, 4)
    b = lipschitz_bound(net, shape)
    assert isinstance(b, LipschitzBound)
    truth = _max_jacobian_norm(net, shape)
    assert b.value >= truth * (1 - 1e-9)
    assert lipschitz_bound(net, shape, size_independent=True).value >= truth * (1 - 1e-9)
    lower = lipschitz_lower_bound(net, torch.randn(2, *shape, dtype=torch.float64), n_iter=5, ascent_steps=1)
    assert lower <= b.value * (1 + 1e-9)
    assert math.isclose(b.value, math.prod(r.bound for r in b.layers), rel_tol=1e-12)


def test_table_and_dict():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    b = lipschitz_bound(net, (3,))
    names = [r.name for r in b.layers]
    assert names == ["0", "1", "2.0"]
    assert "Linear" in b.table() and "ReLU" in b.table()
    d = b.to_dict()
    assert d["value"] == b.value and len(d["layers"]) == 3


@pytest.mark.parametrize(
    "module",
    [nn.GroupNorm(1, 2), nn.LayerNorm([2, 4, 4]), nn.BatchNorm2d(2).train(), nn.Dropout(0.5).train(), nn.Hardswish()],
)
def test_unsupported_modules_raise_naming_type(module):
    with pytest.raises(UnsupportedModuleError, match=type(module).__name__):
        lipschitz_bound(nn.Sequential(nn.Identity(), module), (2, 4, 4))


def test_multihead_attention_unsupported():
    with pytest.raises(UnsupportedModuleError, match="MultiheadAttention"):
        lipschitz_bound(nn.MultiheadAttention(4, 1), (3, 4))


def test_eval_batchnorm_and_dropout():
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([0.25, 4.0]))
        bn.weight.copy_(torch.tensor([-1.0, 3.0]))
    b = lipschitz_bound(nn.Sequential(bn, nn.Dropout(0.3).eval()), (2, 3, 3))
    assert b.value >= 1.0 / math.sqrt(0.25 + bn.eps) and b.value <= 2.0 * (1 + 1e-8)


def test_registry_inherits_along_mro_and_custom_rules():
    class MyReLU(nn.ReLU):
        pass

    assert lipschitz_bound(MyReLU(), (3,)).value == 1.0

    class Scale(nn.Module):
        def forward(self, x):
            return 3 * x

    # no rule: the forward is traced and bounded op by op (the traced bound is exact here)
    assert lipschitz_bound(Scale(), (3,)).value == 3.0

    # a registered rule wins over tracing (a looser, still sound, value shows which one ran)
    @register_lipschitz_rule(Scale)
    def _rule(module, shape, ctx):
        return 4.0, shape

    assert lipschitz_bound(nn.Sequential(Scale(), Scale()), (3,)).value == 16.0


def test_combinators():
    assert residual_bound(0.5, alpha=-2.0) == 2.0
    assert sum_bound(1.0, 2.0) == 3.0
    assert concat_bound(3.0, 4.0) == 5.0


def test_smooth_activation_constants_against_dense_grid():
    x = torch.linspace(-12, 12, 480_001, dtype=torch.float64, requires_grad=True)
    for act, const in [(nn.SiLU(), lip.SILU_LIPSCHITZ), (nn.GELU(), lip.GELU_LIPSCHITZ), (nn.GELU(approximate="tanh"), lip.GELU_TANH_LIPSCHITZ)]:
        (g,) = torch.autograd.grad(act(x).sum(), x)
        dense = float(g.abs().max())
        assert dense <= const <= dense * (1 + 1e-9)
    assert 1.0998 < lip.SILU_LIPSCHITZ < 1.0999 and 1.1289 < lip.GELU_LIPSCHITZ < 1.1290


def test_gelu_tanh_second_derivative_formula():
    x = torch.linspace(-4, 4, 17, dtype=torch.float64)
    for xi in x.tolist():
        fd = (lip._gelu_tanh_d1(xi + 1e-6) - lip._gelu_tanh_d1(xi - 1e-6)) / 2e-6
        assert abs(fd - lip._gelu_tanh_d2(xi)) < 1e-6


@pytest.mark.parametrize("k,s,p,cip,ceil", [(2, 2, 0, True, False), (3, 1, 1, True, False), (3, 2, 1, False, False), (3, 2, 1, True, True)])
def test_avgpool_exact(k, s, p, cip, ceil):
    pool = nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=cip)
    truth = _max_jacobian_norm(pool, (1, 6, 6), n_points=1)
    b = lipschitz_bound(pool, (1, 6, 6)).value
    assert truth * (1 - 1e-9) <= b <= truth * (1 + 1e-8)
    assert lipschitz_bound(pool, (1, 6, 6), size_independent=True).value >= truth * (1 - 1e-9)


def test_nearest_upsample_exact():
    up = nn.Upsample(scale_factor=(2, 3))
    truth = _max_jacobian_norm(up, (1, 3, 3), n_points=1)
    assert math.isclose(truth, math.sqrt(6))
    assert math.isclose(lipschitz_bound(up, (1, 3, 3)).value, math.sqrt(6))


def test_finite_difference_lower_bound():
    fn = nn.ReLU()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert 0 < finite_difference_lower_bound(fn, x, x + 0.1) <= 1.0 + 1e-12
    with pytest.raises(ValueError):
        finite_difference_lower_bound(fn, x, x)


def test_lower_bound_achieves_linear_norm():
    torch.manual_seed(1)
    lin = nn.Linear(6, 6).double()
    truth = float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2))
    lb = lipschitz_lower_bound(lin, torch.randn(3, 6, dtype=torch.float64), n_iter=50, ascent_steps=0)
    assert truth * 0.999 <= lb <= truth * (1 + 1e-12)
