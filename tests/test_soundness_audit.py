"""Adversarial soundness guards (audit): certified bounds vs exact float64 Jacobian SVDs.

Every test compares a certified upper bound with the *truth*: the largest singular value of the
Jacobian materialised with ``torch.func.jacrev`` in float64 on small inputs. Configurations are
deliberately hostile: stride > kernel, dilation with stride, output padding, groups, padding
larger than the kernel, asymmetric and even kernels with ``padding="same"``, 1x1 / 2x3 inputs,
circular padding on inputs smaller than the kernel, reflect/replicate, weight scales 1e±8,
rank-1 and pure high-frequency kernels, float32 layers.
"""

from __future__ import annotations

import math
import warnings
from decimal import Decimal, getcontext
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from injcert.errors import UnsupportedModuleError
from injcert.theory.flow import fixed_point_inverse, gronwall_constants
from injcert.errors import NonConvergenceError
from injcert.testing import exact_jacobian_norm
from injcert.theory.lipschitz import (
    GELU_LIPSCHITZ,
    GELU_TANH_LIPSCHITZ,
    SILU_LIPSCHITZ,
    concat_bound,
    finite_difference_lower_bound,
    lipschitz_bound,
    lipschitz_lower_bound,
    product_bound,
    residual_bound,
    sum_bound,
)
from injcert.theory.logdet import step_logdet_interval
from injcert.theory.spectral import conv_size_independent_bound, conv_symbol_grid_bound, operator_norm_bound

from helpers import dense_jacobian, linear_norm, tiny_unet

torch.set_num_threads(1)
getcontext().prec = 50
warnings.filterwarnings("ignore", message=".*padding='same'.*")

_SETTINGS = settings(deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _shape_kernel(weight: torch.Tensor, kind: str, seed: int) -> None:
    """Overwrite ``weight`` in place with an adversarial kernel."""
    g = torch.Generator().manual_seed(seed)
    o, i, kh, kw = weight.shape
    a = torch.arange(kh, dtype=torch.float64).view(-1, 1)
    b = torch.arange(kw, dtype=torch.float64).view(1, -1)
    if kind == "rank1":
        w = torch.randn(o, i, kh, 1, generator=g, dtype=torch.float64) * torch.randn(1, 1, 1, kw, generator=g, dtype=torch.float64)
    elif kind == "nyquist":  # all energy at the highest frequency
        w = torch.randn(o, i, 1, 1, generator=g, dtype=torch.float64) * (-1.0) ** (a + b)
    elif kind == "offgrid":  # a cosine at a random (off-grid) frequency
        f1, f2 = (float(v) * math.pi for v in torch.rand(2, generator=g))
        w = torch.randn(o, i, 1, 1, generator=g, dtype=torch.float64) * torch.cos(f1 * a + f2 * b)
    else:
        w = torch.randn(o, i, kh, kw, generator=g, dtype=torch.float64)
    with torch.no_grad():
        weight.copy_(w.to(weight.dtype))


@st.composite
def hostile_convs(draw):
    transposed = draw(st.booleans())
    g = draw(st.sampled_from([1, 2]))
    cin, cout = g * draw(st.integers(1, 2)), g * draw(st.integers(1, 2))
    kh = draw(st.integers(1, 5))
    kw = draw(st.sampled_from([kh, 1, 2, 5]))
    s = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    if transposed:
        p = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
        op = (draw(st.integers(0, max(s[0], d[0]) - 1)), draw(st.integers(0, max(s[1], d[1]) - 1)))
        layer = nn.ConvTranspose2d(cin, cout, (kh, kw), s, p, op, g, True, d)
    else:
        mode = draw(st.sampled_from(["zeros", "circular", "reflect", "replicate"]))
        if draw(st.booleans()) and draw(st.booleans()):
            padding, s = "same", (1, 1)
        else:
            padding = (draw(st.integers(0, 6)), draw(st.integers(0, 6)))
        layer = nn.Conv2d(cin, cout, (kh, kw), s, padding, d, g, True, mode)
    _shape_kernel(layer.weight, draw(st.sampled_from(["random", "rank1", "nyquist", "offgrid"])), draw(st.integers(0, 9999)))
    with torch.no_grad():
        layer.weight.mul_(10.0 ** draw(st.sampled_from([-8, -3, 0, 3, 8])))
    layer = layer.to(draw(st.sampled_from([torch.float32, torch.float64])))
    return layer, (cin, h, w)


def _valid(layer: nn.Module, shape: tuple) -> bool:
    try:
        with torch.no_grad():
            out = layer.to(torch.float64)(torch.zeros((1, *shape), dtype=torch.float64))
        return out.numel() > 0
    except RuntimeError:
        return False


@_SETTINGS
@given(hostile_convs())
def test_conv_bounds_dominate_truth_on_hostile_configs(case):
    layer, shape = case
    assume(_valid(layer, shape))
    truth = linear_norm(layer, shape)
    assert operator_norm_bound(layer, shape) >= truth
    assert operator_norm_bound(layer, shape, size_independent=True) >= truth


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(2, 2, 3, stride=1, padding=2, padding_mode="circular"),
        lambda: nn.Conv2d(2, 3, (1, 5), stride=(1, 2), padding=(0, 4), dilation=(1, 2), padding_mode="circular"),
        lambda: nn.Conv2d(2, 2, 4, stride=3, padding=3, dilation=2),
        lambda: nn.Conv2d(2, 2, 2, padding="same", dilation=3),
        lambda: nn.Conv2d(1, 2, 3, padding=2, padding_mode="replicate"),
        lambda: nn.ConvTranspose2d(2, 2, 3, stride=3, padding=1, output_padding=2, dilation=2),
    ],
)
def test_size_independent_bound_dominates_every_small_size(make):
    torch.manual_seed(0)
    layer = make().to(torch.float64)
    _shape_kernel(layer.weight, "nyquist", 1)
    bounds = set()
    for n1 in range(1, 13):
        for n2 in (1, 2, 3, n1):
            shape = (layer.in_channels, n1, n2)
            if not _valid(layer, shape):
                continue
            bounds.add(operator_norm_bound(layer, shape, size_independent=True))
            assert max(bounds) == min(bounds)  # really independent of the size
            assert min(bounds) >= linear_norm(layer, shape)
    assert bounds


