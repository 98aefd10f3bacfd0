"""The classical baselines and starting estimates (injcert.tasks.classical)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from injcert.data.corruptions import local_blur, make_corruption
from injcert.data.grid import square_image
from injcert.metrics import psnr
from injcert.tasks.classical import METHODS, LocalBlurSystem, classical_estimate, default_method


@given(n=st.integers(4, 20), method=st.sampled_from(sorted(METHODS)), seed=st.integers(0, 1000))
@settings(max_examples=12)  # slow: every baseline method runs per example (~1 s an example)
def test_every_method_keeps_the_shape_at_any_size(n, method, seed):
    """Tiny and odd sizes included (BM3D crashes below its block size unless padded; deconvolution
    needs the PSF to fit)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, n, n, generator=g) * 2 - 1
    kind = {"inpaint_biharmonic": "random", "richardson_lucy": "blur", "wiener": "blur",
            "richardson_lucy_local": "blur", "lsmr_local": "blur"}.get(method, "noise")
    obs = make_corruption(kind).sample(x, seed)
    name, out = classical_estimate(obs.y, obs.m, method)
    assert name == method and out.shape == x.shape and bool(torch.isfinite(out).all())
    if kind == "random":  # observed pixels are kept
        known = (obs.m[:, :1] == 1).expand_as(x)
        assert torch.allclose(out[known], obs.y[known], atol=1e-6)


@pytest.mark.parametrize("kind,methods", [("noise", ["denoise_nl_means", "denoise_tv_chambolle", "bm3d"]),
                                          ("blur", ["richardson_lucy", "wiener", "richardson_lucy_local", "lsmr_local"]),
                                          ("box", ["inpaint_biharmonic"])])
def test_baselines_improve_on_the_observation(kind, methods):
    x = square_image("chelsea", 96).unsqueeze(0)
    obs = make_corruption(kind).sample(x, 0)
    assert default_method(obs.m) in methods
    for method in methods:
        _, out = classical_estimate(obs.y, obs.m, method)
        assert psnr(out, x) > psnr(obs.y, x) + 0.3, method


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match="choices"):
        classical_estimate(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), "median")


@given(seed=st.integers(0, 10_000), n=st.integers(24, 48))
@settings(max_examples=10, deadline=None)
def test_local_richardson_lucy_fits_the_local_operator_and_keeps_the_outside(seed, n):
    """The local RL keeps every pixel outside the blurred region equal to the observation, and its
    estimate explains the observation better than whole-image RL does (the data misfit
    ||A x_hat - y|| under the corruption's own operator A)."""
    x = square_image("chelsea", n).unsqueeze(0)
    obs = make_corruption("blur").sample(x, seed)
    outside = (obs.m[:, 1:2] <= 0.5).expand_as(x)
    _, local = classical_estimate(obs.y, obs.m, "richardson_lucy_local")
    _, whole = classical_estimate(obs.y, obs.m, "richardson_lucy")
    assert torch.equal(local[outside], obs.y[outside])
    # the operator in [0, 1] units (RL's domain); A is affine-free, so misfits compare directly
    misfit = lambda est: float((obs.operator((est + 1) / 2) - (obs.y + 1) / 2).norm())
    assert misfit(local) < misfit(whole)


def test_local_richardson_lucy_beats_whole_image_deconvolution_at_the_border():
    x = square_image("chelsea", 96).unsqueeze(0)
    obs = make_corruption("blur").sample(x, 0)
    _, local = classical_estimate(obs.y, obs.m, "richardson_lucy_local")
    best_whole = max(psnr(classical_estimate(obs.y, obs.m, m)[1], x) for m in ("richardson_lucy", "wiener"))
    assert psnr(local, x) > best_whole + 0.3


def _box(h, w, r0, r1, c0, c1):
    region = torch.zeros(h, w, dtype=torch.bool)
    region[r0:r1, c0:c1] = True
    return region


@st.composite
def _blur_case(draw):
    """An image size, a box anywhere (touching the borders included, one pixel wide included) and a PSF."""
    h, w = draw(st.integers(6, 40)), draw(st.integers(6, 40))
    r0, c0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    r1, c1 = draw(st.integers(r0 + 1, h)), draw(st.integers(c0 + 1, w))
    return h, w, (r0, r1, c0, c1), draw(st.sampled_from([0.7, 1.0, 2.0, 3.0])), draw(st.integers(0, 10_000))


@given(case=_blur_case())
@settings(max_examples=40, deadline=None)
def test_local_blur_system_is_the_corruptions_operator_on_its_crop(case):
    """The cropped sparse system is the corruption's operator exactly: for u inside and y outside,
    b - B u equals M (y - A x) with A = local_blur on the full image; and B^T is B's adjoint."""
    h, w, box, sigma, seed = case
    g = torch.Generator().manual_seed(seed)
    region = _box(h, w, *box)
    y = torch.rand(3, h, w, generator=g, dtype=torch.float64) * 2 - 1
    s = LocalBlurSystem.make(y, region, sigma)
    u = np.random.default_rng(seed).uniform(-1, 1, s.y.size)
    x = s.paste(u, y)
    full = (region * (y - local_blur(x[None], region[None, None], sigma)[0]))[:, s.rows, s.cols]
    assert np.allclose(s.rhs() - s.forward(u), full.numpy().reshape(-1), atol=1e-12)
    v = np.random.default_rng(seed + 1).normal(size=s.y.size)
    assert np.isclose(s.forward(u) @ v, u @ s.adjoint(v), rtol=1e-10, atol=1e-12)
    # pasting keeps the outside exactly
    assert torch.equal(x[:, ~region], y[:, ~region])


def test_lsmr_deconvolution_is_the_strongest_blur_baseline_and_keeps_the_outside():
    """On a natural image lsmr_local beats the local Richardson-Lucy (30 iterations, the previous
    default) by well over a dB, leaves the outside untouched and fits the operator better."""
    x = square_image("chelsea", 64).unsqueeze(0)
    obs = make_corruption("blur").sample(x, 0)
    outside = (obs.m[:, 1:2] <= 0.5).expand_as(x)
    _, lsmr = classical_estimate(obs.y, obs.m, "lsmr_local")
    _, rl = classical_estimate(obs.y, obs.m, "richardson_lucy_local")
    assert torch.equal(lsmr[outside], obs.y[outside])
    assert psnr(lsmr, x) > psnr(rl, x) + 1.0
    misfit = lambda est: float((obs.operator(est) - obs.y).norm())
    assert misfit(lsmr) < misfit(rl)
    assert default_method(obs.m) == "lsmr_local"


def test_lsmr_with_a_zero_psf_returns_the_observation():
    """sigma = 0 (and a 1-pixel-wide image, where the kernel is capped to nothing) blur nothing:
    the observation is exact and comes back unchanged, not NaN."""
    x = square_image("chelsea", 16).unsqueeze(0)
    obs = make_corruption("blur", sigma=0.0).sample(x, 0)
    _, out = classical_estimate(obs.y, obs.m, "lsmr_local", blur_sigma=0.0)
    assert torch.equal(out, obs.y)
    thin = torch.rand(1, 3, 1, 9) * 2 - 1
    m = torch.zeros(1, 3, 1, 9)
    m[:, 1, :, 2:5] = 1
    m[:, 0] = 1 - m[:, 1]
    _, out = classical_estimate(thin, m, "lsmr_local")
    assert torch.equal(out, thin)
