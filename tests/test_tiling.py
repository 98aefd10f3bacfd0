"""Tiled evaluation equals whole-image evaluation bit for bit (when the halo covers the receptive field)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import injcert.tasks.tiling as tiling
from injcert.tasks.tiling import TiledModel, shape_stable_convolutions, tile_windows, tiled_apply

from helpers import tiny_config, tiny_unet


class _PoolNet(nn.Module):
    """A tiny fully convolutional net with one down/up level: receptive-field radius 1+2*(1+1)+... ."""

    downsampling_factor = 2
    # conv(1) + pool then conv at half res (2 px) + upsample + conv(1) -> radius 1 + 2*1 + 1 + 1 = 5 (bound)
    receptive_field_radius = 6

    def __init__(self, c: int = 2) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(8, c, 3, padding=1)

    def forward(self, x, t, y=None, m=None):
        H, W = x.shape[-2:]
        ph, pw = (-H) % 2, (-W) % 2
        x = nn.functional.pad(x, (0, pw, 0, ph))
        h = torch.tanh(self.a(x))
        d = torch.tanh(self.b(nn.functional.avg_pool2d(h, 2)))
        u = nn.functional.interpolate(d, scale_factor=2, mode="nearest")
        out = (self.c(torch.cat([h, u], 1)) * (1 + t.reshape(-1, 1, 1, 1)))[..., :H, :W]
        return out if y is None else out + y


@given(size=st.integers(1, 60), tile=st.integers(1, 20), halo=st.integers(0, 7), align=st.integers(1, 4))
def test_windows_cover_and_respect_halo(size: int, tile: int, halo: int, align: int) -> None:
    covered = []
    for o0, o1, i0, i1 in tile_windows(size, tile, halo, align):
        assert i0 % align == 0 and i0 <= o0 < o1 <= i1
        assert i0 == 0 or o0 - i0 >= halo
        assert i1 == size or i1 - o1 >= halo
        covered.extend(range(o0, o1))
    assert covered == list(range(size))


@given(h=st.integers(8, 40), w=st.integers(8, 40), tile=st.integers(2, 16), seed=st.integers(0, 100),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_tiled_equals_whole_bit_for_bit(h: int, w: int, tile: int, seed: int, dtype: torch.dtype) -> None:
    torch.manual_seed(seed)
    net = _PoolNet().to(dtype)
    x = torch.randn(2, 2, h, w, dtype=dtype)
    y = torch.randn(2, 2, h, w, dtype=dtype)
    t = torch.rand(2, dtype=dtype)
    with torch.no_grad():
        with shape_stable_convolutions():
            whole = net(x, t, y)
        tiled = TiledModel(net, tile=tile)(x, t, y)
    assert torch.equal(whole, tiled)


def test_too_small_halo_is_refused_and_would_differ() -> None:
    net = _PoolNet()
    with pytest.raises(ValueError, match="receptive-field radius"):
        TiledModel(net, tile=8, halo=2)
    torch.manual_seed(0)
    x = torch.randn(1, 2, 32, 32)
    t = torch.zeros(1)
    with torch.no_grad():
        bad = tiled_apply(lambda a: net(a, t), x, tile=8, halo=0, align=2)
        assert not torch.equal(bad, net(x, t))


BANDS = dict(lipschitz_budget=60.0, lipschitz_kappa=3.0, skip_max=0.0, data_variance=None,
             parameterization="denoiser", spectral_bands={"orders": [1, 5, 30], "variances": [0.01, 0.3, 2.0, 20.0]})


@pytest.mark.parametrize("bands", [False, True, "head"], ids=["scalar", "bands", "bands+cond_head"])
@settings(max_examples=4)  # slow: a CondUNet evaluated whole and tiled per example (~3 s an example)
@given(h=st.integers(108, 120), w=st.integers(108, 120), tile=st.integers(24, 40), seed=st.integers(0, 50))
def test_tiled_cond_unet_equals_whole(bands: bool, h: int, w: int, tile: int, seed: int) -> None:
    """The real network: receptive-field radius and alignment are declared by the model itself
    (with the spectral band skip too, whose blur reaches 30 px, and the condition-only head, which
    upsamples the condition encoder's coarsest features)."""
    extra = dict(BANDS, cond_head=True) if bands == "head" else BANDS if bands else {}
    net = tiny_unet(seed, **dict(tiny_config()["model"], **extra)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(1, net.in_channels, h, w)
    y = torch.randn(1, net.in_channels, h, w)
    m = (torch.rand(1, 3, h, w) > 0.5).float()
    t = torch.full((1,), 0.3)
    with torch.no_grad():
        with shape_stable_convolutions():
            whole = net(x, t, y, m)
        tiled_net = TiledModel(net, tile=tile)
        calls = []
        hook = net.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
        tiled = tiled_net(x, t, y, m)
        hook.remove()
    assert len(calls) > 1, "the image must actually be cut into tiles"
    assert torch.equal(whole, tiled)


def _unfold_conv2d(x, weight, bias, stride, padding, dilation, groups):
    """The shape-stable convolution as first written: one ``unfold`` of the whole input, then GEMMs of
    ``GEMM_CHUNK`` columns. The strip-wise :func:`~injcert.tasks.tiling._stable_conv2d` must give
    its bits exactly (which columns share a GEMM call, and when they are copied, change nothing)."""
    f = torch.nn.functional
    cols = f.unfold(x, weight.shape[-2:], dilation=dilation, padding=padding, stride=stride)
    out = f.conv2d(x, weight, None, stride, padding, dilation, groups)  # only its shape is used
    length, chunk = cols.shape[-1], tiling.GEMM_CHUNK
    cols = f.pad(cols, (0, (-length) % chunk))
    k, cg_out = cols.shape[1] // groups, weight.shape[0] // groups
    outs = []
    for g in range(groups):
        wmat = weight[g * cg_out:(g + 1) * cg_out].reshape(cg_out, -1)
        cg = cols[:, g * k:(g + 1) * k]
        outs.append(torch.cat([torch.matmul(wmat, cg[..., j:j + chunk]) for j in range(0, cg.shape[-1], chunk)], -1))
    res = torch.cat(outs, 1)[..., :length].reshape(out.shape)
    return res if bias is None else res + bias.view(1, -1, 1, 1)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2), groups=st.sampled_from([1, 2, 3]), cin=st.integers(1, 3), cout=st.integers(1, 3),
       kh=st.integers(1, 5), kw=st.integers(1, 9), stride=st.tuples(st.integers(1, 2), st.integers(1, 3)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), padding=st.tuples(st.integers(0, 4), st.integers(0, 4)),
       h=st.integers(9, 40), w=st.integers(17, 70), bias=st.booleans(),
       strip=st.sampled_from([1, 700, 20000, None]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 1000))
