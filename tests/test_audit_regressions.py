"""Regression tests for a soundness audit's findings 1-8 and the Gram-iteration scaling gap.

Each test is built from the audit's reproducer and fails on the tree the audit examined:
the bound (or the returned value) contradicted a truth computed without the cast or rounding that
hid it — dense float64 Jacobians, exact rationals (``fractions``), ``mpmath``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from injcert.errors import UnsupportedModuleError
from injcert.model.layers import LipConv2d
from injcert.testing import assert_bound_sound
from injcert.theory.flow import fixed_point_inverse, margin_products
from injcert.theory.lipschitz import lipschitz_bound
from injcert.theory.logdet import step_logdet_interval
from injcert.theory.spectral import (
    circular_conv_singular_values,
    conv_size_independent_bound,
    gram_iteration_bound,
    operator_norm_bound,
    operator_norm_interval,
    power_iteration_lower_bound,
)

from helpers import dense_jacobian

mpmath.mp.dps = 60


def _dense_norm(fn, shape: tuple, dtype=torch.float64) -> float:
    """Largest singular value (in float64) of the Jacobian of ``fn`` at 0 (``fn`` linear), evaluated in ``dtype``."""
    jac = dense_jacobian(fn, torch.zeros((1, *shape), dtype=dtype))
    return float(torch.linalg.matrix_norm(jac.to(torch.float64), ord=2)) if jac.numel() else 0.0


# ----------------------------------------------------------------------------- 1. complex weights


def test_complex_weights_are_refused_not_certified_by_their_real_part():
    lin = nn.Linear(3, 3, bias=False, dtype=torch.complex128)
    with torch.no_grad():
        lin.weight.copy_(1j * torch.eye(3, dtype=torch.complex128))  # norm 1; real part 0
    with pytest.raises(UnsupportedModuleError, match="complex"):
        operator_norm_bound(lin, (3,))
    with pytest.raises(UnsupportedModuleError, match="complex"):
        lipschitz_bound(lin, (3,))
    with pytest.raises(UnsupportedModuleError, match="complex"):  # used to pass with bound 1e-30
        assert_bound_sound(lin, (3,))

    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False, dtype=torch.complex128)
    with torch.no_grad():
        conv.weight.fill_(1j)  # norm >= 3 on a 4x4 input
    with pytest.raises(UnsupportedModuleError, match="complex"):
        operator_norm_bound(conv, (1, 4, 4))
    with pytest.raises(UnsupportedModuleError, match="complex"):
        operator_norm_bound(conv, (1, 4, 4), size_independent=True)
    with pytest.raises(UnsupportedModuleError, match="complex"):
        circular_conv_singular_values(conv.weight, (4, 4))
    with pytest.raises(UnsupportedModuleError, match="complex"):
        lipschitz_bound(nn.Sequential(nn.ReLU(), conv), (1, 4, 4))

    bn = nn.BatchNorm1d(3).eval()
    bn.weight = nn.Parameter(torch.ones(3, dtype=torch.complex128))
    with pytest.raises(UnsupportedModuleError, match="complex"):
        lipschitz_bound(bn, (3,))


# ----------------------------------------------------------------------------- 2. Upsample


def test_upsample_non_integer_scale_factor_reproducer():
    up = nn.Upsample(scale_factor=3.2, mode="nearest")
    truth = _dense_norm(up, (1, 2, 3))
    assert truth == pytest.approx(4.0)  # one pixel is copied 4 x 4 times
    assert lipschitz_bound(up, (1, 2, 3)).value >= truth  # the old rule counted with size=: 3.0
    assert lipschitz_bound(up, (1, 2, 3), size_independent=True).value >= truth


@settings(deadline=None, derandomize=True)
@given(st.integers(1, 9), st.integers(1, 9),
       st.one_of(st.floats(0.3, 5.0), st.sampled_from([1.5, 2.5, 3.2, 1 / 3, 2 / 3, 5.2, 6 + 1 / 3, 1.2])),
       st.one_of(st.none(), st.floats(0.3, 5.0)), st.sampled_from([None, False, True]),
       st.sampled_from([torch.float32, torch.float64]))
def test_upsample_bound_matches_the_dense_jacobian(h, w, sf_h, sf_w, recompute, dtype):
    sf = sf_h if sf_w is None else (sf_h, sf_w)
    up = nn.Upsample(scale_factor=sf, mode="nearest", recompute_scale_factor=recompute)
    sfs = (sf_h, sf_h) if sf_w is None else (sf_h, sf_w)
    assume(math.floor(h * sfs[0]) >= 1 and math.floor(w * sfs[1]) >= 1)  # a non-empty output
    truth = _dense_norm(up, (1, h, w), dtype)
    bound = lipschitz_bound(up, (1, h, w)).value
    assert truth <= bound
    if dtype == torch.float64:  # exact on CPU unless the CUDA index formula counts more
        assert bound <= math.sqrt(math.ceil(sfs[0]) + 1) * math.sqrt(math.ceil(sfs[1]) + 1)
    if not recompute:
        assert truth <= lipschitz_bound(up, (1, h, w), size_independent=True).value


@settings(deadline=None, derandomize=True)
@given(st.integers(1, 200), st.one_of(st.floats(0.1, 8.0), st.sampled_from([3.0, 5.2, 6 + 1 / 3, 1.2, 2.5])),
       st.sampled_from([None, False, True]))
def test_upsample_index_formula_is_the_kernels(n, sf, recompute):
    """The general formula the rule also counts with (what CUDA runs) equals PyTorch's CPU kernel
    wherever the CPU kernel does not special-case the extents n and 2n."""
    from injcert.theory.lipschitz import _INDEX_MODES, _nearest_sources

    up = nn.Upsample(scale_factor=sf, mode="nearest", recompute_scale_factor=recompute)
    assume(math.floor(n * sf) >= 1)  # a non-empty output
    for dtype, mode in zip((torch.float32, torch.float64), _INDEX_MODES):
        src = up(torch.arange(n, dtype=dtype).view(1, 1, n)).view(-1).long()
        out = src.numel()
        if out not in (n, 2 * n):
            assert torch.equal(_nearest_sources(up, sf, n, out, mode), src)


@pytest.mark.parametrize("sf", [3.2, 3.0, 2.5, 1.5, 0.7, 5.2, 6 + 1 / 3])
def test_upsample_size_independent_bound_dominates_every_small_size(sf):
    up = nn.Upsample(scale_factor=sf, mode="nearest")
    bound = lipschitz_bound(up, (1, 3), size_independent=True).value
    worst = 0
    for n in range(1, 400):
        if math.floor(n * sf) < 1:
            continue
        for dtype in (torch.float32, torch.float64):
            src = up(torch.arange(n, dtype=dtype).view(1, 1, n)).view(-1).long()
            worst = max(worst, int(torch.bincount(src).max()))
    assert math.sqrt(worst) <= bound


# ----------------------------------------------------------------------------- 3. LipConv2d cache


@pytest.mark.parametrize("cap", [1.0, 100.0, None])
def test_lipconv_cache_cannot_go_stale_after_in_place_data_writes(cap):
    torch.manual_seed(0)
    layer = LipConv2d(2, 2, 3, cap=cap).double().eval()
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        layer(x)  # fills the cache
        layer.weight.data.mul_(10)  # bumps neither _version nor data_ptr
        fresh = layer._compute_effective_weight()
        assert torch.equal(layer.effective_weight(), fresh)
        y = layer(x)
    ref = torch.nn.functional.conv2d(x, fresh, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    assert torch.equal(y, ref)
    bound = lipschitz_bound(layer, (2, 6, 6)).value
    truth = _dense_norm(lambda z: layer(z) - layer(torch.zeros_like(z)), (2, 6, 6))
    assert truth <= bound * (1 + 1e-9)  # the audit: certified 0.0568, the map run had norm 0.549


# ----------------------------------------------------------------------------- 4. float32 coefficients


def test_float32_batchnorm_coefficients_are_covered():
    g = torch.Generator().manual_seed(0)
    exceed = 0
    for _ in range(300):
        c = 8
        bn = nn.BatchNorm2d(c).eval()
        with torch.no_grad():
            bn.running_var.copy_(torch.rand(c, generator=g) * 10 ** (torch.rand(c, generator=g) * 6 - 3))
            bn.weight.copy_(torch.randn(c, generator=g) * 10 ** (torch.rand(c, generator=g) * 4 - 2))
            bn.bias.zero_()
            bn.running_mean.zero_()
            coef = bn(torch.ones(1, c, 1, 1)).abs().max().item()  # exactly the float32 coefficients used
        bound = lipschitz_bound(bn, (c, 1, 1)).value
        exceed += coef > bound
    assert exceed == 0  # the audit: 1003 of 2000 exceeded (up to 1.3e-7 relative)


def test_float64_lipconv_fed_float32_runs_the_weight_its_rule_bounds(monkeypatch):
    import injcert.model.layers as layers_mod

    used: list[torch.Tensor] = []
    real_conv2d = torch.nn.functional.conv2d

    def recording_conv2d(x, w, *args, **kwargs):
        used.append(w.detach().clone())
        return real_conv2d(x, w, *args, **kwargs)

    g = torch.Generator().manual_seed(1)
    exceed = 0
    for _ in range(40):
        layer = LipConv2d(3, 3, 3, cap=None).double().eval()
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=torch.float64))
        bound = lipschitz_bound(layer, (3, 5, 5)).value
        used.clear()
        monkeypatch.setattr(layers_mod.F, "conv2d", recording_conv2d)
        with torch.no_grad():
            y = layer(torch.randn(1, 3, 5, 5, generator=g))
        monkeypatch.setattr(layers_mod.F, "conv2d", real_conv2d)
        assert y.dtype == torch.float32
        (w_run,) = used
        assert torch.equal(w_run.to(torch.float64), layer.effective_weight())  # not rounded to float32
        conv = nn.Conv2d(3, 3, 3, padding=1, bias=False).double()
        with torch.no_grad():
            conv.weight.copy_(w_run.to(torch.float64))
        exceed += _dense_norm(conv, (3, 5, 5)) > bound
    assert exceed == 0  # the audit: 63 of 200 exceeded


# ----------------------------------------------------------------------------- 5. step log-det interval


def _exact_log1m(h: float, lip: float, d: int, sign: int = -1) -> mpmath.mpf:
    q = Fraction(abs(h)) * Fraction(lip)
    return d * mpmath.log(1 + sign * mpmath.mpf(q.numerator) / q.denominator)


def test_step_logdet_interval_reproducer_near_q_one():
    h, lip = 0.716191883471352, 1.3962718276589263
    truth = _exact_log1m(h, lip, 1)
    assert abs(float(truth) - (-13.444008405779083)) < 1e-12
    lo, hi = step_logdet_interval(h, lip, 1)
    assert lo <= truth  # the audit: lower end -13.444008405759973, above the truth
    assert hi >= _exact_log1m(h, lip, 1, +1)


@settings(deadline=None, derandomize=True)
@given(st.floats(0.05, 20.0), st.floats(1e-15, 1e-6), st.integers(1, 10**6))
def test_step_logdet_interval_contains_the_exact_value_as_q_tends_to_one(h, gap, d):
    lip = (1.0 - gap) / h
    q = Fraction(h) * Fraction(lip)
    assume(q < 1)  # the rounding of (1 - gap) / h may land on or above 1
    lo, hi = step_logdet_interval(h, lip, d)
    assert lo <= _exact_log1m(h, lip, d)
    assert hi >= _exact_log1m(h, lip, d, +1)


# ----------------------------------------------------------------------------- 6. fixed-point inverse


@pytest.mark.parametrize("h,lip", [(0.5, -1.0), (0.5, float("nan")), (0.5, float("inf")), (float("nan"), 1.0),
                                   (float("inf"), 0.0)])
def test_fixed_point_inverse_validates_its_constants(h, lip):
    y = torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="Lipschitz constant L >= 0"):
        fixed_point_inverse(lambda z: 3 * z, y, h=h, lipschitz=lip)  # the audit: error_bound=-1.0 returned


def test_step_margins_reject_nan_and_round_up():
    with pytest.raises(ValueError):
        margin_products([0.1], [float("nan")])
    q = margin_products([0.716191883471352], [1.3962718276589263])
    assert Fraction(float(q[0])) >= Fraction(0.716191883471352) * Fraction(1.3962718276589263)


# ----------------------------------------------------------------------------- 7. lower bounds


def _cancelling_conv() -> tuple[nn.Conv2d, float]:
    """Circular conv on a 1-pixel-wide input: the three taps read the same pixel and cancel."""
    conv = nn.Conv2d(2, 1, (1, 3), padding=(0, 1), padding_mode="circular", bias=False).double()
    taps = [[123456789.25, -123456789.0, -0.25 + 1e-12], [98765432.5, -98765432.0, -0.5 - 1e-12]]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(taps, dtype=torch.float64).view(1, 2, 1, 3))
    sums = [sum((Fraction(v) for v in row), Fraction(0)) for row in taps]
    truth = math.sqrt(float(sum(s * s for s in sums)))  # the map is x -> s0 x0 + s1 x1
    return conv, truth


def test_lower_bounds_never_exceed_the_truth_under_cancellation():
    conv, truth = _cancelling_conv()
    assert 1e-12 < truth < 2e-12
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        lo, hi = operator_norm_interval(conv, (2, 1, 1), generator=gen)
        assert lo <= truth <= hi  # the audit: [6.0e-9, 3.4e8] for a norm of 1.414e-12
        x0 = torch.randn(1, 2, 1, 1, dtype=torch.float64, generator=gen)
        assert power_iteration_lower_bound(conv, x0) <= truth


def test_lower_bounds_stay_tight_without_cancellation():
    torch.manual_seed(0)
    for layer, shape in [(nn.Linear(6, 4).double(), (6,)), (nn.Conv2d(2, 3, 3, padding=1).double(), (2, 5, 5))]:
        truth = _dense_norm(lambda z, layer=layer: layer(z) - layer(torch.zeros_like(z)), shape)
        lo, hi = operator_norm_interval(layer, shape, n_iter=200)
        assert 0.9 * truth <= lo <= truth <= hi


# ----------------------------------------------------------------------------- 8. container subclasses


def test_sequential_subclass_overriding_iter_is_refused():
    class SkipLast(nn.Sequential):
        def __iter__(self):
            return iter(list(self._modules.values())[:-1])

    net = SkipLast(nn.Identity(), nn.Sigmoid())
    x = torch.randn(1, 4, dtype=torch.float64)
    assert torch.equal(net(x), x)  # runs as the identity: Lipschitz 1, Sequential's rule says 0.25
    with pytest.raises(UnsupportedModuleError, match="__iter__"):
        lipschitz_bound(net, (4,))


@pytest.mark.parametrize("name", ["__len__", "__getitem__", "_modules", "named_children", "forward"])
def test_sequential_subclass_overriding_anything_is_refused(name):
    body = {
        "__len__": lambda self: 1,
        "__getitem__": lambda self, i: nn.Identity(),
        "_modules": property(lambda self: self.__dict__["_m"], lambda self, v: self.__dict__.__setitem__("_m", v)),
        "named_children": lambda self: iter(()),
        "forward": lambda self, x: x,
    }
    cls = type("Patched", (nn.Sequential,), {name: body[name]})
    with pytest.raises(UnsupportedModuleError, match="overrides"):
        lipschitz_bound(cls(nn.Sigmoid()), (4,))


def test_instance_level_forward_patch_is_refused():
    seq = nn.Sequential(nn.Sigmoid())
    seq.forward = lambda x: 10 * x
    with pytest.raises(UnsupportedModuleError, match="instance"):
        lipschitz_bound(seq, (4,))
    lin = nn.Linear(3, 3)
    lin.forward = lambda x: 10 * x
    with pytest.raises(UnsupportedModuleError, match="instance"):
        operator_norm_bound(lin, (3,))


def test_repeated_module_in_sequential_is_counted_every_time():
    lin = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(2 * torch.eye(3, dtype=torch.float64))
    net = nn.Sequential(lin, lin)  # named_children() yields lin once
    assert lipschitz_bound(net, (3,)).value >= 4.0


def test_project_container_subclass_overriding_a_method_is_refused():
    class Lying(LipConv2d):
        def as_conv2d(self):  # the rule's view of the weight, not forward's
            conv = super().as_conv2d()
            with torch.no_grad():
                conv.weight.zero_()
            return conv

    with pytest.raises(UnsupportedModuleError, match="as_conv2d"):
        lipschitz_bound(Lying(2, 2, 3), (2, 5, 5))


def test_harmless_subclasses_keep_their_rules():
    class MyConv(nn.Conv2d):
        def reset_parameters(self):
            super().reset_parameters()

    class Named(nn.Sequential):
        def __init__(self, *mods):
            super().__init__(*mods)

        def describe(self) -> str:
            return "ok"

    assert lipschitz_bound(Named(MyConv(1, 1, 3, padding=1)), (1, 4, 4)).value > 0


# ----------------------------------------------------------------------------- Gram iteration scaling


@pytest.mark.parametrize("dtype,scale", [(torch.float64, 1e-200), (torch.float64, 1e160), (torch.float64, 1e-310),
                                         (torch.float32, 1e-30), (torch.float32, 1e20), (torch.float32, 1e-40),
                                         (torch.float64, 1.0)])
@pytest.mark.parametrize("n_iter", [0, 6, 12])
def test_gram_iteration_bound_at_extreme_scales(dtype, scale, n_iter):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    sigma = torch.linalg.matrix_norm(base, ord=2)
    mat = (base * scale).to(dtype)
    stored_scale = float(mat.abs().amax().to(torch.float64) / base.abs().amax())  # subnormals round
    out = gram_iteration_bound(mat, n_iter).to(torch.float64)
    assert bool(torch.isfinite(out).all()) and bool((out > 0).all())  # was 0.0 or NaN
    ratio = out / (sigma * stored_scale)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    if abs(scale) < 1e-300 or (dtype == torch.float32 and scale < 1e-37):
        tol = 1e-2  # subnormal entries carry few digits
    assert bool((ratio >= 1 - tol).all())
    assert bool((ratio <= 4 ** (1 / 2 ** (n_iter + 1)) * (1 + tol)).all())


def test_size_independent_bound_at_scale_1e20_in_float32_is_finite():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    for grid in (0, None):
        ref = float(conv_size_independent_bound(w, 6, grid=grid))
        out = float(conv_size_independent_bound((w * 1e20).float(), 6, grid=grid))
        assert math.isfinite(out)  # was NaN
        assert out >= ref * 1e20 * (1 - 1e-4)
    layer = LipConv2d(3, 4, 3)
    with torch.no_grad():
        layer.weight.copy_((w * 1e20).float())
        eff = layer.effective_weight()
    assert bool(torch.isfinite(eff).all())
