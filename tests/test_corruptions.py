"""Property tests of the corruption operators (injcert.data.corruptions)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from injcert.data.corruptions import (
    CORRUPTIONS,
    MAP_CHANNELS,
    BlurRegion,
    BoxMask,
    Compose,
    Corruption,
    FreeFormMask,
    GaussianNoise,
    HollowGaps,
    Observation,
    RandomPixelMask,
    corrupt_batch,
    expand_map,
    gaussian_blur,
    make_corruption,
    random_corruption,
)

DTYPES = [torch.float32, torch.float64]


def corruptions() -> st.SearchStrategy[Corruption]:
    frac = st.floats(0.0, 1.0)
    fr = st.tuples(frac, frac).map(sorted)
    single = st.one_of(
        fr.map(lambda f: BoxMask(*f)),
        st.builds(FreeFormMask, st.integers(1, 3), st.floats(0.5, 5.0)),
        st.builds(RandomPixelMask, frac),
        st.builds(HollowGaps, st.sampled_from(HollowGaps.KINDS), st.floats(0.5, 4.0), st.integers(1, 2)),
        st.builds(lambda s, f: BlurRegion(s, *f), st.floats(0.0, 3.0), fr),
        st.builds(lambda s, f: GaussianNoise(s, *f), st.floats(0.0, 0.5), fr),
        st.integers(0, 10_000).map(random_corruption),
    )
    return st.one_of(single, st.lists(single, min_size=1, max_size=3).map(Compose))


def images(n: int, c: int, h: int, w: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


shapes = st.tuples(st.integers(1, 3), st.sampled_from([1, 3]), st.integers(1, 24), st.integers(1, 24))


@given(corruption=corruptions(), shape=shapes, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_observed_pixels_unchanged_and_map_ranges(corruption, shape, dtype, seed):
    x = images(*shape, dtype, seed)
    obs = corruption.sample(x, seed)
    y, m = obs.y, obs.m
    n, _, h, w = shape
    assert y.shape == x.shape and y.dtype == dtype
    assert m.shape == (n, MAP_CHANNELS, h, w) and m.dtype == dtype
    known = (m[:, 0:1] == 1).expand_as(x)
    assert torch.equal(y[known], x[known])
    # channel 0 and 1 are {0, 1}; channel 2 is a non-negative sigma
    assert set(m[:, 0].unique().tolist()) <= {0.0, 1.0}
    assert set(m[:, 1].unique().tolist()) <= {0.0, 1.0}
    assert (m[:, 2] >= 0).all()
    # observed-as-is excludes blurred and noisy; missing pixels are zero in y
    assert not ((m[:, 0] == 1) & ((m[:, 1] > 0) | (m[:, 2] > 0))).any()
    missing = (m == 0).all(dim=1, keepdim=True).expand_as(x)
    assert (y[missing] == 0).all()
    # the deterministic operator reproduces y where no noise was added
    noiseless = (m[:, 2:3] == 0).expand_as(x)
    assert torch.allclose(obs.operator(x)[noiseless], y[noiseless], atol=1e-6 if dtype == torch.float32 else 1e-12)


@given(corruption=corruptions(), seed=st.integers(0, 2**31), dtype=st.sampled_from(DTYPES))
def test_same_seed_same_corruption(corruption, seed, dtype):
    x = images(2, 3, 16, 20, dtype, seed)
    y1, m1 = corruption(x, seed)
    y2, m2 = corruption(x, torch.Generator().manual_seed(seed))
    assert torch.equal(y1, y2) and torch.equal(m1, m2)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_different_seeds_differ(name):
    x = images(2, 3, 32, 32, torch.float32, 0)
    c = make_corruption(name)
    results = {tuple(c(x, s)[0].flatten().tolist()) for s in range(4)}
    assert len(results) > 1


def test_map_independent_of_dtype():
    for name in ("box", "freeform", "gaps", "blur"):
        c = make_corruption(name)
        m32 = c(images(2, 3, 20, 20, torch.float32, 1), 5)[1]
        m64 = c(images(2, 3, 20, 20, torch.float64, 1), 5)[1]
        assert torch.equal(m32.double(), m64), name


def test_global_seed_makes_none_reproducible():
    x = images(1, 3, 16, 16, torch.float32, 0)
    torch.manual_seed(3)
    a = RandomPixelMask(0.5)(x)[0]
    torch.manual_seed(3)
    b = RandomPixelMask(0.5)(x)[0]
    assert torch.equal(a, b)


@given(
    sigma=st.floats(0.3, 3.0),
    frac=st.tuples(st.floats(0.1, 1.0), st.floats(0.1, 1.0)).map(sorted),
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_blur_changes_nothing_outside_region(sigma, frac, shape, dtype, seed):
    x = images(*shape, dtype, seed)
    y, m = BlurRegion(sigma, *frac)(x, seed)
    outside = (m[:, 1:2] == 0).expand_as(x)
    assert torch.equal(y[outside], x[outside])
    assert torch.equal(m[:, 0], 1 - m[:, 1])
    assert (m[:, 1].flatten(1).sum(1) > 0).all()  # the region is never empty for frac > 0


def test_gaussian_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images(1, 2, 23, 31, torch.float64, 0)
    for sigma in (0.7, 1.5, 2.5):
        ours = gaussian_blur(x, sigma)
        ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)
        assert torch.allclose(ours, torch.from_numpy(ref), atol=1e-12)


def test_gaussian_blur_preserves_constants_and_tiny_images():
    x = torch.full((1, 1, 2, 3), 0.25, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(x, 5.0), x)
    assert torch.equal(gaussian_blur(x, 0.0), x)


def test_noise_map_and_statistics():
    x = torch.zeros(2, 3, 64, 64, dtype=torch.float64)
    y, m = GaussianNoise(0.2)(x, 0)
    assert torch.all(m[:, 2] == 0.2) and torch.all(m[:, 0] == 0)
    assert abs(float(y.std()) - 0.2) < 0.01
    y0, m0 = GaussianNoise(0.0)(x, 0)
    assert torch.equal(y0, x) and torch.all(m0[:, 0] == 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma", [2.4e-63, 1e-46, 1e-40, 1e-310, 5e-324, 1e-30])
def test_noise_sigma_below_the_dtype_range_is_consistent(sigma, dtype):
    """A sigma the image's dtype rounds to 0 (the randomized hypothesis profile found 2.4e-63 in
    float32) is 0 in y and in the map alike: never a zero-sigma map entry next to a perturbed y, and
    never a noisy pixel marked missing (0, 0, 0)."""
    x = images(2, 3, 8, 8, dtype, 0)
    obs = GaussianNoise(sigma).sample(x, 0)
    y, m = obs.y, obs.m
    noiseless = (m[:, 2:3] == 0).expand_as(x)
    assert torch.equal(y[noiseless], x[noiseless])
    assert not (m == 0).all(dim=1).any()
    s = torch.tensor(sigma, dtype=dtype)
    assert torch.equal(m[:, 2].unique(), s.reshape(1))


def test_random_pixel_ratio():
    x = torch.ones(1, 1, 100, 100)
    _, m = RandomPixelMask(0.3)(x, 0)
    assert abs(1 - float(m[:, 0].mean()) - 0.3) < 0.03
    assert torch.all(RandomPixelMask(1.0)(x, 0)[0] == 0)
    assert torch.equal(RandomPixelMask(0.0)(x, 0)[0], x)


def test_compose_maps():
    x = images(2, 3, 32, 32, torch.float64, 0)
    obs = Compose([GaussianNoise(0.3), GaussianNoise(0.4), BoxMask(0.5, 0.5)]).sample(x, 1)
    missing = (obs.m == 0).all(dim=1)
    assert missing.any()
    noisy = ~missing
    assert torch.allclose(obs.m[:, 2][noisy], torch.full_like(obs.m[:, 2][noisy], 0.5))
    assert (obs.y.permute(1, 0, 2, 3)[:, missing] == 0).all()
    # the operator is the mask here; the residual of x is the masked noise only
    res = obs.residual(x)
    assert res.shape == (2,) and (res > 0).all()


def test_observation_residual_is_zero_for_noiseless():
    x = images(3, 1, 16, 16, torch.float64, 0)
    obs = Compose([BlurRegion(1.0), FreeFormMask(2, 3.0)]).sample(x, 4)
    assert isinstance(obs, Observation)
    assert torch.all(obs.residual(x) < 1e-12)


def test_per_example_geometry_differs():
    x = images(4, 1, 32, 32, torch.float32, 0)
    _, m = BoxMask(0.2, 0.5)(x, 0)
    assert len({tuple(m[i, 0].flatten().tolist()) for i in range(4)}) > 1


def test_expand_map():
    m1 = torch.ones(2, 1, 5, 6)
    m3 = expand_map(m1)
    assert m3.shape == (2, 3, 5, 6) and torch.equal(m3[:, 0], m1[:, 0]) and (m3[:, 1:] == 0).all()
    assert expand_map(m3) is m3
    with pytest.raises(ValueError, match=r"\(2, 2, 5, 6\)"):
        expand_map(torch.ones(2, 2, 5, 6))
    with pytest.raises(ValueError, match="int64"):
        expand_map(torch.ones(2, 1, 5, 6, dtype=torch.int64))


def test_registry_and_make_corruption():
    assert set(CORRUPTIONS) == {"box", "freeform", "random", "gaps", "blur", "noise"}
    for name in CORRUPTIONS:
        assert make_corruption(name).name == name
    with pytest.raises(ValueError, match="'wobble'.*box"):
        make_corruption("wobble")
    with pytest.raises(ValueError, match="bogus"):
        make_corruption("box", bogus=1)


def test_random_corruption_covers_all_types():
    kinds = {random_corruption(s).name for s in range(200)}
    assert kinds == set(CORRUPTIONS)
    assert repr(random_corruption(1)) == repr(random_corruption(1))


def test_corrupt_batch():
    x = images(16, 3, 16, 16, torch.float32, 0)
    y, m = corrupt_batch(x, 0, p_uncond=0.3)
    assert y.shape == x.shape and m.shape == (16, 3, 16, 16)
    y2, m2 = corrupt_batch(x, 0, p_uncond=0.3)
    assert torch.equal(y, y2) and torch.equal(m, m2)
    uncond = [(y[i] == 0).all() and (m[i] == 0).all() for i in range(16)]
    assert 0 < sum(uncond) < 16
    y1, m1 = corrupt_batch(x, 0, p_uncond=1.0)
    assert (y1 == 0).all() and (m1 == 0).all()
    y0, m0 = corrupt_batch(x, 0, p_uncond=0.0)
    assert not any((m0[i] == 0).all() for i in range(16))


@pytest.mark.parametrize(
    ("factory", "value"),
    [
        (lambda: BoxMask(0.6, 0.2), "0.6"),
        (lambda: BoxMask(-0.1, 0.2), "-0.1"),
        (lambda: BoxMask(0.1, 1.5), "1.5"),
        (lambda: RandomPixelMask(1.2), "1.2"),
        (lambda: RandomPixelMask(-0.5), "-0.5"),
        (lambda: RandomPixelMask(float("nan")), "nan"),
        (lambda: BlurRegion(-1.0), "-1.0"),
        (lambda: BlurRegion(1.0, 0.9, 0.1), "0.9"),
        (lambda: GaussianNoise(-0.3), "-0.3"),
        (lambda: FreeFormMask(0, 3.0), "0"),
        (lambda: FreeFormMask(2, -3.0), "-3.0"),
        (lambda: HollowGaps("spiral"), "spiral"),
        (lambda: HollowGaps("ring", 0.0), "0.0"),
        (lambda: HollowGaps("ring", 1.0, 0), "0"),
        (lambda: Compose([]), "empty"),
        (lambda: Compose([BoxMask(), "box"]), "box"),
        (lambda: corrupt_batch(torch.zeros(1, 1, 4, 4), 0, p_uncond=2.0), "2.0"),
        (lambda: gaussian_blur(torch.zeros(1, 1, 4, 4), -2.0), "-2.0"),
        (lambda: BoxMask()(torch.zeros(1, 1, 4, 4), "seed"), "seed"),
    ],
)
def test_invalid_parameters_raise_value_error(factory, value):
    with pytest.raises(ValueError) as info:
        factory()
    assert value in str(info.value)


@given(bad=st.floats(allow_nan=False).filter(lambda v: v < 0 or v > 1))
def test_ratio_outside_unit_interval_rejected(bad):
    with pytest.raises(ValueError, match=re_escape(repr(bad))):
        RandomPixelMask(bad)


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (torch.zeros(3, 8, 8), "(3, 8, 8)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int32), "int32"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "uint8"),
        ([[0.0]], "list"),
    ],
)
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_bad_input_raises_value_error(name, x, fragment):
    with pytest.raises(ValueError) as info:
        make_corruption(name)(x, 0)
    assert fragment in str(info.value)


def test_math_is_finite_everywhere():
    x = images(2, 3, 1, 1, torch.float64, 0)
    for name in CORRUPTIONS:
        y, m = make_corruption(name)(x, 0)
        assert torch.isfinite(y).all() and torch.isfinite(m).all() and not math.isnan(float(m.sum()))


@pytest.mark.cuda
def test_cuda_matches_cpu_geometry():
    x = images(2, 3, 24, 24, torch.float32, 0)
    for name in CORRUPTIONS:
        c = make_corruption(name)
        y_cpu, m_cpu = c(x, 7)
        y_gpu, m_gpu = c(x.cuda(), 7)
        assert y_gpu.device.type == "cuda" and m_gpu.device.type == "cuda"
        if name != "noise":
            assert torch.allclose(y_gpu.cpu(), y_cpu, atol=1e-5), name
        assert torch.equal(m_gpu.cpu(), m_cpu), name


def test_corruption_grid_writes_png(tmp_path):
    from injcert.data.grid import corruption_grid

    out = corruption_grid(tmp_path / "sub" / "grid.png", images=("camera", "coffee"), size=32, seed=1)
    assert out == tmp_path / "sub" / "grid.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compose_keeps_tiny_noise_sigmas():
    """sqrt(sum sigma_k^2) squared a sigma of 1e-226 to 0 and marked a noisy pixel as missing (found
    by the randomized hypothesis profile): the map combines sigmas without underflow."""
    from injcert.data.corruptions import Compose, GaussianNoise

    x = torch.full((1, 1, 1, 1), 0.94, dtype=torch.float64)
    obs = Compose([GaussianNoise(5.745716697392825e-226, 0.0, 1.0)]).sample(x, 0)
    assert float(obs.m[0, 2, 0, 0]) == 5.745716697392825e-226 and float(obs.m[0, 0, 0, 0]) == 0.0
    obs = Compose([GaussianNoise(3e-200), GaussianNoise(4e-200)]).sample(x, 0)
    assert abs(float(obs.m[0, 2, 0, 0]) - 5e-200) <= 1e-214


def test_noise_carried_through_a_later_blur_is_on_the_map():
    """Compose(noise, blur): the blur spreads the noise to pixels outside the noise box; the map says so
    (the reproducer hypothesis found: the map claimed sigma 0 where y differed from A(x) by 5e-3), and
    channel 2 is the std of the blurred noise (sum_j A_ij^2 sigma_j^2), checked by sampling."""
    from injcert.data.corruptions import BlurRegion, Compose, GaussianNoise, _blur_variance, gaussian_blur, random_corruption

    x = torch.rand(1, 1, 2, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    obs = Compose([GaussianNoise(0.5, 0.0, 1.0), random_corruption(528)]).sample(x, 0)
    noiseless = (obs.m[:, 2:3] == 0).expand_as(x)
    assert torch.allclose(obs.operator(x)[noiseless], obs.y[noiseless], atol=1e-6)
    assert not ((obs.m[:, 0] == 1) & (obs.m[:, 2] > 0)).any()
    # the propagated variance is the variance of the blurred noise
    e = torch.randn(4000, 1, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    ratio = gaussian_blur(e, 1.5).var(0) / _blur_variance(torch.full((1, 1, 12, 12), 0.09, dtype=torch.float64), 1.5)[0]
    assert 0.85 < float(ratio.min()) and float(ratio.max()) < 1.15
    obs = Compose([GaussianNoise(0.3), BlurRegion(1.5, 1.0, 1.0)]).sample(torch.zeros(1, 1, 12, 12, dtype=torch.float64), 1)
    assert torch.allclose(obs.m[:, 2:3] ** 2, _blur_variance(torch.full((1, 1, 12, 12), 0.09, dtype=torch.float64), 1.5))
