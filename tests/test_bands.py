"""The spectral Gaussian-data skip (``injcert.model.bands``, proofs/05 item 10): partition of unity,
the eigenvalue enclosure its certificate uses, the log-norm integral, the fit and the options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from injcert.errors import ConfigError
from injcert.model import CondUNet
from injcert.model.unet import band_linear_sup
from injcert.model.bands import (band_symbols, binomial_kernel, check_bands, fit_band_variances,
                                 fit_residual_band_variances, lowpass)
from tests.helpers import dense_jacobian, tiny_unet

BANDS = {"orders": [1, 3], "variances": [0.01, 0.3, 5.0]}
KW = dict(lipschitz_budget=60.0, lipschitz_kappa=3.0, skip_max=0.0, data_variance=None, parameterization="denoiser",
          alpha_max=0.5, alpha_init=0.4, spectral_bands=BANDS)


@given(orders=st.lists(st.integers(1, 40), min_size=1, max_size=5, unique=True).map(sorted),
       wy=st.floats(-math.pi, math.pi), wx=st.floats(-math.pi, math.pi))
def test_band_symbols_are_a_partition_of_unity(orders, wy, wx):
    """Every band's symbol is >= 0 and they sum to 1 at every frequency (the convexity the
    certificate rests on)."""
    sym = band_symbols(orders, torch.tensor([wy]), torch.tensor([wx]))
    assert bool((sym >= -1e-15).all())
    assert math.isclose(float(sym.sum()), 1.0, rel_tol=0, abs_tol=1e-12)


@given(order=st.integers(1, 30), n=st.integers(5, 40), w=st.floats(-math.pi, math.pi))
def test_lowpass_has_the_binomial_symbol(order, n, w):
    """The 1-D kernel sums to 1 and its DTFT is cos^(2a)(w/2); on a periodic signal far from the
    border the blur multiplies a cosine by that symbol."""
    k = binomial_kernel(order)
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-14)
    taps = torch.arange(-order, order + 1, dtype=torch.float64)
    assert math.isclose(float((k * torch.cos(w * taps)).sum()), math.cos(w / 2) ** (2 * order), abs_tol=1e-12)
    size = 2 * order + n
    x = torch.cos(w * torch.arange(size, dtype=torch.float64)).view(1, 1, 1, -1).expand(1, 1, 2 * order + 1, size)
    out = lowpass(x.contiguous(), order)[0, 0, order, order:size - order]
    expect = math.cos(w / 2) ** (2 * order) * x[0, 0, 0, order:size - order]
    assert torch.allclose(out, expect, atol=1e-10)


@given(seed=st.integers(0, 10**6), t=st.floats(1e-3, 0.99), h=st.integers(2, 9), w=st.integers(2, 9),
       var=st.lists(st.floats(1e-3, 50.0), min_size=3, max_size=3))
@settings(max_examples=25, deadline=None)
def test_band_linear_part_eigenvalues_lie_in_the_certified_range(seed, t, h, w, var):
    """The dense Jacobian of x -> w(x - alpha K_t x) (zero-padded, any size) is symmetric and its
    eigenvalues lie in [min_j c_j, max_j c_j], c_j = w sigma^2/(alpha^2 P_j + sigma^2) (proofs/05 item 10)."""
    model = tiny_unet(seed, **dict(KW, spectral_bands={"orders": [1, 3], "variances": var})).double()
    tt = torch.tensor([t], dtype=torch.float64)
    c, wt = _assert_linear_part_in_range(model, lambda v: model.band_skip(v, tt), tt, (h, w), var)
    assert float(c.max()) <= float(wt) * (1 + 1e-12)  # the part of L(t) the bound charges


def _assert_linear_part_in_range(model, skip, tt, hw, var):
    """The dense Jacobian of x -> w(x - alpha skip(x)) is symmetric with eigenvalues in [min c_j, max c_j],
    c_j = w sigma^2/(alpha^2 P_j + sigma^2) over the variances ``var``; returns ``(c, w)``."""
    wt, at = model._denoiser_coefficients(tt)
    jac = dense_jacobian(lambda v: wt * (v - at * skip(v)), torch.zeros(1, 3, *hw, dtype=torch.float64))
    assert torch.allclose(jac, jac.T, atol=1e-12)
    ev = torch.linalg.eigvalsh(jac)
    s = model.schedule.sigma(tt)
    c = wt * s * s / (at * at * torch.tensor(var, dtype=torch.float64) + s * s)
    assert float(ev.min()) >= float(c.min()) * (1 - 1e-9) - 1e-12
    assert float(ev.max()) <= float(c.max()) * (1 + 1e-9) + 1e-12
    return c, wt


def _quadrature_range(model, s0: float, s1: float, variances) -> tuple[float, float]:
    """The integrals over [s0, s1] of min_j and max_j of alpha c_j(varsigma), by dense quadrature."""
    # nodes uniform in asinh(varsigma): dense where the integrand (about 1/varsigma) bends, so the
    # trapezoid's own error (h^2/12 * f'') stays far below the slack; a uniform grid overestimates
    # the convex 1/varsigma by ~1e-5 near varsigma = 0.25 over a span of 56
    grid = torch.sinh(torch.linspace(math.asinh(s0), math.asinh(s1), 20001, dtype=torch.float64))
    a = 1 / torch.sqrt(1 + grid * grid)
    sig = grid * a
    wv = 1 / torch.clamp(sig, min=model.sigma_cap)
    p = torch.tensor(variances, dtype=torch.float64).view(1, -1)
    ac = (a * wv).view(-1, 1) * (sig * sig).view(-1, 1) / ((a * a).view(-1, 1) * p + (sig * sig).view(-1, 1))
    return float(torch.trapezoid(ac.min(dim=1).values, grid)), float(torch.trapezoid(ac.max(dim=1).values, grid))


@given(seed=st.integers(0, 100), s0=st.floats(0.0, 50.0), span=st.floats(1e-3, 100.0))
@settings(max_examples=30, deadline=None)
def test_band_linear_integral_encloses_the_eigenvalue_range(seed, s0, span):
    """linear_part_integral's (lo, hi) enclose the integrals of min_j and max_j of alpha c_j(varsigma),
    computed by dense quadrature (capped and uncapped regimes)."""
    model = tiny_unet(seed, **KW)
    s1 = s0 + span
    lo, hi = model.linear_part_integral(s0, s1)
    lo_true, hi_true = _quadrature_range(model, s0, s1, KW["spectral_bands"]["variances"])
    slack = 1e-6 * (1 + abs(hi_true))
    assert lo <= lo_true + slack and hi_true <= hi + slack
    assert lo <= hi


def test_band_model_bound_is_tighter_than_charging_the_skip_to_the_denoiser():
    """The band skip sits in the exact linear part: its norm is charged at its own size (below w at low
    noise), not as a Wiener skip of sup 1 inside the denoiser."""
    bands = tiny_unet(0, **KW)
    wiener = tiny_unet(0, **dict(KW, spectral_bands=None, data_variance=0.25, lipschitz_kappa=4.0))
    assert float(bands.gain) == pytest.approx(float(wiener.gain), rel=1e-5)
    for t in (0.0, 0.01, 0.2, 0.6, 0.95):
        assert bands.certified_lipschitz_at(t) < wiener.certified_lipschitz_at(t)
    w0 = float(bands._denoiser_coefficients(torch.tensor(0.0, dtype=torch.float64))[0])
    assert bands.band_linear_norm(None) < 0.5 * w0  # the smallest variance keeps it far below w near t = 0


@given(p=st.floats(1e-4, 60.0), s_lo=st.floats(0.0, 1.0), cap=st.floats(1e-3, 0.5))
def test_band_linear_sup_bounds_a_dense_grid(p, s_lo, cap):
    """band_linear_sup(p, s_lo, cap) >= sigma^2 / (max(sigma, cap)(alpha^2 p + sigma^2)) on a dense grid of
    sigma in [s_lo, 1], and is attained there up to the grid's resolution (the closed form is the sup)."""
    sig = torch.linspace(s_lo, 1.0, 200001, dtype=torch.float64)
    vals = sig * sig / (torch.clamp(sig, min=cap) * ((1 - sig * sig) * p + sig * sig))
    bound = band_linear_sup(p, s_lo, cap)
    assert float(vals.max()) <= bound
    # attained: within what the function moves over a grid step or two next to the grid's maximum
    # (steep near a small cap, where one step of 5e-6 moves it by 1e-5 relative)
    i = int(vals.argmax())
    step = float(vals[max(i - 2, 0):i + 3].diff().abs().max())
    assert bound <= float(vals.max()) * (1 + 1e-6) + 2 * step + 1e-9