def _dense_symbol_sup(w: torch.Tensor, dilation: tuple, n: int = 192) -> float:
    om = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    a = torch.arange(w.shape[-2], dtype=torch.float64) * dilation[0]
    b = torch.arange(w.shape[-1], dtype=torch.float64) * dilation[1]
    e1, e2 = torch.exp(1j * om[:, None] * a), torch.exp(1j * om[:, None] * b)
    sym = torch.einsum("pa,qb,oiab->pqoi", e1, e2, w.to(torch.complex128))
    return float(torch.linalg.matrix_norm(sym, ord=2).max())


@_SETTINGS
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 2), st.integers(0, 9999),
       st.sampled_from(["random", "rank1", "nyquist", "offgrid"]), st.integers(0, 3))
def test_sampled_symbol_bound_is_sound_on_coarse_grids(kh, kw, dil, ch, seed, kind, extra):
    w = torch.empty(ch, ch, kh, kw, dtype=torch.float64)
    _shape_kernel(w, kind, seed)
    d = (dil, 1)
    dm1 = (dil * (kh - 1), kw - 1)
    # coarsest grid with tau^2 < 2 along the dominant axis, plus a few extra points
    axes = sum(1 for dd in dm1 if dd)
    grid = tuple(math.ceil(math.pi * dd * axes / 1.35) + extra if dd else 1 for dd in dm1)
    sup = _dense_symbol_sup(w, d)
    bound = float(conv_symbol_grid_bound(w, grid, 1, d))
    assert math.isfinite(bound)  # tau^2 < 2: the Bernstein inflation is really exercised
    assert bound >= sup * (1 - 1e-12)
    assert float(conv_size_independent_bound(w, groups=1, dilation=d, grid=None)) >= sup * (1 - 1e-12)
    assert float(conv_size_independent_bound(w)) >= sup * (1 - 1e-12)


