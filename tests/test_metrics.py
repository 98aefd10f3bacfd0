"""Metrics against direct formulas (injcert.metrics)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from injcert.metrics import background_preservation, psnr, region_mse, region_psnr, seam_energy, ssim


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


def box_mask(n: int, h: int, w: int, t: int, b: int, l: int, r: int) -> torch.Tensor:
    m = torch.zeros(n, 1, h, w)
    m[:, :, t:b, l:r] = 1
    return m


def test_psnr_matches_formula():
    x, ref = rand(2, 3, 16, 16, seed=1), rand(2, 3, 16, 16, seed=2)
    per = psnr(x, ref, reduction="none")
    for i in range(2):
        mse = float(((x[i] - ref[i]) ** 2).mean())
        assert per[i] == pytest.approx(10 * math.log10(4.0 / mse), rel=1e-10)
    assert psnr(x, ref) == pytest.approx(float(per.mean()))
    assert psnr(x[0], ref[0]) == pytest.approx(float(per[0]))
    assert psnr(x, x) == math.inf
    assert psnr(x.float(), ref.float(), data_range=1.0) == pytest.approx(float(per.mean()) - 20 * math.log10(2), rel=1e-5)


def test_ssim_through_skimage():
    from skimage.metrics import structural_similarity

    x, ref = rand(3, 20, 24, seed=1), rand(3, 20, 24, seed=2)
    expected = structural_similarity(
        ref.permute(1, 2, 0).numpy(), x.permute(1, 2, 0).numpy(), data_range=2.0, channel_axis=-1
    )
    assert ssim(x, ref) == pytest.approx(expected)
    assert ssim(ref, ref) == pytest.approx(1.0)
    assert ssim(rand(1, 1, 5, 5), rand(1, 1, 5, 5, seed=3)) <= 1.0  # small images use a smaller window
    with pytest.raises(ValueError, match=r"\(1, 1, 2, 2\)"):
        ssim(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(3, 4, 4\).*\(3, 4, 5\)"):
        psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        psnr(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="reduction"):
        psnr(torch.zeros(1, 4, 4), torch.ones(1, 4, 4), reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 4\)"):
        region_mse(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 2, 4, 4))


def test_region_mse_matches_formula():
    x, ref = rand(2, 3, 10, 12, seed=1), rand(2, 3, 10, 12, seed=2)
    m = box_mask(2, 10, 12, 2, 7, 3, 9)
    inside = (x - ref)[:, :, 2:7, 3:9]
    assert region_mse(x, ref, m) == pytest.approx(float((inside**2).mean()))
    sq = (x - ref) ** 2
    outside = (sq.sum() - (inside**2).sum()) / (sq.numel() - inside.numel())
    assert region_mse(x, ref, m, outside=True) == pytest.approx(float(outside))
    assert region_psnr(x, ref, m) == pytest.approx(10 * math.log10(4 / float((inside**2).mean())))
    # a 1×H×W mask broadcasts over the batch
    assert region_mse(x, ref, m[0]) == pytest.approx(region_mse(x, ref, m))
    assert region_psnr(x, x, m) == math.inf
    with pytest.raises(ValueError, match="empty"):
        region_mse(x, ref, torch.zeros(1, 10, 12))
    with pytest.raises(ValueError, match="empty"):
        region_mse(x, ref, torch.ones(1, 10, 12), outside=True)


@given(
    seed=st.integers(0, 10_000),
    h=st.integers(2, 10),
    w=st.integers(2, 10),
    delta=st.floats(-5, 5, allow_nan=False),
)
def test_region_metrics_use_only_region_pixels(seed, h, w, delta):
    x, ref = rand(2, 3, h, w, seed=seed), rand(2, 3, h, w, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(2, 1, h, w, generator=g) < 0.5).double()
    m[0, 0, 0, 0], m[1, 0, -1, -1] = 1.0, 0.0  # neither region is empty
    changed_out = x + delta * (1 - m)  # change pixels outside only
    changed_in = x + delta * m
    assert region_mse(changed_out, ref, m) == region_mse(x, ref, m)
    assert region_psnr(changed_out, ref, m) == region_psnr(x, ref, m)
    assert region_mse(changed_in, ref, m, outside=True) == region_mse(x, ref, m, outside=True)
    assert background_preservation(changed_in, x, m) == 0.0
    assert background_preservation(changed_out, x, m) == pytest.approx(abs(delta))


def test_seam_energy_formula():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[..., :, 2:] = 1.0  # a vertical edge between columns 1 and 2
    m = box_mask(1, 4, 4, 0, 4, 2, 4)  # mask boundary on the same edge
    assert seam_energy(x, m) == pytest.approx(1.0)  # every boundary pair jumps by 1
    m2 = box_mask(1, 4, 4, 0, 4, 1, 4)  # boundary between columns 0 and 1: no jump there
    assert seam_energy(x, m2) == 0.0
    assert seam_energy(x, m, ref=x) == 0.0  # no jump in excess of the reference
    assert seam_energy(x, torch.zeros(1, 4, 4)) == 0.0  # no boundary
    assert seam_energy(x, torch.ones(1, 4, 4)) == 0.0


@given(seed=st.integers(0, 10_000))
def test_seam_energy_brute_force(seed):
    x = rand(2, 2, 6, 7, seed=seed)
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(2, 1, 6, 7, generator=g) < 0.4).double()
    total, count = 0.0, 0
    for n in range(2):
        for i in range(6):
            for j in range(7):
                for di, dj in ((0, 1), (1, 0)):
                    a, b = i + di, j + dj
                    if a < 6 and b < 7 and m[n, 0, i, j] != m[n, 0, a, b]:
                        for c in range(2):
                            total += float(x[n, c, i, j] - x[n, c, a, b]) ** 2
                            count += 1
    expected = total / count if count else 0.0
    assert seam_energy(x, m) == pytest.approx(expected, rel=1e-12, abs=1e-15)


# statistical thresholds: about 2% of white-noise draws at n = 32 reach a flatness above 2.0 (seed=10490),
# so the examples are a fixed sequence (as in the ci profile), not new random seeds every run
@settings(derandomize=True)
@given(seed=st.integers(0, 10**6), n=st.integers(32, 64))
def test_latent_statistics_tell_white_noise_from_an_image(seed, n):
    from injcert.metrics import latent_statistics

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 3, n, n, generator=g, dtype=torch.float64)
    s = latent_statistics(z)
    assert abs(s["std"] - 1) < 0.1 and abs(s["lag1_h"]) < 0.1 and abs(s["lag1_w"]) < 0.1
    assert s["spectrum_flatness"] < 2.0
    smooth = torch.nn.functional.avg_pool2d(z, 3, 1, 1)  # correlated: not Gaussian white noise
    t = latent_statistics(smooth / smooth.std())
    assert t["lag1_h"] > 0.4 and t["lag1_w"] > 0.4 and t["spectrum_flatness"] > 10.0


def test_grain_ratio_flags_noise_inside_a_region():
    from injcert.metrics import grain_ratio

    g = torch.Generator().manual_seed(0)
    m = torch.zeros(1, 1, 40, 40)
    m[..., 12:28, 12:28] = 1
    base = torch.randn(1, 3, 40, 40, generator=g) * 0.05
    assert 0.7 < grain_ratio(base, m) < 1.3
    grainy = base + 0.3 * torch.randn(1, 3, 40, 40, generator=g) * m
    assert grain_ratio(grainy, m) > 3.0
    assert math.isnan(grain_ratio(base, torch.zeros(1, 1, 40, 40)))


def test_colour_grain_ratio_sees_coloured_noise_that_grain_ratio_takes_for_texture():
    from injcert.metrics import colour_grain_ratio, grain_ratio

    g = torch.Generator().manual_seed(0)
    m = torch.zeros(1, 1, 40, 40)
    m[..., 12:28, 12:28] = 1
    lum = torch.randn(1, 1, 40, 40, generator=g) * 0.2  # grey texture everywhere
    tint = torch.tensor([0.3, -0.1, -0.2]).view(1, 3, 1, 1)
    base = lum.expand(1, 3, 40, 40) + tint + 0.01 * torch.randn(1, 3, 40, 40, generator=g)
    # inside: the texture replaced by coloured noise of the same per-channel amplitude
    noisy = torch.where(m.bool().expand(1, 3, 40, 40), 0.2 * torch.randn(1, 3, 40, 40, generator=g) + tint, base)
    assert 0.6 < grain_ratio(noisy, m) < 1.6  # the Laplacian statistic calls it texture ...
    assert 0.6 < colour_grain_ratio(base, m) < 1.6
    assert colour_grain_ratio(noisy, m) > 5.0  # ... the chroma's sees the grain
    smooth = torch.where(m.bool().expand(1, 3, 40, 40), tint.expand(1, 3, 40, 40), base)
    assert colour_grain_ratio(smooth, m) < 0.2
    assert math.isnan(colour_grain_ratio(base[:, :1], m))