@given(seed=st.integers(0, 10**4), t=st.floats(0.0, 0.99), mixed=st.booleans())
@settings(max_examples=10, deadline=None)
def test_linear_part_norm_over_later_times_is_within_its_bound(seed, t, mixed):
    """With the deep path switched off (gain 0), the dense Jacobian of eps in x is the exact linear part
    w(I - alpha K_t); its spectral norm at every t' >= t on a grid stays within band_linear_norm(t) and
    within the certified L(t), for the image's skip and for the mixed skip under a random condition."""
    model = (_mixed_model(seed) if mixed else tiny_unet(seed, **KW)).double().eval()
    model.gain.zero_()
    m = _condition_map(seed, 8, 8, 0.5)
    y = torch.randn(1, 3, 8, 8, dtype=torch.float64) * m
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    bound = model.band_linear_norm(t)
    for tp in torch.linspace(t, model.schedule.t_max, 7).tolist():
        tt = torch.tensor([tp], dtype=torch.float64)
        jac = dense_jacobian(lambda v: model(v, tt, y, m), x)
        norm = float(torch.linalg.matrix_norm(jac, 2))
        assert norm <= bound * (1 + 1e-9) and norm <= model.certified_lipschitz_at(t) * (1 + 1e-9)


def test_linear_part_bound_is_nearly_attained():
    """Tightness: on a 24x24 image the largest eigenvalue of w(I - alpha K_t) at the worst t' >= t comes
    within 10 % of band_linear_norm(t) (the checkerboard reaches the finest band's variance)."""
    model = tiny_unet(0, **KW).double().eval()
    model.gain.zero_()
    x = torch.zeros(1, 3, 24, 24, dtype=torch.float64)
    for t in (0.0, 0.05, 0.3):
        best = 0.0
        for tp in torch.linspace(t, model.schedule.t_max, 60).tolist():
            tt = torch.tensor([tp], dtype=torch.float64)
            v = torch.ones_like(x)
            v[..., ::2, :] *= -1
            v[..., :, ::2] *= -1  # the highest frequency, which only the finest band passes
            with torch.no_grad():
                out = model(v, tt) - model(x, tt)
            best = max(best, float(out.norm() / v.norm()))
        assert 0.9 * model.band_linear_norm(t) <= best <= model.band_linear_norm(t) * (1 + 1e-9)


