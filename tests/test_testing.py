"""injcert.testing: the strategies build valid objects and the assertions catch what they should."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from torch import nn

from injcert.testing.assertions import (
    assert_bound_sound,
    assert_certified,
    assert_round_trip_exact,
    exact_jacobian_norm,
)
from injcert.testing.strategies import (
    analytic_problems,
    conv_layers,
    corruptions,
    images,
    masks,
    networks,
)

from helpers import tiny_unet


@given(images(batch=(1, 2), size=(4, 12)))
def test_images_in_range(x):
    assert x.ndim == 4 and x.dtype == torch.float64 and x.shape[1] in (1, 3)
    assert float(x.min()) >= -1 and float(x.max()) <= 1


@given(corruptions(size=16), images(batch=1, channels=3, size=16))
def test_corruptions_apply(corruption, x):
    y, m = corruption(x, 0)
    assert y.shape == x.shape and m.shape[0] == 1 and m.shape[2:] == x.shape[2:]


@given(masks(batch=(1, 2), size=(8, 16)))
def test_masks_are_binary_boxes(mask):
    assert mask.shape[1] == 1 and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert bool((mask.flatten(1).sum(1) > 0).all())


@given(conv_layers(max_channels=3, max_size=7))
def test_conv_bounds_sound(case):
    layer, shape = case
    bound, truth = assert_bound_sound(layer, shape)
    assert truth <= bound * (1 + 1e-9)


@given(networks(max_depth=2, max_channels=3))
def test_network_bounds_sound(case):
    net, shape = case
    assert_bound_sound(net, shape, points=2)


def test_assert_bound_sound_catches_a_planted_unsound_bound(monkeypatch):
    import injcert
    import injcert.theory.lipschitz as lipmod

    layer = nn.Conv2d(2, 2, 3, padding=1).double()
    real = lipmod.lipschitz_bound

    def half(module, shape, *, size_independent=False):
        lb = real(module, shape, size_independent=size_independent)
        return lipmod.LipschitzBound(lb.value * 0.5, lb.layers, lb.input_shape, lb.size_independent)

    monkeypatch.setattr(injcert, "lipschitz_bound", half)  # injcert.testing calls the public API
    with pytest.raises(AssertionError, match="unsound bound"):
        assert_bound_sound(layer, (2, 6, 6))


def test_exact_jacobian_norm_of_a_matrix():
    w = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert exact_jacobian_norm(lambda x: x @ w.T, torch.zeros(1, 2, dtype=torch.float64)) == pytest.approx(3.0)


@given(analytic_problems(), images(batch=1, channels=1, size=8, dtype=torch.float32))
def test_round_trip_exact_on_analytic_problems(model, x):
    z = assert_round_trip_exact(model, x, steps=6)
    assert z.shape == x.shape


def test_assert_round_trip_exact_catches_ddim():
    from injcert.testing import AnalyticMixtureScore

    x = torch.linspace(-0.9, 0.9, 64, dtype=torch.float64).reshape(1, 1, 8, 8)
    with pytest.raises(AssertionError, match="not bit-exact"):
        assert_round_trip_exact(AnalyticMixtureScore(std=0.3), x, steps=4, method="ddim")


def test_assert_certified(tmp_path):
    from injcert.io import save_checkpoint
    model = tiny_unet(in_channels=1, base_channels=4, emb_dim=8, lipschitz_budget=1.0)
    path = tmp_path / "m.ckpt"
    save_checkpoint(model, path)
    cert = assert_certified(path, steps=6, samples=2)
    assert cert.verdict == "PASS"
    with pytest.raises(AssertionError, match="integrator"):
        assert_certified(path, steps=2, samples=0, method="ddim", t_max=0.999)
