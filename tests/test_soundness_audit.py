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

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from injcert.errors import UnsupportedModuleError
from injcert.theory.flow import fixed_point_inverse, gronwall_constants
from injcert.theory.lipschitz import (
    GELU_LIPSCHITZ,
    GELU_TANH_LIPSCHITZ,
    SILU_LIPSCHITZ,
    lipschitz_bound,
    lipschitz_lower_bound,
)
from injcert.theory.logdet import step_logdet_interval
from injcert.theory.spectral import conv_size_independent_bound, conv_symbol_grid_bound, operator_norm_bound

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*padding='same'.*")

_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    out = torch.func.jacrev(fn)(x)
    return out.reshape(-1, x.numel())


def _true_linear_norm(layer: nn.Module, shape: tuple) -> float:
    layer = layer.to(torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    if params.get("bias") is not None:
        params["bias"] = torch.zeros_like(params["bias"])
    x = torch.zeros((1, *shape), dtype=torch.float64)
    jac = _jacobian(lambda z: torch.func.functional_call(layer, params, (z,)), x)
    return float(torch.linalg.svdvals(jac)[0]) if jac.numel() else 0.0


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
    if not _valid(layer, shape):
        return
    truth = _true_linear_norm(layer, shape)
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
            assert min(bounds) >= _true_linear_norm(layer, shape)
    assert bounds


def _dense_symbol_sup(w: torch.Tensor, dilation: tuple, n: int = 192) -> float:
    om = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    a = torch.arange(w.shape[-2], dtype=torch.float64) * dilation[0]
    b = torch.arange(w.shape[-1], dtype=torch.float64) * dilation[1]
    e1, e2 = torch.exp(1j * om[:, None] * a), torch.exp(1j * om[:, None] * b)
    sym = torch.einsum("pa,qb,oiab->pqoi", e1, e2, w.to(torch.complex128))
    return float(torch.linalg.matrix_norm(sym, ord=2).max())


@settings(_SETTINGS, max_examples=30)
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
    if not _valid(m, shape):
        return
    truth = _true_linear_norm(m, shape)
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
            truth = _true_linear_norm(m, shape)
            # (1 - 1e-15): sqrt of an integer multiplicity is returned without rounding slack (audit note)
            assert lipschitz_bound(m, shape).value >= truth * (1 - 1e-15)
            assert lipschitz_bound(m, shape, size_independent=True).value >= truth * (1 - 1e-15)


def test_maxpool_bound_at_a_pixel_shared_by_many_windows():
    for k, s, d, p in [(3, 1, 1, 1), ((3, 2), (1, 2), 1, (1, 0)), (4, 2, 2, 2), (2, 1, 1, 0)]:
        m = nn.MaxPool2d(k, s, p, d)
        shape = (1, 7, 7)
        x = torch.randn(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        x[0, 0, 3, 3] = 100.0
        truth = float(torch.linalg.svdvals(_jacobian(m, x))[0])
        assert lipschitz_bound(m, shape).value >= truth * (1 - 1e-15)  # see audit note on rounding


@pytest.mark.parametrize(
    "mod",
    [nn.Softmax(dim=1), nn.LayerNorm(4), nn.GroupNorm(1, 1), nn.PReLU(), nn.Mish(), nn.Hardswish(), nn.SELU(),
     nn.Upsample(scale_factor=2, mode="bilinear"), nn.UpsamplingBilinear2d(scale_factor=2), nn.ModuleList([nn.ReLU()]),
     nn.PixelShuffle(2), nn.AdaptiveAvgPool2d(1), nn.Conv1d(1, 1, 3), nn.Threshold(0.1, 20.0), nn.BatchNorm2d(1)],
)
def test_modules_without_rule_raise(mod):
    with pytest.raises(UnsupportedModuleError):
        lipschitz_bound(mod, (1, 4, 4))


def test_custom_module_raises():
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    with pytest.raises(UnsupportedModuleError, match="Doubler"):
        lipschitz_bound(nn.Sequential(nn.ReLU(), Doubler()), (3,))


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
        truth = float(torch.linalg.svdvals(_jacobian(net, x).detach())[0])
        assert truth <= bound <= bound_si * (1 + 1e-12)


def _tiny_unet(**kw):
    from injcert.model.layers import LipConv2d, ResBlock
    from injcert.model.unet import CondUNet

    torch.manual_seed(0)
    model = CondUNet(in_channels=3, base_channels=2, channel_mults=[1, 2], emb_dim=4, **kw).double()
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
    model = _tiny_unet(**kw)
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
            jac = _jacobian(lambda z: model(z.unsqueeze(0), t, y, m).squeeze(0), x)
            assert float(torch.linalg.svdvals(jac.detach())[0]) <= bound
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
    from decimal import Decimal, getcontext

    getcontext().prec = 50
    for lam in (0.01, 0.5, 1.0, 2.75, 7.0):
        lo, hi, big = gronwall_constants([lam / 2, lam / 2], [1.0, -1.0])
        assert big >= lam
        assert Decimal(lo) <= (-Decimal(lam)).exp() and Decimal(hi) >= Decimal(lam).exp()