def test_band_options_are_validated_and_round_trip():
    model = tiny_unet(0, **KW)
    again = CondUNet.from_config(model.config)
    assert again.config == model.config and again.bands == BANDS
    assert check_bands(None) is None
    for bad in ({"orders": [3, 1], "variances": [1, 1, 1]}, {"orders": [1], "variances": [1.0]},
                {"orders": [1], "variances": [1.0, -1.0]}, {"orders": [0], "variances": [1, 1]},
                {"orders": [1], "variances": [1, float("nan")]}, [1, 2], {"orders": [1]}):
        with pytest.raises(ConfigError, match="spectral_bands"):
            tiny_unet(0, **dict(KW, spectral_bands=bad))
    with pytest.raises(ConfigError, match="spectral_bands needs"):
        tiny_unet(0, **dict(KW, data_variance=0.25))
    with pytest.raises(ConfigError, match="spectral_bands needs"):
        tiny_unet(0, lipschitz_budget=60.0, lipschitz_kappa=3.0, spectral_bands=BANDS)


def test_band_model_receptive_field_covers_the_blur_and_tiles_exactly():
    """A pixel of eps depends on x only within receptive_field_radius (the band blur included)."""
    model = tiny_unet(0, **dict(KW, spectral_bands={"orders": [1, 40], "variances": [0.01, 0.3, 5.0]})).double()
    assert model.receptive_field_radius >= 40
    r = model.receptive_field_radius
    n = 2 * r + 8
    x = torch.randn(1, 3, n, n, dtype=torch.float64)
    x2 = x.clone()
    x2[..., :, r + 5:] += 1.0  # change only pixels farther than r from column 4
    t = torch.tensor([0.4], dtype=torch.float64)
    with torch.no_grad():
        a, b = model(x, t), model(x2, t)
    assert torch.equal(a[..., :, :5], b[..., :, :5])