def test_stable_conv2d_strips_give_the_unfold_bits(n, groups, cin, cout, kh, kw, stride, dilation, padding, h, w,
                                                   bias, strip, dtype, seed) -> None:
    """Strip-wise im2col (any strip size, one output row up to the whole image) gives exactly the
    bits of one whole-image ``unfold`` + the same fixed-shape GEMMs, and ``conv2d``'s values to rounding."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin * groups, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(cout * groups, cin, kh, kw, generator=gen, dtype=dtype)
    b = torch.randn(cout * groups, generator=gen, dtype=dtype) if bias else None
    args = (x, weight, b, stride, padding, dilation, groups)
    new = tiling._stable_conv2d(*args, strip_bytes=strip)
    assert torch.equal(new, _unfold_conv2d(*args))
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(new, torch.nn.functional.conv2d(*args), rtol=tol, atol=tol)


def test_strip_size_changes_no_bit_of_the_real_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The band network (1×129-tap blurs, 3×3 and 1×1 convolutions) evaluated with strips of one
    output row and with the default strips: the same bits."""
    net = tiny_unet(3, **dict(tiny_config()["model"], **BANDS, cond_head=True)).eval()
    torch.manual_seed(1)
    x, y = torch.randn(2, 1, net.in_channels, 40, 56)
    m = (torch.rand(1, 3, 40, 56) > 0.5).float()
    t = torch.full((1,), 0.3)
    with torch.no_grad(), shape_stable_convolutions():
        default = net(x, t, y, m)
        monkeypatch.setattr(tiling, "STRIP_BYTES", 1)
        one_row = net(x, t, y, m)
    assert torch.equal(default, one_row)
