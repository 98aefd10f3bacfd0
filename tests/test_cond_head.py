"""The condition-only denoiser term ``cond_head`` (``CondUNet.condition_estimate``, proofs/05 item 11):
it never reads x, so the Jacobian in x and every certified bound are those of the network without it;
zero-initialised, it computes the same function; it reaches no farther than the receptive field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from injcert.errors import ConfigError
from injcert.io import load_checkpoint, save_checkpoint
from tests.helpers import dense_jacobian, subprocess_env, tiny_unet

BANDS = {"orders": [1, 3], "variances": [0.01, 0.3, 5.0]}
KW = dict(lipschitz_budget=60.0, lipschitz_kappa=3.0, skip_max=0.0, data_variance=None, parameterization="denoiser",
          alpha_max=0.5, alpha_init=0.4, spectral_bands=BANDS)


def _pair(seed: int, head_scale: float):
    """The same weights without and with the head; the head's weights drawn at ``head_scale``."""
    plain = tiny_unet(seed, **KW).double().eval()
    headed = tiny_unet(seed, **dict(KW, cond_head=True)).double().eval()
    missing, unexpected = headed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("cond_head.") for k in missing) and missing
    if head_scale:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in headed.cond_head.parameters():
                p.copy_(head_scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return plain, headed


def _cond(seed: int, n: int, h: int, w: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64) * 2 - 1
    m = (torch.rand(n, 1, h, w, generator=g) < 0.5).double()
    return y * m, m


def test_a_zero_head_computes_the_same_function_and_bounds():
    plain, headed = _pair(0, 0.0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y, m = _cond(1, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain(x, 0.3, y, m), headed(x, 0.3, y, m))
    for t in (0.01, 0.3, 0.9):
        assert headed.certified_lipschitz_at(t) == plain.certified_lipschitz_at(t)


@settings(max_examples=8)
@given(seed=st.integers(0, 2**16), t=st.floats(0.005, 0.99), scale=st.floats(0.05, 3.0))
def test_the_head_leaves_the_jacobian_in_x_and_the_certified_bound_unchanged(seed, t, scale):
    """Soundness against the dense truth: with a non-zero head the output changes with (y, m), but the
    Jacobian in x equals the head-less network's and its spectral norm is within the certified L(t)."""
    plain, headed = _pair(seed % 7, scale)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y, m = _cond(seed, 1, 4, 4)
    tt = torch.tensor([t], dtype=torch.float64)
    with torch.no_grad():
        assert not torch.equal(plain(x, tt, y, m), headed(x, tt, y, m))  # the head is live
    jp = dense_jacobian(lambda z: plain(z, tt, y, m), x)
    jh = dense_jacobian(lambda z: headed(z, tt, y, m), x)
    assert torch.allclose(jp, jh, rtol=0, atol=1e-9 * float(jp.abs().max()))
    truth = float(torch.linalg.matrix_norm(jh, ord=2))
    bound = headed.certified_lipschitz_at(t)
    assert bound == plain.certified_lipschitz_at(t)
    assert truth <= bound * (1 + 1e-9)


def test_the_head_reads_the_condition_within_the_receptive_field():
    """A pixel of eps depends on (y, m) only within receptive_field_radius (nearest upsampling of every
    level included), so tiling with that halo stays exact."""
    _, model = _pair(3, 1.0)
    r = model.receptive_field_radius
    n = 2 * r + 8
    x = torch.randn(1, 3, n, n, dtype=torch.float64)
    y, m = _cond(4, 1, n, n)
    y2 = y.clone()
    y2[..., :, r + 5:] += 1.0
    with torch.no_grad():
        a, b = model(x, 0.4, y, m), model(x, 0.4, y2, m)
    assert torch.equal(a[..., :, :5], b[..., :, :5])
    assert not torch.equal(a, b)


def test_cond_head_option_is_validated_and_round_trips(tmp_path):
    model = tiny_unet(0, **dict(KW, cond_head=True))
    assert model.config["cond_head"] is True
    save_checkpoint(model, tmp_path / "m.ckpt")
    again = load_checkpoint(tmp_path / "m.ckpt")
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ConfigError, match="cond_head must be true or false"):
        tiny_unet(0, **dict(KW, cond_head=1))
    with pytest.raises(ConfigError, match="cond_head needs parameterization"):
        tiny_unet(0, lipschitz_budget=10.0, cond_head=True)


def test_add_cond_head_script_keeps_the_function_and_refuses_bad_input(tmp_path):
    src = tiny_unet(0, **KW)
    save_checkpoint(src, tmp_path / "src.ckpt")
    out = tmp_path / "out.ckpt"
    run = subprocess.run([sys.executable, "scripts/add_cond_head.py", str(tmp_path / "src.ckpt"), str(out)],
                         capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert run.returncode == 0, run.stderr
    new = load_checkpoint(out).double().eval()
    assert new.config["cond_head"] is True
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    y, m = _cond(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(src.double().eval()(x, 0.2, y, m), new(x, 0.2, y, m))
    for junk in (tmp_path / "missing.ckpt", Path("/etc/passwd")):
        bad = subprocess.run([sys.executable, "scripts/add_cond_head.py", str(junk), str(tmp_path / "y.ckpt")],
                             capture_output=True, text=True, timeout=300, env=subprocess_env())
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), t=st.floats(0.005, 0.99), a=st.floats(-2.0, 2.0), b=st.floats(-2.0, 2.0))
def test_latent_benchmarks_linear_part_is_the_exact_linear_skip(seed, t, a, b):
    """``benchmarks/latent_gaussianity.py --linear-part`` zeroes the learned terms: what is left is
    linear in x and reads no condition, and the checkpoint it was copied from is untouched."""
    from benchmarks.latent_gaussianity import linear_part

    _, headed = _pair(seed, 1.0)
    before = {k: v.clone() for k, v in headed.state_dict().items()}
    lin = linear_part(headed)
    g = torch.Generator().manual_seed(seed + 7)
    x1, x2 = (torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    y, m = _cond(seed + 3, 2, 8, 8)
    with torch.no_grad():
        f = lambda x, *c: lin(x, t, *c)  # noqa: E731
        assert torch.allclose(f(a * x1 + b * x2, y, m), a * f(x1, y, m) + b * f(x2, y, m), atol=1e-10)
        assert torch.allclose(f(x1, y, m), f(x1, torch.zeros_like(y), torch.ones_like(m)), atol=1e-12)
        assert not torch.allclose(headed(x1, t, y, m), f(x1, y, m))
    assert all(torch.equal(v, headed.state_dict()[k]) for k, v in before.items())
