"""Public encode/decode API, latents on disk, exact latent recovery of samples."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from injcert.errors import CheckpointError
from injcert.solvers import ReversibleHeun, quantize
from injcert.tasks.invert import Latent, decode, decode_full, encode, encode_state
from injcert.testing import AnalyticMixtureScore


@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(2, 8), w=st.integers(2, 8),
       steps=st.integers(1, 40), dtype=st.sampled_from([torch.float32, torch.float64]),
       grid=st.sampled_from(["geometric", "uniform"]))
def test_encode_decode_bit_exact(n, c, h, w, steps, dtype, grid):
    model = AnalyticMixtureScore()
    x = model.sample_data(n, (c, h, w), torch.Generator().manual_seed(steps), dtype=dtype)
    lat = encode(model, x, steps=steps, grid=grid)
    assert lat.state.dtype == torch.int64 and lat.aux.dtype == torch.int64 and lat.nfe == steps + 1
    assert lat.to_tensor().dtype == dtype and lat.to_tensor().shape == x.shape
    assert torch.equal(decode(model, lat), x)


def test_save_load_round_trip(tmp_path):
    model = AnalyticMixtureScore()
    x = model.sample_data(2, (3, 5, 6), torch.Generator().manual_seed(0), dtype=torch.float32)
    lat = encode(model, x, steps=12)
    path = tmp_path / "z.safetensors"
    lat.save(path)
    back = Latent.load(path)
    assert torch.equal(back.state, lat.state) and torch.equal(back.aux, lat.aux)
    assert torch.equal(back.remainder, lat.remainder)
    assert (back.method, back.steps, back.grid, back.dtype, back.t_max, back.schedule) == (
        lat.method, lat.steps, lat.grid, lat.dtype, lat.t_max, lat.schedule)
    assert torch.equal(decode(model, back), x)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    (tmp_path / "bad.safetensors").write_bytes(b"not a latent")
    with pytest.raises(CheckpointError):
        Latent.load(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError):
        Latent.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("method", ["reversible", "leapfrog"])
def test_sample_then_reencode_full_state_recovers_latent(method):
    model = AnalyticMixtureScore()
    z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    state = decode_full(model, z, steps=20, method=method)
    lat = encode_state(model, state, steps=20, method=method)
    if method == "reversible":  # both states start equal at the lattice point of alpha * (z / alpha)
        sched = model.schedule
        alpha = float(sched.alpha(sched.t_max))
        q = ReversibleHeun().lattice_noise((z.double() / alpha).to(z.dtype), float(sched.varsigma(sched.t_max)))
        assert torch.equal(lat.state, q) and torch.equal(lat.aux, q)
        assert float((lat.to_tensor() - z).abs().max()) < 1e-6  # the latent is the noise it came from
    # decoding the recovered latent reproduces the sample bit for bit
    assert torch.equal(decode(model, lat), state.value())


def test_decode_noise_options_and_errors():
    model = AnalyticMixtureScore()
    z = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    for method in ["ddim", "reversible", "dopri5"]:
        out = decode(model, z, steps=10, method=method)
        assert out.shape == z.shape and out.dtype == z.dtype
    lat = encode(model, z, steps=5)
    with pytest.raises(ValueError, match="conflicts"):
        decode(model, lat, steps=6)
    with pytest.raises(ValueError, match="choices"):
        encode(model, z, method="nope")
    with pytest.raises(ValueError):
        encode(model, z[0])


def test_conditioning_is_passed_through():
    seen = {}

    class Spy(AnalyticMixtureScore):
        def forward(self, x, t, y=None, m=None):
            seen["y"], seen["m"] = y, m
            return super().forward(x, t)

    model = Spy()
    x = model.sample_data(1, (1, 3, 3))
    y, m = torch.zeros_like(x), torch.ones(1, 3, 3, 3, dtype=x.dtype)
    lat = encode(model, x, (y, m), steps=3)
    assert seen["m"] is not None and seen["m"].shape == (1, 3, 3, 3)
    assert torch.equal(decode(model, lat, (y, m)), x)
    with pytest.raises(ValueError, match="cond"):
        encode(model, x, (y, m[:, :, :2]), steps=3)


def test_decode_reproduces_the_encode_thread_count_and_refuses_another_device(tmp_path):
    """CPU convolution bits depend on the thread count. The latent records it;
    decode runs with it (encode with 1 thread, decode under 2 was 4.8e-7 off before), and refuses
    another device type or torch version unless forced."""
    import dataclasses

    import injcert
    from injcert.data.grid import square_image
    from injcert.errors import InputError
    from injcert.tasks.invert import Latent

    model = injcert.load_checkpoint(injcert.DEFAULT_CHECKPOINT).eval()
    x = square_image("astronaut", 32).unsqueeze(0)
    before = torch.get_num_threads()
    try:
        for enc, dec in ((1, 2), (2, 1)):
            torch.set_num_threads(enc)
            lat = injcert.encode(model, x, steps=4)
            assert lat.execution == {"device": "cpu", "threads": enc, "torch": torch.__version__}
            lat.save(tmp_path / "z.safetensors")
            torch.set_num_threads(dec)
            back = injcert.decode(model, Latent.load(tmp_path / "z.safetensors"))
            assert torch.equal(back, x)
            assert torch.get_num_threads() == dec  # restored after the decode
    finally:
        torch.set_num_threads(before)
    for bad in ({"device": "cuda"}, {"torch": "0.0.0"}):
        other = dataclasses.replace(lat, execution=dict(lat.execution, **bad))
        with pytest.raises(InputError):
            injcert.decode(model, other)
        injcert.decode(model, other, force=True)  # forced: runs