def test_fit_band_variances_is_deterministic_and_monotone():
    p = fit_band_variances([1, 4, 16], images=["camera", "coffee"], size=64, crops=2, scales=(1, 2))
    assert p == fit_band_variances([1, 4, 16], images=["camera", "coffee"], size=64, crops=2, scales=(1, 2))
    assert len(p) == 4 and all(v > 0 for v in p)
    assert all(a <= b * (1 + 1e-12) for a, b in zip(p, p[1:]))  # more power at lower frequencies
    with pytest.raises(ConfigError, match="at least"):
        fit_band_variances([1], images=["lfw_faces"], size=400, scales=(1,))


def test_residual_variances_of_a_zero_restorer_are_the_image_variances():
    """R = 0 leaves the image itself: the residual fit is the image fit (same crops, same fit)."""
    kw = dict(images=["camera", "coffee"], size=32, crops=2, scales=(1, 2))
    q = fit_residual_band_variances(lambda y, m: torch.zeros_like(y), [1, 4], batch=3, **kw)
    p = fit_band_variances([1, 4], **kw)
    assert q == pytest.approx(p, rel=1e-6)  # the fit amplifies the ulps of a gray image read as three channels


@settings(max_examples=4, deadline=None)
@given(s=st.floats(0.01, 0.3), seed=st.integers(0, 2**16))
def test_residual_variances_of_white_errors_are_flat(s, seed):
    """A restorer that returns the truth plus white noise of standard deviation s leaves a residual
    with a flat spectrum s^2: every fitted band variance is s^2 (within the periodogram's sampling
    error), whatever the band; the truth alone leaves nothing (the fit's floor)."""
    from injcert.model.bands import _training_crops

    kw = dict(images=["camera", "coffee"], size=32, crops=6, scales=(1,))
    crops = torch.stack([c.float() for c in _training_crops(kw["images"], 32, 6, (1,), 0, channels=3)])

    def oracle(noise: float):
        gen = torch.Generator().manual_seed(seed)

        def restore(y, m):  # finds each example's crop by its observed pixels
            known = (m[:, :1] > 0).float()
            dist = (((y[:, None] - crops[None]) * known[:, None]) ** 2).flatten(2).sum(2)
            x0 = crops[dist.argmin(1)]
            return x0 + noise * torch.randn(x0.shape, generator=gen)
        return restore

    q = fit_residual_band_variances(oracle(s), [1, 4], kinds=["random"], **kw)
    assert q == pytest.approx([s * s] * 3, rel=0.2)  # ~4 standard errors of the lowest band; P spans 400x
    assert max(fit_residual_band_variances(oracle(0.0), [1, 4], kinds=["random"], **kw)) < 1e-10


