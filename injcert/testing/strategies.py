"""Hypothesis strategies for injcert's objects, for users' CI (and injcert's own tests).

Every strategy draws a small integer seed (or a few shape parameters) and builds the object with
``torch.Generator``: shrinking then acts on seeds and shapes, and examples stay cheap.

Example::

    from hypothesis import given
    from injcert.testing import conv_layers, assert_bound_sound

    @given(conv_layers())
    def test_conv_bounds_are_sound(case):
        layer, shape = case
        assert_bound_sound(layer, shape)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from hypothesis import strategies as st
from torch import Tensor, nn
from injcert.data import make_corruption, random_corruption
from injcert.testing import AnalyticMixtureScore

__all__ = ["images", "corruptions", "masks", "conv_layers", "networks", "analytic_problems", "seeds"]

_MAX_SEED = 2**31 - 1


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``torch.Generator``."""
    return st.integers(0, _MAX_SEED)


def _ints(v: Any, lo: int, hi: int) -> st.SearchStrategy[int]:
    if isinstance(v, st.SearchStrategy):
        return v
    if isinstance(v, (tuple, list)):
        return st.integers(int(v[0]), int(v[1]))
    if v is None:
        return st.integers(lo, hi)
    return st.just(int(v))


@st.composite
def images(draw: st.DrawFn, batch: Any = (1, 3), channels: Any = st.sampled_from([1, 3]), size: Any = (4, 16),
           dtype: torch.dtype = torch.float64) -> Tensor:
    """Images ``N×C×H×W`` in ``[-1, 1]`` (smooth random fields plus noise, like patches of photos).

    Arguments:
        batch, channels, size: an int, an inclusive ``(lo, hi)`` range or a strategy; ``size`` is
            the side of a square image (use ``size=(h, w)`` strategies via ``st.tuples`` for
            rectangles).
        dtype: the tensor dtype.
    """
    n = draw(_ints(batch, 1, 3))
    c = draw(_ints(channels, 1, 3))
    sz = draw(size) if isinstance(size, st.SearchStrategy) else draw(_ints(size, 4, 16))
    h, w = (sz, sz) if isinstance(sz, int) else (int(sz[0]), int(sz[1]))
    g = torch.Generator().manual_seed(draw(seeds()))
    coarse = torch.rand((n, c, max(1, h // 4), max(1, w // 4)), generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = 0.8 * smooth + 0.2 * torch.rand((n, c, h, w), generator=g, dtype=torch.float64)
    return (2 * x - 1).clamp(-1, 1).to(dtype)


def corruptions(size: int = 32, names: Optional[Sequence[str]] = None) -> st.SearchStrategy[Any]:
    """Corruption operators (:class:`injcert.data.Corruption`) with random parameters.

    Arguments:
        size: the typical image side the parameters are scaled for.
        names: restrict to these registered names (default: every type, via
            :func:`injcert.data.random_corruption`).
    """

    if names is None:
        return seeds().map(lambda s: random_corruption(s, size=size))
    return st.sampled_from(list(names)).map(make_corruption)


@st.composite
def masks(draw: st.DrawFn, batch: Any = 1, size: Any = (8, 32), min_frac: float = 0.1,
          max_frac: float = 0.6, dtype: torch.dtype = torch.float64) -> Tensor:
    """Editing masks ``N×1×H×W``: 1 inside one random box (the region to edit), 0 outside.

    The box's sides are fractions in ``[min_frac, max_frac]`` of the image side (at least 1 pixel).
    """
    n = draw(_ints(batch, 1, 3))
    s = draw(_ints(size, 8, 32))
    out = torch.zeros((n, 1, s, s), dtype=dtype)
    for i in range(n):
        fh = draw(st.floats(min_frac, max_frac))
        fw = draw(st.floats(min_frac, max_frac))
        bh, bw = max(1, int(round(fh * s))), max(1, int(round(fw * s)))
        top = draw(st.integers(0, s - bh))
        left = draw(st.integers(0, s - bw))
        out[i, 0, top:top + bh, left:left + bw] = 1
    return out


@st.composite
def conv_layers(draw: st.DrawFn, max_channels: int = 4, max_kernel: int = 3, max_size: int = 10,
                transpose: bool = False, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, tuple[int, int, int]]:
    """``(layer, input_shape)``: a random ``nn.Conv2d`` (strides, paddings, dilations, groups, modes).

    With ``transpose=True`` a ``nn.ConvTranspose2d`` may also be drawn. Weights are Gaussian,
    sometimes scaled over orders of magnitude.
    """
    groups = draw(st.integers(1, 2))
    cin = groups * draw(st.integers(1, max(1, max_channels // groups)))
    cout = groups * draw(st.integers(1, max(1, max_channels // groups)))
    k = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = draw(st.integers(1, 2))
    dilation = draw(st.integers(1, 2))
    padding = draw(st.integers(0, 2))
    mode = draw(st.sampled_from(["zeros", "circular", "reflect", "replicate"]))
    reach = max(dilation * (k[0] - 1), dilation * (k[1] - 1)) + 1
    size = draw(st.integers(max(reach, padding + 1, 3), max(max_size, reach + 1, padding + 2, 3)))
    use_t = transpose and draw(st.booleans())
    if use_t:
        layer: nn.Module = nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=min(padding, reach - 1),
                                              dilation=dilation, groups=groups, bias=draw(st.booleans()))
    else:
        layer = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
                          bias=draw(st.booleans()), padding_mode=mode if padding > 0 else "zeros")
    g = torch.Generator().manual_seed(draw(seeds()))
    scale = 10.0 ** draw(st.integers(-2, 1))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * scale)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
    return layer.to(dtype).eval(), (cin, size, size)


@st.composite
def networks(draw: st.DrawFn, max_depth: int = 3, max_channels: int = 4, size: Any = (4, 8),
             dtype: torch.dtype = torch.float64) -> tuple[nn.Module, tuple[int, int, int]]:
    """``(net, input_shape)``: a small ``nn.Sequential`` of convolutions, activations and pooling.

    Every module drawn has a registered Lipschitz rule, so ``lipschitz_bound(net, input_shape)``
    applies.
    """
    s = draw(_ints(size, 4, 8))
    c = draw(st.integers(1, max_channels))
    g = torch.Generator().manual_seed(draw(seeds()))
    layers: list[nn.Module] = []
    depth = draw(st.integers(1, max_depth))
    ch = c
    for _ in range(depth):
        out = draw(st.integers(1, max_channels))
        k = draw(st.sampled_from([1, 3]))
        conv = nn.Conv2d(ch, out, k, padding=k // 2)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / (k * ch ** 0.5))
        layers.append(conv)
        layers.append(draw(st.sampled_from([nn.ReLU, nn.Tanh, nn.SiLU, nn.GELU]))())
        ch = out
    if s % 2 == 0 and draw(st.booleans()):
        layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers).to(dtype).eval(), (c, s, s)


@st.composite
def analytic_problems(draw: st.DrawFn, max_components: int = 3) -> Any:
    """:class:`~injcert.testing.AnalyticMixtureScore` instances (a score with a certified budget)."""
    k = draw(st.integers(1, max_components))
    means = draw(st.lists(st.floats(-0.9, 0.9, allow_nan=False), min_size=k, max_size=k))
    std = draw(st.floats(0.2, 0.7))
    return AnalyticMixtureScore(means=means, std=std)