def test_smooth_activation_constants_dominate_dense_derivatives():
    x = torch.linspace(-12, 12, 400_001, dtype=torch.float64, requires_grad=True)
    for mod, const in [(nn.SiLU(), SILU_LIPSCHITZ), (nn.GELU(), GELU_LIPSCHITZ),
                       (nn.GELU(approximate="tanh"), GELU_TANH_LIPSCHITZ)]:
        (g,) = torch.autograd.grad(mod(x).sum(), x)
        assert const >= float(g.abs().max())
        assert const <= float(g.abs().max()) * (1 + 1e-8)  # and tight
        assert lipschitz_bound(mod, (3,)).value == const


@_SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2), st.integers(0, 2),
       st.booleans(), st.booleans(), st.sampled_from([None, 1, 3]), st.integers(1, 9), st.integers(1, 9))
def test_avgpool_bounds(k1, k2, s1, s2, p1, p2, ceil, cip, div, h, w):
    m = nn.AvgPool2d((k1, k2), (s1, s2), (min(p1, k1 // 2), min(p2, k2 // 2)), ceil, cip, div)
    shape = (1, h, w)
    assume(_valid(m, shape))
    truth = linear_norm(m, shape)
    assert lipschitz_bound(m, shape).value >= truth
    assert lipschitz_bound(m, shape, size_independent=True).value >= truth


@pytest.mark.parametrize("sf", [0.5, 1.5, 2.0, 2.5, (2.0, 3.0), (1.0, 2.0), 7 / 3])
def test_nearest_upsample_scale_factor_bounds(sf):
    m = nn.Upsample(scale_factor=sf, mode="nearest")
    for h in range(1, 7):
        for w in (1, 2, 5):
            shape = (1, h, w)
            if not _valid(m, shape):
                continue
            count = _max_copies(dense_jacobian(m, torch.zeros(1, *shape, dtype=torch.float64)))
            assert _ge_sqrt(lipschitz_bound(m, shape).value, count)  # exact truth sqrt(count)
            assert _ge_sqrt(lipschitz_bound(m, shape, size_independent=True).value, count)


def _max_copies(jac: torch.Tensor) -> int:
    """For a 0/1 matrix with at most one 1 per row (nearest upsampling, max pooling a.e.)
    J^T J = diag(column counts), so ||J|| = sqrt(max column count) exactly: return that count."""
    assert bool(((jac == 0) | (jac == 1)).all()) and bool((jac.sum(dim=1) <= 1).all())
    count = int(jac.sum(dim=0).max())
    svd = float(torch.linalg.svdvals(jac)[0]) if jac.numel() else 0.0
    assert math.isclose(svd, math.sqrt(count), rel_tol=1e-12)  # sanity check of the formula
    return count


def _ge_sqrt(bound: float, count: int) -> bool:
    """bound >= sqrt(count), decided exactly (bound^2 >= count in rationals)."""
    return Fraction(bound) ** 2 >= count


def test_maxpool_bound_at_a_pixel_shared_by_many_windows():
    for k, s, d, p in [(3, 1, 1, 1), ((3, 2), (1, 2), 1, (1, 0)), (4, 2, 2, 2), (2, 1, 1, 0)]:
        m = nn.MaxPool2d(k, s, p, d)
        shape = (1, 7, 7)
        x = torch.randn(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        x[0, 0, 3, 3] = 100.0
        assert _ge_sqrt(lipschitz_bound(m, shape).value, _max_copies(dense_jacobian(m, x)))  # exact truth


@pytest.mark.parametrize(
    "mod",
    [nn.Softmax(dim=1), nn.LayerNorm(4), nn.GroupNorm(1, 1), nn.PReLU(), nn.Mish(), nn.Hardswish(), nn.SELU(),
     nn.Upsample(scale_factor=2, mode="bilinear"), nn.UpsamplingBilinear2d(scale_factor=2), nn.ModuleList([nn.ReLU()]),
     nn.PixelShuffle(2), nn.AdaptiveAvgPool2d(1), nn.Conv1d(1, 1, 3), nn.Threshold(0.1, 20.0), nn.BatchNorm2d(1)],
)
def test_modules_without_rule_raise(mod):
    with pytest.raises(UnsupportedModuleError):
        lipschitz_bound(mod, (1, 4, 4))


def test_custom_module_is_traced_or_refused_by_name():
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    class Square(nn.Module):
        def forward(self, x):
            return x * x  # a product of two x-dependent tensors has no global bound

    assert lipschitz_bound(nn.Sequential(nn.ReLU(), Doubler()), (3,)).value == 2.0
    with pytest.raises(UnsupportedModuleError, match="mul"):
        lipschitz_bound(nn.Sequential(nn.ReLU(), Square()), (3,))


def test_sequential_of_everything_dominates_jacobians():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(3), nn.GELU(),
        nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False, padding=1), nn.SiLU(),
        nn.Upsample(scale_factor=2), nn.ConvTranspose2d(3, 2, 2, stride=2), nn.MaxPool2d(3, 1, 1), nn.Tanh(),
    ).double()
    with torch.no_grad():
        net[1].running_var.uniform_(0.01, 0.1)
        net[1].weight.uniform_(-3, 3)
    net.eval()
    shape = (2, 5, 3)
    bound = lipschitz_bound(net, shape).value
    bound_si = lipschitz_bound(net, shape, size_independent=True).value
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(1, *shape, dtype=torch.float64, generator=g) * 3
        truth = exact_jacobian_norm(net, x)
        assert truth <= bound <= bound_si * (1 + 1e-12)


def _saturated_tiny_unet(**kw):
    from injcert.model.layers import LipConv2d, ResBlock

    model = tiny_unet(base_channels=2, emb_dim=4, **kw).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):  # two training steps on random data
        x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
        loss = (model(x, torch.rand(2, dtype=torch.float64)) - torch.randn_like(x)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # saturate every tanh: |alpha| = alpha_max, modulation = 1 +- s_max, |a(t)| = skip_max
        for mod in model.modules():
            if isinstance(mod, ResBlock):
                mod.alpha_raw.fill_(40.0)
                mod.emb.weight.mul_(1e3)
                mod.emb.bias.mul_(1e3)
            if isinstance(mod, LipConv2d) and not mod.constrained:
                mod.weight.mul_(2.0)
        model.skip_head.weight.mul_(1e3)
        model.skip_head.bias.fill_(50.0)
    return model.eval()


@pytest.mark.parametrize("kw", [dict(lipschitz_budget=3.0, modulation=0.9),
                                dict(lipschitz_budget=None, activation="relu", skip_max=2.0)])
def test_cond_unet_bound_dominates_jacobians_over_t_and_conditions(kw):
    model = _saturated_tiny_unet(**kw)
    g = torch.Generator().manual_seed(0)
    for h, w in [(1, 1), (3, 5)]:  # odd sizes trigger the internal zero padding
        shape = (3, h, w)
        bound = lipschitz_bound(model, shape).value
        bound_si = lipschitz_bound(model, shape, size_independent=True).value
        assert bound <= bound_si * (1 + 1e-12)
        if kw.get("lipschitz_budget"):
            assert bound_si <= kw["lipschitz_budget"]
        for t in (0.0, model.schedule.t_max, 1.0):
            x = torch.randn(3, h, w, dtype=torch.float64, generator=g) * 4
            y = torch.randn(1, 3, h, w, dtype=torch.float64, generator=g) * 5
            m = torch.rand(1, 1, h, w, dtype=torch.float64, generator=g).round()
            assert exact_jacobian_norm(lambda z: model(z, t, y, m), x.unsqueeze(0)) <= bound
        lower = lipschitz_lower_bound(lambda z: model(z, 0.0), torch.randn(2, *shape, dtype=torch.float64, generator=g),
                                      n_iter=3, ascent_steps=1, generator=g)
        assert lower <= bound


def test_fixed_point_inverse_meets_bound_when_rounding_is_below_tol():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, dtype=torch.float64, generator=g)
    a = a / torch.linalg.matrix_norm(a, 2) * 0.999999  # ||A|| < 1
    for h in (0.3, -0.9):
        xstar = torch.randn(3, 16, dtype=torch.float64, generator=g) * 10
        y = xstar + h * xstar @ a.T
        res = fixed_point_inverse(lambda x: x @ a.T, y, h=h, lipschitz=1.0, tol=1e-9, max_iter=5000)
        err = float((res.x - xstar).norm(dim=1).max())
        assert err <= res.error_bound <= 1e-9


@_SETTINGS
@given(st.integers(1, 6), st.floats(-0.99, 0.99), st.integers(0, 9999))
def test_step_logdet_interval_contains_truth(d, h, seed):
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(d, d, dtype=torch.float64, generator=g)
    lip = float(torch.linalg.matrix_norm(j, 2))
    j = j / lip  # ||J|| = 1 (attained)
    lo, hi = step_logdet_interval(h, 1.0, d)
    val = float(torch.linalg.slogdet(torch.eye(d, dtype=torch.float64) + h * j).logabsdet)
    assert lo <= val <= hi


def test_gronwall_encloses_for_moderate_lambda():
    for lam in (0.01, 0.5, 1.0, 2.75, 7.0):
        lo, hi, big = gronwall_constants([lam / 2, lam / 2], [1.0, -1.0])
        assert big >= lam
        assert Decimal(lo) <= (-Decimal(lam)).exp() and Decimal(hi) >= Decimal(lam).exp()


# ----------------------------------------------------------------------------- audit round 2
# (reproducers of bugs found by the adversarial audit; each failed before the fix)


def _true_norm(layer: nn.Module, shape: tuple) -> float:
    """The norm of the Jacobian at 0 of ``layer`` as it runs (hooks, overridden forwards: no bias removed)."""
    return exact_jacobian_norm(layer.to(torch.float64), torch.zeros((1, *shape), dtype=torch.float64))


@pytest.mark.parametrize("beta,threshold", [(1.0, 20.0), (1.0, 0.0), (2.0, 1.0)])
def test_softplus_threshold_jump_is_refused(beta, threshold):
    m = nn.Softplus(beta=beta, threshold=threshold)
    c = threshold / beta  # PyTorch switches to the identity for beta*x > threshold: a jump here
    x = torch.tensor([[c + 1e-13]], dtype=torch.float64)
    y = torch.tensor([[c - 1e-13]], dtype=torch.float64)
    assert finite_difference_lower_bound(m, x, y) > 1.0  # not 1-Lipschitz as evaluated
    with pytest.raises(UnsupportedModuleError, match="Softplus.*threshold"):
        lipschitz_bound(m, (1,))
    with pytest.raises(UnsupportedModuleError, match="Softplus"):
        lipschitz_bound(nn.Sequential(nn.Linear(1, 1), m), (1,))


def test_upsample_size_mode_is_refused_size_independently():
    m = nn.Upsample(size=(8, 8), mode="nearest")
    with pytest.raises(UnsupportedModuleError, match="size"):
        lipschitz_bound(m, (1, 4, 4), size_independent=True)  # would say 2, but 1x1 -> 8x8 is 8
    for n in (1, 3, 4, 8, 11):  # the per-shape bound stays valid
        shape = (1, n, n)
        assert _ge_sqrt(lipschitz_bound(m, shape).value, _max_copies(dense_jacobian(m, torch.zeros(1, *shape, dtype=torch.float64))))


def test_maxpool_and_upsample_round_sqrt_up():
    assert math.sqrt(3) ** 2 < 3  # fl(sqrt(3)) < sqrt(3)
    b = lipschitz_bound(nn.MaxPool2d((3, 1), 1), (1, 5, 5)).value
    assert _ge_sqrt(b, 3) and b == math.nextafter(math.sqrt(3), 4)  # the smallest float >= sqrt(3)
    b = lipschitz_bound(nn.Upsample(scale_factor=(3.0, 1.0)), (1, 4, 4)).value
    assert _ge_sqrt(b, 3)
    assert lipschitz_bound(nn.Upsample(scale_factor=2), (1, 4, 4)).value == 2.0  # exact stays exact


def test_combinators_round_up():
    tiny = 5e-324
    vals = [0.1, 0.2, 0.7, 1 / 3, 1e-300, 3.0, 1e300]
    def F(v):  # exact rationals; an overflow to inf is a (trivially) sound upper bound
        return Fraction(10**1000) if v == math.inf else Fraction(v)

    for a in vals:
        for b in vals:
            assert F(sum_bound(a, b)) >= F(a) + F(b)
            assert F(product_bound(a, b)) >= F(a) * F(b)
            assert F(concat_bound(a, b)) ** 2 >= F(a) ** 2 + F(b) ** 2
            assert F(residual_bound(a, b)) >= 1 + F(a) * F(b)
    assert F(product_bound(*[1 / 3] * 7)) >= F(1 / 3) ** 7
    assert F(sum_bound(*[0.1] * 10)) >= 10 * F(0.1) and sum(0.1 for _ in range(10)) < 10 * F(0.1)
    assert product_bound(1e-200, 1e-200) >= tiny  # no underflow to 0
    assert product_bound(0.0, math.inf) == 0.0 and sum_bound(1.0, math.inf) == math.inf
    assert concat_bound(3.0, 4.0) == 5.0 and sum_bound(1.0, 2.0) == 3.0  # exact stays exact
    with pytest.raises(ValueError):
        sum_bound(1.0, float("nan"))
    # Sequential composes with product_bound (rounded up)
    net = nn.Sequential(nn.Upsample(scale_factor=(3.0, 1.0)), nn.MaxPool2d((3, 1), 1))
    assert Decimal(lipschitz_bound(net, (1, 4, 4)).value) >= Decimal(3)


def test_subclass_overriding_forward_is_refused():
    class ScaledConv(nn.Conv2d):
        def forward(self, x):
            return 10.0 * super().forward(x)

    class PlainConv(nn.Conv2d):  # inherits forward: keeps Conv2d's rule
        pass

    class SneakyConv(nn.Conv2d):  # overrides the helper forward calls
        def _conv_forward(self, x, w, b):
            return 10.0 * super()._conv_forward(x, w, b)

    torch.manual_seed(0)
    for cls in (ScaledConv, SneakyConv):
        m = cls(1, 1, 3, padding=1, bias=False).double()
        assert _true_norm(m, (1, 4, 4)) > 5.0
        with pytest.raises(UnsupportedModuleError, match=f"{cls.__name__}.*overrides"):
            lipschitz_bound(m, (1, 4, 4))
        with pytest.raises(UnsupportedModuleError, match=cls.__name__):
            operator_norm_bound(m, (1, 4, 4))
    m = PlainConv(1, 1, 3, padding=1, bias=False).double()
    assert lipschitz_bound(m, (1, 4, 4)).value >= _true_norm(m, (1, 4, 4))


def test_forward_hooks_are_refused():
    torch.manual_seed(0)
    m = nn.Linear(3, 3, bias=False).double()
    handle = m.register_forward_hook(lambda mod, inp, out: 100 * out)
    with pytest.raises(UnsupportedModuleError, match="hook"):
        lipschitz_bound(m, (3,))
    with pytest.raises(UnsupportedModuleError, match="hook"):
        lipschitz_bound(nn.Sequential(nn.ReLU(), m), (3,))
    handle.remove()
    handle = m.register_forward_pre_hook(lambda mod, inp: (inp[0] * 100,))
    with pytest.raises(UnsupportedModuleError, match="hook"):
        lipschitz_bound(m, (3,))
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda mod, inp, out: 100 * out)
    try:
        with pytest.raises(UnsupportedModuleError, match="global"):
            lipschitz_bound(nn.Linear(3, 3), (3,))
    finally:
        handle.remove()
    assert lipschitz_bound(m, (3,)).value >= _true_norm(m, (3,))