def test_reskip_script_keeps_the_deep_path_and_moves_the_skip_into_the_linear_part(tmp_path):
    """scripts/reskip_checkpoint.py: same weights, same deep gain, data_variance replaced by fitted bands;
    the eps of the result differs from the source's only by the linear skip's change."""
    import subprocess
    import sys

    from injcert.io import load_checkpoint, save_checkpoint

    src = tiny_unet(0, **dict(KW, spectral_bands=None, data_variance=0.25, lipschitz_kappa=4.0))
    save_checkpoint(src, tmp_path / "src.ckpt")
    out = tmp_path / "out.ckpt"
    run = subprocess.run([sys.executable, "scripts/reskip_checkpoint.py", str(tmp_path / "src.ckpt"), str(out),
                          "--orders", "1", "4"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    new = load_checkpoint(out)
    assert new.bands["orders"] == [1, 4] and len(new.bands["variances"]) == 3 and new.data_variance is None
    assert float(new.gain) == float(src.gain)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), new.state_dict().values()))
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.3], dtype=torch.float64)
    src, new = src.double().eval(), new.double().eval()
    w, a = new._denoiser_coefficients(t)
    with torch.no_grad():
        diff = new(x, t) - src(x, t)
        expect = -w * a * (new.band_skip(x, t) - src.wiener_skip(t) * x)
    assert torch.allclose(diff, expect, atol=1e-10)
    bad = subprocess.run([sys.executable, "scripts/reskip_checkpoint.py", str(out), str(tmp_path / "x.ckpt")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a denoiser" in bad.stderr
    for junk in (tmp_path / "missing.ckpt", Path("/etc/passwd")):
        bad = subprocess.run([sys.executable, "scripts/reskip_checkpoint.py", str(junk), str(tmp_path / "y.ckpt")],
                             capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("orders", [[1, 4, 16, 64]], ids=["shipped orders"])
@pytest.mark.parametrize("h,w", [(3, 70), (9, 11)])
def test_shipped_orders_float32_linear_part_stays_in_range(orders, h, w):
    """The kernels that run (float32, order 64 reaching across the image): the dense Jacobian of
    w(x - alpha K_t x) in float32 has eigenvalues in [min_j c_j, max_j c_j] up to float32 rounding."""
    var = [0.004, 0.28, 0.28, 2.0, 23.0]
    model = tiny_unet(0, **dict(KW, spectral_bands={"orders": orders, "variances": var}))
    for t in (0.02, 0.3, 0.8):
        tt = torch.tensor([t])
        wt, at = (v.to(torch.float32) for v in model._denoiser_coefficients(tt))
        jac = dense_jacobian(lambda v: wt * (v - at * model.band_skip(v, tt)), torch.zeros(1, 3, h, w))
        ev = torch.linalg.eigvalsh(((jac + jac.T) / 2).double())
        s = model.schedule.sigma(tt.double())
        c = wt.double() * s * s / (at.double() ** 2 * torch.tensor(var, dtype=torch.float64) + s * s)
        tol = 1e-5 * float(wt)
        assert float(ev.min()) >= float(c.min()) - tol and float(ev.max()) <= float(c.max()) + tol
        assert float((jac - jac.T).abs().max()) <= tol


def test_float32_kernels_are_within_the_charged_rounding():
    """band_charge assumes each float32 kernel is within 2^-23 (in l1) of its exact binomial weights."""
    for a in range(1, 129):
        k64 = binomial_kernel(a)
        k32 = binomial_kernel(a, torch.float32).to(torch.float64)
        assert float((k32 - k64).abs().sum()) <= 2.0**-23


@given(seed=st.integers(0, 50), small=st.floats(1e-6, 1e-2))
@settings(max_examples=10, deadline=None)
def test_the_budget_reserves_the_band_skips_rounding_charge(seed, small):
    """By construction (every conv at its cap, the structural bound S) the denoiser's Lip(D) charged
    by the certificate, gain S + the band skip's rounding charge, stays within kappa - 1: the room
    the output gain is set from reserves the charge (tiny variances make it large)."""
    from injcert.theory.lipschitz import product_bound, sum_bound

    var = [small, 0.3, 5.0]
    model = tiny_unet(seed, **dict(KW, spectral_bands={"orders": [1, 3], "variances": var}))
    assert model.band_charge > 0
    deep = product_bound(model.structural_bound, float(model.gain))
    lip_d = sum_bound(deep, model.wiener_max, model._skip_charge(), model.band_charge)
    assert lip_d <= model.lipschitz_kappa - 1.0


# ----------------------------------------------------- two band skips mixed by the condition (item 19)

MIXED = {"orders": [1, 3], "variances": [0.01, 0.3, 5.0], "residual_variances": [0.002, 0.01, 0.05]}
RESTORER = {"width": 4, "mults": [1, 2]}


def _mixed_model(seed: int, bands: dict = MIXED) -> CondUNet:
    return tiny_unet(seed, restorer=RESTORER, **dict(KW, spectral_bands=bands))


def _condition_map(seed: int, h: int, w: int, p: float, dtype=torch.float64) -> torch.Tensor:
    """A missing-pixel map: pixels missing at random with probability p, plus a random box."""
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(1, 1, h, w, generator=g) >= p).to(dtype)
    i, j = (int(torch.randint(0, n, (1,), generator=g)) for n in (h, w))
    m[..., i:i + h // 2, j:j + w // 2] = 0
    return m


@given(seed=st.integers(0, 10**6), t=st.floats(1e-3, 0.99), h=st.integers(2, 9), w=st.integers(2, 9),
       p=st.floats(0.0, 1.0), var=st.lists(st.floats(1e-3, 50.0), min_size=6, max_size=6))
@settings(max_examples=25, deadline=None)
def test_mixed_linear_part_eigenvalues_lie_in_the_range_of_both_skips(seed, t, h, w, p, var):
    """For any condition, the dense Jacobian of x -> w(x - alpha K_t(c) x), K_t(c) = sqrt(S) K^P sqrt(S) +
    sqrt(1-S) K^Q sqrt(1-S), is symmetric with eigenvalues in [min c_j, max c_j] over the bands of both
    skips (proofs/05 item 19): the range the certificate's bounds use."""
    from injcert.model.bands import mix_weights

    bands = {"orders": [1, 3], "variances": var[:3], "residual_variances": var[3:]}
    model = _mixed_model(seed, bands).double()
    tt = torch.tensor([t], dtype=torch.float64)
    mix = mix_weights(_condition_map(seed, h, w, p), torch.float64)
    _assert_linear_part_in_range(model, lambda v: model.mixed_band_skip(v, tt, mix), tt, (h, w), var)


@given(seed=st.integers(0, 10**6), h=st.integers(1, 40), w=st.integers(1, 40), p=st.floats(0.0, 1.0))
@settings(max_examples=25, deadline=None)
def test_mixing_weights_are_a_partition_within_the_charged_slack(seed, h, w, p):
    """(s, c) lie in [0, 1] and s^2 + c^2 is within MIX_SLACK of 1 in float32 (the slack the log-det
    enclosure charges); a seen pixel far from any hole gets s = 0, a pixel deep in a hole s = 1."""
    from injcert.model.bands import MIX_ORDER, mix_weights
    from injcert.model.unet import MIX_SLACK

    m = _condition_map(seed, h, w, p, torch.float32)
    s, c = mix_weights(m, torch.float32)
    assert bool(((s >= 0) & (s <= 1) & (c >= 0) & (c <= 1)).all())
    err = (s.double() ** 2 + c.double() ** 2 - 1).abs().max()
    assert float(err) <= MIX_SLACK
    seen, hole = torch.ones(1, 1, 2 * MIX_ORDER + 3, 2 * MIX_ORDER + 3), torch.zeros(1, 1, 5, 5)
    assert float(mix_weights(seen, torch.float32)[0].max()) == 0.0
    assert float(mix_weights(hole, torch.float32)[0].min()) == 1.0


def test_mixed_skip_is_the_image_skip_without_a_condition_and_the_residual_skip_when_all_is_seen():
    """Nothing observed (the unconditional model): exactly the image's band skip; every pixel seen:
    exactly the restorer residual's."""
    from injcert.model.bands import mix_weights

    model = _mixed_model(1)
    x, tt = torch.randn(2, 3, 12, 10), torch.tensor([0.3, 0.7])
    none, every = torch.zeros(2, 3, 12, 10), torch.ones(2, 1, 12, 10)
    with torch.no_grad():
        assert torch.equal(model.mixed_band_skip(x, tt, mix_weights(none, x.dtype)), model.band_skip(x, tt))
        assert torch.equal(model.mixed_band_skip(x, tt, mix_weights(every, x.dtype)),
                           model.band_skip(x, tt, "residual_variances"))


@given(seed=st.integers(0, 10**4), t=st.floats(0.01, 0.99), p=st.floats(0.0, 1.0))
@settings(max_examples=8, deadline=None)
def test_mixed_model_jacobian_is_within_the_certified_bound(seed, t, p):
    """The whole network with the mixed skip and a random restorer: the dense Jacobian of eps in x,
    for a random condition, has its spectral norm within the certified L(t)."""
    model = _mixed_model(seed).double().eval()
    for q in model.restorer.out.parameters():  # an untrained restorer's last layer is zero
        q.data.normal_(0, 0.3)
    m = _condition_map(seed, 8, 8, p)
    y = torch.randn(1, 3, 8, 8, dtype=torch.float64) * m
    tt = torch.tensor([t], dtype=torch.float64)
    jac = dense_jacobian(lambda v: model(v, tt, y, m), torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert float(torch.linalg.matrix_norm(jac, 2)) <= model.certified_lipschitz_at(t) * (1 + 1e-9)


@given(seed=st.integers(0, 100), s0=st.floats(0.0, 50.0), span=st.floats(1e-3, 100.0))
@settings(max_examples=20, deadline=None)
def test_mixed_linear_integral_encloses_the_eigenvalue_range_of_both_skips(seed, s0, span):
    """With residual variances, linear_part_integral encloses the integrals of min and max of alpha c_j
    over the bands of both skips (dense quadrature), and is wider than the image skip's alone."""
    model, plain = _mixed_model(seed), tiny_unet(seed, **KW)
    s1 = s0 + span
    lo, hi = model.linear_part_integral(s0, s1)
    lo_true, hi_true = _quadrature_range(model, s0, s1, MIXED["variances"] + MIXED["residual_variances"])
    slack = 1e-6 * (1 + abs(hi_true))
    assert lo <= lo_true + slack and hi_true <= hi + slack
    plo, phi = plain.linear_part_integral(s0, s1)
    assert lo <= plo and phi <= hi


def test_mixed_options_are_validated_and_round_trip():
    model = _mixed_model(0)
    again = CondUNet.from_config(model.config)
    assert again.config == model.config and again.bands == MIXED and again.band_mix
    assert model.band_charge > tiny_unet(0, **KW).band_charge  # both skips' rounding
    for bad in ([1.0, 1.0], [1.0, 0.0, 1.0], None, "x"):
        with pytest.raises(ConfigError, match="residual_variances"):
            _mixed_model(0, dict(MIXED, residual_variances=bad))
    with pytest.raises(ConfigError, match="spectral_bands"):
        _mixed_model(0, dict(MIXED, other=[1.0, 1.0, 1.0]))
    with pytest.raises(ConfigError, match="needs a restorer"):
        tiny_unet(0, **dict(KW, spectral_bands=MIXED))


def test_mixed_model_tiles_exactly():
    """The mixing weights are read within the receptive field (the blur of the map plus the bands'):
    tiled evaluation is whole-image evaluation, bit for bit."""
    from injcert.tasks.tiling import TiledModel, shape_stable_convolutions

    model = _mixed_model(3).eval()
    for q in model.restorer.out.parameters():
        q.data.normal_(0, 0.3)
    m = _condition_map(2, 40, 36, 0.3, torch.float32)
    y = torch.randn(1, 3, 40, 36) * m
    x, tt = torch.randn(1, 3, 40, 36), torch.full((1,), 0.4)
    with torch.no_grad(), shape_stable_convolutions():
        whole = model(x, tt, y, m)
    with torch.no_grad():
        assert torch.equal(TiledModel(model, tile=8)(x, tt, y, m), whole)


def test_mixed_model_receptive_field_covers_the_map_blur():
    """With a fixed anchor, a pixel of eps depends on the condition map only within
    receptive_field_radius, which covers the bands' blur plus the map's (MIX_ORDER)."""
    from injcert.model.bands import MIX_ORDER

    model = _mixed_model(0, dict(MIXED, orders=[1, 40])).double().eval()
    r = model.receptive_field_radius
    assert r >= 40 + MIX_ORDER
    n = 2 * r + 8
    x = torch.randn(1, 3, n, n, dtype=torch.float64)
    anchor = torch.randn(1, 3, n, n, dtype=torch.float64)
    m = _condition_map(1, n, n, 0.5)
    m2 = m.clone()
    m2[..., :, r + 5:] = 1 - m2[..., :, r + 5:]  # change only pixels farther than r from column 4
    t = torch.tensor([0.4], dtype=torch.float64)
    with torch.no_grad():
        a, b = model(x, t, x * m, m, anchor), model(x, t, x * m2, m2, anchor)
    assert torch.equal(a[..., :, :5], b[..., :, :5])
    near = m.clone()
    near[..., :, 6:] = 1 - near[..., :, 6:]
    with torch.no_grad():  # a change near it does move it (the comparison can tell)
        assert not torch.equal(a[..., :, :1], model(x, t, x * near, near, anchor)[..., :, :1])
