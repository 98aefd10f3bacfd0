"""Certifiable layers and the conditional U-Net: soundness of the certified Lipschitz bound."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from injcert.errors import ConfigError
from injcert.model.layers import LipConv2d, ResBlock
from injcert.model.objective import denoising_loss
from injcert.model.unet import CondUNet
from injcert.testing import exact_jacobian_norm
from injcert.theory.lipschitz import lipschitz_bound, lipschitz_lower_bound
from injcert.theory.spectral import operator_norm_bound

from helpers import dense_jacobian, tiny_config, tiny_unet


# ----------------------------------------------------------------------------- LipConv2d


@given(
    cin=st.integers(1, 4), cout=st.integers(1, 4), k=st.sampled_from([1, 3]),
    scale=st.floats(0.1, 20.0), cap=st.floats(0.2, 3.0), seed=st.integers(0, 10**6),
)
def test_lipconv_effective_norm_below_cap(cin, cout, k, scale, cap, seed):
    torch.manual_seed(seed)
    conv = LipConv2d(cin, cout, k, cap=cap)
    with torch.no_grad():
        conv.weight.mul_(scale)
    for module in (conv, conv.double()):  # float32 weights, then float64 weights
        # certified float64 bound of the weight forward uses (size-independent)
        bound = operator_norm_bound(module.as_conv2d(), (cin, 6, 6), size_independent=True)
        assert bound <= cap * (1 + 1e-6)
    # the truth on a small input, from the dense Jacobian of the actual forward (float64)
    conv64 = conv
    x = torch.randn(1, cin, 6, 6, dtype=torch.float64)
    truth = exact_jacobian_norm(conv64, x)  # the bias does not change the Jacobian
    assert truth <= bound * (1 + 1e-9) + 1e-12
    rule = lipschitz_bound(conv64, (cin, 6, 6), size_independent=True).value
    assert truth <= rule * (1 + 1e-9) + 1e-12 and rule <= cap * (1 + 1e-6)


def test_lipconv_cache_never_stale():
    conv = LipConv2d(2, 2, 3, cap=0.5)
    with torch.no_grad():
        conv.effective_weight()
        conv.weight.mul_(0.01)  # in-place update, as an optimizer step does
        cached = conv.effective_weight()
        fresh = conv._compute_effective_weight()
    assert torch.equal(cached, fresh)


def test_unconstrained_lipconv_is_plain_conv():
    conv = LipConv2d(2, 3, 3, cap=None)
    assert conv.effective_weight() is conv.weight
    assert math.isfinite(lipschitz_bound(conv, (2, 8, 8), size_independent=True).value)


# ----------------------------------------------------------------------------- CondUNet forward


def test_forward_odd_sizes_batches_and_conditions():
    model = tiny_unet().eval()
    x = torch.randn(3, 3, 17, 23)
    t = torch.tensor([0.01, 0.5, 0.9])
    with torch.no_grad():
        e0 = model(x, t)
        e1 = model(x, t, torch.randn_like(x), torch.ones(3, 1, 17, 23))
        e2 = model(x, 0.3, torch.randn_like(x), torch.rand(3, 3, 17, 23))
        e3 = model(x[:1], torch.tensor(0.01))
    assert e0.shape == e1.shape == e2.shape == x.shape and e3.shape == (1, 3, 17, 23)
    assert torch.allclose(e3, e0[:1], atol=1e-5)  # examples are independent of each other
    assert not torch.allclose(e0, e1)  # the condition is used
    assert torch.isfinite(e2).all()


def test_float64():
    model = tiny_unet().double().eval()
    x = torch.randn(2, 3, 9, 12, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, torch.tensor([0.2, 0.7], dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == x.shape and torch.isfinite(out).all()


def test_receptive_field_radius_bounds_dependence():
    model = tiny_unet().double().eval()
    f = model.downsampling_factor
    r = model.receptive_field_radius
    n = 2 * r + 4 * f  # large enough to see the whole receptive field
    n += (-n) % f
    x = torch.randn(1, 3, n, n, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 3, n, n, dtype=torch.float64, requires_grad=True)
    c = n // 2
    out = model(x, 0.5, y, None)
    out[0, :, c, c].sum().backward()
    for g in (x.grad, y.grad):
        support = (g.abs().sum(dim=(0, 1)) > 0).nonzero()
        assert support.numel() > 0
        assert int((support - c).abs().max()) <= r


def test_config_roundtrip_and_errors():
    model = tiny_unet()
    again = CondUNet.from_config(model.config)
    assert again.config == model.config and float(again.gain) == float(model.gain)
    for bad in ({"lipschitz_budget": 0.0}, {"lipschitz_budget": -1}, {"base_channels": -3},
                {"channel_mults": []}, {"activation": "swish"}, {"nonsense": 1}, {"modulation": 1.5}):
        with pytest.raises(ConfigError) as err:
            CondUNet.from_config(dict(model.config, **bad))
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- certified bound


def _train_a_little(model: CondUNet, steps: int = 4, lr: float = 0.05) -> None:
    """A few real (large-lr) denoising steps, to move the weights far from initialisation."""
    from injcert.data.images import PatchDataset

    ds = PatchDataset(None, patch_size=16, channels=3, length=64, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for k in range(steps):
        x0 = torch.stack([ds[4 * k + j] for j in range(4)])
        loss = denoising_loss(model, x0, torch.Generator().manual_seed(k))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("budget", [10.0, 0.5])
def test_certified_bound_after_training_is_sound(budget):
    model = tiny_unet(lipschitz_budget=budget)
    _train_a_little(model)
    model.eval()
    lb = lipschitz_bound(model, (3, 16, 16), size_independent=True)
    assert lb.value <= budget, lb.value
    for row in lb.layers:  # every capped conv respects its cap
        if row.type == "LipConv2d":
            assert row.bound <= 1.0 * (1 + 1e-6)
    # sampled Jacobian norms, at random points, times and conditions, never exceed it
    model64 = model.double()
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for t in (0.05, 0.5, 0.95):
        y = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=g)
        m = (torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=g) > 0.5).to(torch.float64)
        pts = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=g)
        worst = max(worst, lipschitz_lower_bound(lambda v: model64(v, t, y, m), pts, n_iter=8, ascent_steps=1,
                                                 generator=g))
    assert 0.0 < worst <= lb.value * (1 + 1e-9)


def test_dense_jacobian_below_bound_on_tiny_input():
    model = tiny_unet(lipschitz_budget=2.0)
    _train_a_little(model, steps=2)
    model = model.double().eval()
    bound = lipschitz_bound(model, (3, 4, 6), size_independent=False).value
    bound_si = lipschitz_bound(model, (3, 4, 6), size_independent=True).value
    assert bound_si <= 2.0
    x = torch.randn(1, 3, 4, 6, dtype=torch.float64)
    y = torch.randn_like(x)
    for t in (0.1, 0.8):
        truth = exact_jacobian_norm(lambda v: model(v, t, y, None), x)
        assert truth <= min(bound, bound_si) * (1 + 1e-9)


def test_conditioning_does_not_enter_the_bound():
    model = tiny_unet()
    _train_a_little(model, steps=2)
    model.eval()
    b1 = lipschitz_bound(model, (3, 16, 16), size_independent=True).value
    # changing only the conditioning encoder / time embedding leaves the x-bound unchanged
    with torch.no_grad():
        for p in list(model.cond_encoder.parameters()) + list(model.time_embed.parameters()):
            p.mul_(-7.0).add_(3.0)
        for blk in model.modules():
            if isinstance(blk, ResBlock):
                blk.emb.weight.mul_(50.0)
    b2 = lipschitz_bound(model, (3, 16, 16), size_independent=True).value
    assert b1 == b2


def test_unconstrained_model_is_certified_too():
    model = tiny_unet(lipschitz_budget=None)
    assert float(model.gain) == 1.0 and model.lipschitz_budget == math.inf
    lb = lipschitz_bound(model, (3, 16, 16), size_independent=True).value
    assert math.isfinite(lb) and lb > 0


def test_checkpoint_roundtrip(tmp_path):
    from injcert.io import load_checkpoint, save_checkpoint

    model = tiny_unet()
    _train_a_little(model, steps=1)
    model.eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", metadata={"step": 1})
    back = load_checkpoint(path)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, 0.3), back(x, 0.3))
    assert back.checkpoint_metadata["step"] == 1
    assert lipschitz_bound(back, (3, 16, 16), size_independent=True).value <= back.lipschitz_budget


def test_gaussian_skip_is_charged_and_sound() -> None:
    """c(t) x (exact Gaussian-data slope) is added for every t; its sup is in the certified bound."""
    import math

    from injcert.model.unet import CondUNet, gaussian_skip_sup
    from injcert.theory.lipschitz import lipschitz_bound

    for v in (0.05, 0.25, 0.5, 2.0):
        s = torch.linspace(0, 1, 100001, dtype=torch.float64)
        dense = float((s / (v + (1 - v) * s * s)).max())
        assert dense <= gaussian_skip_sup(v) <= dense * (1 + 1e-5)
    net = tiny_unet(lipschitz_budget=4.0, data_variance=0.25).double()
    bound = lipschitz_bound(net, (3, 6, 6), size_independent=True).value
    assert bound <= 4.0
    x = torch.randn(3 * 36, dtype=torch.float64).view(1, 3, 6, 6)
    for t in (0.0, 0.2, 0.5, 0.9, net.schedule.t_max):
        tt = torch.full((1,), t, dtype=torch.float64)
        assert exact_jacobian_norm(lambda v: net(v, tt), x) <= bound
    with pytest.raises(ConfigError, match="data_variance"):
        CondUNet(data_variance=-1.0)
    with pytest.raises(ConfigError, match="no room"):
        CondUNet(lipschitz_budget=1.5, data_variance=0.25)
    assert math.isclose(float(net.gaussian_skip(torch.tensor([1.0]))), 1.0)


# ----------------------------------------------------------------------------- noise-adaptive budget

ADAPTIVE = dict(lipschitz_budget=60.0, lipschitz_kappa=3.0, skip_max=0.5, data_variance=0.25)
DENOISER = dict(lipschitz_budget=60.0, lipschitz_kappa=3.0, skip_max=0.0, data_variance=None,
                parameterization="denoiser", alpha_max=0.5, alpha_init=0.4)
DENOISER_WIENER = dict(DENOISER, data_variance=0.25, lipschitz_kappa=3.5, skip_max=0.2)
DENOISER_BANDS = dict(DENOISER, skip_max=0.2, spectral_bands={"orders": [1, 3], "variances": [0.01, 0.3, 5.0]})
KINDS = {"eps": ADAPTIVE, "denoiser": DENOISER, "denoiser+wiener": DENOISER_WIENER, "denoiser+bands": DENOISER_BANDS}


@pytest.mark.parametrize("kw", list(KINDS.values()), ids=list(KINDS))
def test_adaptive_budget_is_non_increasing_and_follows_kappa_over_sigma(kw):
    model = tiny_unet(**kw)
    ts = [0.0, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.3, 0.6, 0.9, model.schedule.t_max]
    budgets = [model.lipschitz_budget_at(t) for t in ts]
    certified = [model.certified_lipschitz_at(t) for t in ts]
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))
    assert all(a >= b for a, b in zip(certified, certified[1:]))
    assert all(c <= b for c, b in zip(certified, budgets))
    assert budgets[0] == 60.0  # the cap
    s = float(model.schedule.sigma(torch.tensor(0.3, dtype=torch.float64)))
    assert math.isclose(model.lipschitz_budget_at(0.3), kw["lipschitz_kappa"] / s, rel_tol=1e-12)
    # the uniform bound is the sup over t
    assert math.isclose(model.certified_lipschitz(), certified[0], rel_tol=1e-9)
    # a trained-like network (convs at their caps) approaches B(t): the gain is not wasted
    assert model.certified_lipschitz_at(0.5) <= model.lipschitz_budget_at(0.5)


@given(seed=st.integers(0, 10**6), t=st.floats(1e-4, 0.99), h=st.integers(3, 6), w=st.integers(3, 6),
       scale=st.floats(0.5, 4.0), kind=st.sampled_from(sorted(KINDS)))
@settings(max_examples=12)  # slow: three dense Jacobians of a U-Net per example (~3 s an example)
def test_adaptive_bound_is_sound_against_the_dense_jacobian(seed, t, h, w, scale, kind):
    """L(t) bounds the spectral norm of the dense Jacobian at every t' >= t (float64, trained-like weights),
    and the part without the exact linear term (the log-norm's l(t)) bounds J - s(t) I."""
    kw = KINDS[kind]
    model = tiny_unet(seed, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight" in name and p.dim() == 4:
                p.mul_(scale)  # LipConv2d rescales to its cap: push the convs towards it
    model = model.double().eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, h, w, dtype=torch.float64, generator=g)
    y = torch.randn(1, 3, h, w, dtype=torch.float64, generator=g)
    m = (torch.rand(1, 3, h, w, dtype=torch.float64, generator=g) > 0.5).to(torch.float64)
    bound = model.certified_lipschitz_at(t)
    assert bound == lipschitz_bound(model, (3, h, w), size_independent=True, t=t).value
    rest = model.nonlinear_lipschitz_at(t)
    for tt in (t, 0.5 * (t + 0.99), 0.99):
        tt64 = torch.tensor([tt], dtype=torch.float64)
        jac = dense_jacobian(lambda v: model(v, tt64, y, m), x)
        norm = float(torch.linalg.matrix_norm(jac, ord=2))
        assert norm <= bound * (1 + 1e-9), (tt, norm, bound)
        # exact linear part of eps in x: c(t) (Gaussian skip), w(t) (denoiser) or w(I - alpha K_t) (bands)
        if model.bands is not None:
            wt, at = model._denoiser_coefficients(tt64)
            lin = dense_jacobian(lambda v: wt * (v - at * model.band_skip(v, tt64)), x)
        elif model.parameterization == "denoiser":
            lin = float(model._denoiser_coefficients(tt64)[0]) * torch.eye(x.numel(), dtype=jac.dtype)
        else:
            lin = float(model.gaussian_skip(tt64)) * torch.eye(x.numel(), dtype=jac.dtype)
        rest_norm = float(torch.linalg.matrix_norm(jac - lin, ord=2))
        assert rest_norm <= rest * (1 + 1e-9), (tt, rest_norm, rest)


def test_adaptive_forward_gain_never_exceeds_the_charged_gain():
    """The float32 forward multiplies by fl(gain) * fl(r(t32)); the certificate charges
    gain * min(1, r(t) * (1 + 1e-6)) in float64 — never smaller."""
    model = tiny_unet(**ADAPTIVE)
    t64 = torch.linspace(0.0, float(model.schedule.t_max), 2001, dtype=torch.float64)
    t32 = t64.to(torch.float32)
    used = model.gain.to(torch.float32) * model.gain_scale(t32).to(torch.float32)
    charged = float(model.gain.double()) * torch.clamp(model.gain_scale(t64) * (1 + 1e-6), max=1.0)
    assert bool((used.double() <= charged).all())


def test_adaptive_config_round_trips_and_rejects_bad_kappa():
    model = tiny_unet(**ADAPTIVE)
    again = CondUNet.from_config(model.config)
    assert again.config == model.config and again.lipschitz_kappa == 3.0
    with pytest.raises(ConfigError, match="lipschitz_kappa"):
        tiny_unet(lipschitz_budget=10.0, lipschitz_kappa=-1.0)
    with pytest.raises(ConfigError, match="lipschitz_kappa"):
        tiny_unet(lipschitz_budget=None, lipschitz_kappa=3.0)
    with pytest.raises(ConfigError, match="no room at t_max"):
        tiny_unet(lipschitz_budget=10.0, lipschitz_kappa=1.0, skip_max=0.5, data_variance=0.25)
    with pytest.raises(ConfigError, match="parameterization"):
        tiny_unet(parameterization="x0")
    with pytest.raises(ConfigError, match="needs lipschitz_kappa"):
        tiny_unet(parameterization="denoiser")
    with pytest.raises(ConfigError, match="no room for the denoiser"):
        tiny_unet(**dict(DENOISER, lipschitz_kappa=2.0, data_variance=0.25))


def test_batched_normalisation_equals_the_per_layer_effective_weights():
    """One batched Gram pass per training step gives each LipConv2d the effective weight its own
    forward computes (the rule re-certifies whatever it runs, but training must match eval)."""
    from injcert.model.layers import LipConv2d, batched_effective_weights, batched_normalisation

    cfg = tiny_config()["model"]
    model = tiny_unet(**dict(cfg, lipschitz_budget=cfg.get("lipschitz_budget") or 30.0))
    layers = [m for m in model.modules() if isinstance(m, LipConv2d)]
    with torch.no_grad():
        for k, layer in enumerate(layers):
            layer.weight.mul_(10.0 ** ((k % 5) - 2))  # some layers capped, some not
    gen = torch.Generator().manual_seed(0)
    probes = [torch.randn(layer.weight.shape, generator=gen) for layer in layers]
    ref = [layer._compute_effective_weight() for layer in layers]
    sum((r * p).sum() for r, p in zip(ref, probes)).backward()
    ref_grads = [layer.weight.grad.clone() for layer in layers]
    model.zero_grad(set_to_none=True)
    got = batched_effective_weights(layers)
    for r, g in zip(ref, got):
        assert torch.allclose(g, r, rtol=1e-6, atol=0)
    capped = [bool((r.detach() != layer.weight.detach()).any()) for r, layer in zip(ref, layers)]
    assert any(capped) and not all(capped)  # both branches (scale < 1 and scale = 1) are exercised
    # the gradient too: min() sends it to the minimising reshape only, clamp(., max=1) none where
    # the cap is inactive, so differentiating only those must give the per-layer gradient
    sum((g * p).sum() for g, p in zip(got, probes)).backward()
    for layer, rg in zip(layers, ref_grads):
        assert torch.allclose(layer.weight.grad, rg, rtol=1e-5, atol=1e-7 * rg.abs().max().item())
    with batched_normalisation(model):
        assert all(layer.effective_weight() is layer._batched for layer in layers)
    assert all(layer._batched is None for layer in layers)