def test_legacy_hook_based_weight_norm_is_refused():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        c = torch.nn.utils.weight_norm(nn.Conv2d(1, 1, 3, padding=1, bias=False).double())
    with torch.no_grad():
        c.weight_g.mul_(10.0)  # e.g. an optimizer step: .weight is stale until the next forward
    with pytest.raises(UnsupportedModuleError, match="hook"):
        operator_norm_bound(c, (1, 4, 4))
    with pytest.raises(UnsupportedModuleError, match="hook"):
        lipschitz_bound(c, (1, 4, 4))


def test_parametrized_weight_is_bounded_correctly():
    from torch.nn.utils import parametrizations, parametrize

    class Scale(nn.Module):
        def forward(self, w):
            return 10.0 * w

    torch.manual_seed(0)
    c = nn.Conv2d(1, 2, 3, padding=1, bias=False).double()
    parametrize.register_parametrization(c, "weight", Scale())
    c2 = parametrizations.weight_norm(nn.Conv2d(1, 2, 3, padding=1, bias=False).double())
    with torch.no_grad():
        c2.parametrizations.weight.original0.mul_(10.0)  # no forward since: .weight is recomputed on access
    for m in (c, c2):
        plain = nn.Conv2d(1, 2, 3, padding=1, bias=False).double()
        with torch.no_grad():
            plain.weight.copy_(m.weight)  # the weight the parametrization computes now
        b = lipschitz_bound(m, (1, 4, 4)).value
        assert b == lipschitz_bound(plain, (1, 4, 4)).value
        assert b >= _true_norm(m, (1, 4, 4)) > 5.0


