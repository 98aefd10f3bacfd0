"""The classical baselines and starting estimates (injcert.tasks.classical)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from injcert.data.corruptions import make_corruption
from injcert.data.grid import square_image
from injcert.metrics import psnr
from injcert.tasks.classical import METHODS, classical_estimate, default_method


@given(n=st.integers(4, 20), method=st.sampled_from(sorted(METHODS)), seed=st.integers(0, 1000))
@settings(max_examples=12)  # slow: every baseline method runs per example (~1 s an example)
def test_every_method_keeps_the_shape_at_any_size(n, method, seed):
    """Tiny and odd sizes included (BM3D crashes below its block size unless padded; deconvolution
    needs the PSF to fit)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, n, n, generator=g) * 2 - 1
    kind = {"inpaint_biharmonic": "random", "richardson_lucy": "blur", "wiener": "blur",
            "richardson_lucy_local": "blur"}.get(method, "noise")
    obs = make_corruption(kind).sample(x, seed)
    name, out = classical_estimate(obs.y, obs.m, method)
    assert name == method and out.shape == x.shape and bool(torch.isfinite(out).all())
    if kind == "random":  # observed pixels are kept
        known = (obs.m[:, :1] == 1).expand_as(x)
        assert torch.allclose(out[known], obs.y[known], atol=1e-6)


@pytest.mark.parametrize("kind,methods", [("noise", ["denoise_nl_means", "denoise_tv_chambolle", "bm3d"]),
                                          ("blur", ["richardson_lucy", "wiener", "richardson_lucy_local"]),
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