def test_fixed_point_error_bound_charges_rounding():
    h, c = 0.7, 0.9
    y = torch.tensor([[3.945598602294922, 1.6818723678588867, -4.871755123138428, 2.4695541858673096]])  # float32
    f = lambda x: c * torch.tanh(x)  # noqa: E731
    x = y.double().clone()
    for _ in range(100):  # Newton in float64 for x + h c tanh(x) = y
        x = x - (x + h * c * torch.tanh(x) - y.double()) / (1 + h * c * (1 - torch.tanh(x) ** 2))
    # the float32 iteration reaches an exact fixed point 2.97e-7 away from x*: tol=1e-7 is unreachable
    with pytest.raises(NonConvergenceError, match="rounding floor"):
        fixed_point_inverse(f, y, h=h, lipschitz=c, tol=1e-7, max_iter=1000)
    r = fixed_point_inverse(f, y, h=h, lipschitz=c, tol=1e-5, max_iter=1000)
    err = float((r.x.double() - x).norm())
    assert 0 < err <= r.error_bound <= 1e-5
    r = fixed_point_inverse(f, y, h=h, lipschitz=c, tol=3e-6, max_iter=1000)  # near the floor
    assert float((r.x.double() - x).norm()) <= r.error_bound <= 3e-6


@_SETTINGS
@given(st.floats(0.05, 0.95), st.integers(1, 3), st.integers(0, 9999), st.sampled_from([torch.float32, torch.float64]))
def test_fixed_point_bound_never_below_truth(q, n, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 6, dtype=torch.float64, generator=g)
    w = w / torch.linalg.matrix_norm(w, ord=2)
    y = (torch.randn(n, 6, dtype=torch.float64, generator=g) * 3).to(dtype)
    f = lambda x: torch.tanh(x @ w.T.to(x.dtype))  # noqa: E731
    x = y.double().clone()
    for _ in range(200):  # float64 Newton on x + q tanh(Wx) = y (the field as evaluated in float64)
        t = torch.tanh(x @ w.T)
        jac = torch.eye(6, dtype=torch.float64) + q * (1 - t**2).unsqueeze(-1) * w
        x = x - torch.linalg.solve(jac, (x + q * t - y.double()).unsqueeze(-1)).squeeze(-1)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    try:
        r = fixed_point_inverse(f, y, h=q, lipschitz=1.0, tol=tol, max_iter=5000)
    except NonConvergenceError as e:
        assert "rounding floor" in str(e)
        return
    assert r.error_bound > 0
    if dtype == torch.float64:
        assert float((r.x - x).norm(dim=1).max()) <= r.error_bound
    else:  # the truth for the float32 field differs from the float64 one by O(eps32): compare loosely
        assert float((r.x.double() - x).norm(dim=1).max()) <= r.error_bound + 1e-5


def test_gronwall_ulp_enclosure():
    for lam in (2.0350435728930476e-10, 1e-17, 1e-300, 5e-324, 0.1, 1 / 3, 700.0):
        lo, hi, big = gronwall_constants([lam], [1.0])
        assert Decimal(big) >= Decimal(lam)
        assert Decimal(hi) >= Decimal(lam).exp() and Decimal(lo) <= (-Decimal(lam)).exp()
    lo, hi, big = gronwall_constants([0.1, 0.2, 0.3], [0.3, -0.7, 1 / 3])
    exact = Decimal(0.1) * Decimal(0.3) + Decimal(0.2) * Decimal(0.7) + Decimal(0.3) * Decimal(1 / 3)
    assert Decimal(big) >= exact and Decimal(hi) >= exact.exp() and Decimal(lo) <= (-exact).exp()
    assert gronwall_constants([0.0], [1.0]) == (1.0, 1.0, 0.0)


def test_gronwall_rejects_nonfinite_lengths():
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="interval lengths"):
            gronwall_constants([1.0], [bad])
