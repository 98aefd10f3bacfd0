r"""Tiled evaluation of a fully convolutional network, bit-identical to whole-image evaluation.

An output pixel of a fully convolutional network depends only on the input pixels within its
receptive-field radius $r$. Cut the output into tiles; evaluate each tile on its input window
grown by a halo $\ge r$ (clipped at the image border, where the network pads exactly as it does
on the whole image); keep the tile's own pixels. Two further conditions make the result equal
*bit for bit*, not only up to rounding:

* every window starts at a multiple of ``align`` (the product of the network's down-sampling
  factors), so that pooling and up-sampling grids coincide with the whole-image ones;
* each output value is computed by the same arithmetic in the same order, whatever the size of
  the window. This is *not* true of PyTorch's default CPU convolutions (oneDNN picks its blocking,
  hence its summation order, from the tensor shapes: measured differences of a few ulp), so
  :class:`TiledModel` evaluates under :func:`shape_stable_convolutions`, which selects PyTorch's
  native im2col + GEMM convolution on CPU (deterministic cuDNN algorithms on CUDA). Whole-image
  evaluation under the same context gives the same bits (``tests/test_tiling.py`` checks it on
  the real network). The native CPU path is about 2.5x slower; ``shape_stable=False`` trades
  bit-identity for speed (results then agree to rounding).

Peak memory is then bounded by the window size, not the image size: the retina (1411²) and
4096² images run on a 24 GiB CPU machine.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

__all__ = ["TiledModel", "tile_windows", "tiled_apply", "shape_stable_convolutions", "peak_window_pixels"]


@contextmanager
def shape_stable_convolutions(enabled: bool = True) -> Iterator[None]:
    """Run convolutions with kernels whose per-pixel arithmetic does not depend on the input size.

    On CPU this disables oneDNN (PyTorch then uses im2col + GEMM, whose reduction order depends on
    the channel and kernel sizes only); on CUDA it asks cuDNN for deterministic algorithms without
    autotuning. ``enabled=False`` is a no-op.
    """
    if not enabled:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oneDNN's TF32 notice when toggling flags
        with torch.backends.mkldnn.flags(enabled=False):
            with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False,
                                            deterministic=True):
                yield


def _ceil_to(v: int, a: int) -> int:
    return -(-v // a) * a


def tile_windows(size: int, tile: int, halo: int, align: int) -> Iterator[tuple[int, int, int, int]]:
    """Windows along one axis: yields ``(out0, out1, in0, in1)``.

    ``[out0, out1)`` is the part of the output a tile owns; ``[in0, in1)`` the input window it
    is evaluated on, with ``in0`` a multiple of ``align`` and ``in0 <= out0 - halo`` unless
    clipped at 0, ``in1 >= out1 + halo`` unless clipped at ``size``.
    """
    if tile <= 0 or halo < 0 or align <= 0:
        raise ValueError(f"need tile > 0, halo >= 0, align > 0; got tile={tile}, halo={halo}, align={align}")
    tile = _ceil_to(tile, align)
    out0 = 0
    while out0 < size:
        out1 = min(size, out0 + tile)
        in0 = max(0, ((out0 - halo) // align) * align)
        in1 = min(size, out1 + halo)
        yield out0, out1, in0, in1
        out0 = out1


def tiled_apply(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    spatial_args: tuple[Optional[torch.Tensor], ...] = (),
    *,
    tile: int,
    halo: int,
    align: int = 1,
    **kwargs: Any,
) -> torch.Tensor:
    """Evaluate ``fn(x, *spatial_args, **kwargs)`` tile by tile.

    Arguments:
        fn: a fully convolutional map ``N×C×H×W -> N×C'×H×W`` (extra tensors in
            ``spatial_args`` share the spatial size and are cut like ``x``; ``None`` passes).
        x: the input.
        tile: output tile edge (rounded up to a multiple of ``align``).
        halo: at least the receptive-field radius of ``fn`` in pixels.
        align: window starts are multiples of this (the network's total down-sampling factor).
        kwargs: passed unchanged (e.g. the time ``t``, which is per sample, not per pixel).

    Returns:
        The output, equal to ``fn(x, ...)`` on the whole image when ``halo`` is large enough.
    """
    H, W = x.shape[-2:]
    if H <= tile + 2 * halo and W <= tile + 2 * halo:
        return fn(x, *spatial_args, **kwargs)
    out: Optional[torch.Tensor] = None
    for o0, o1, i0, i1 in tile_windows(H, tile, halo, align):
        for p0, p1, j0, j1 in tile_windows(W, tile, halo, align):
            sub = [a[..., i0:i1, j0:j1] if a is not None else None for a in spatial_args]
            y = fn(x[..., i0:i1, j0:j1], *sub, **kwargs)
            if out is None:
                out = y.new_empty(y.shape[:-2] + (H, W))
            out[..., o0:o1, p0:p1] = y[..., o0 - i0 : o1 - i0, p0 - j0 : p1 - j0]
    assert out is not None
    return out


class TiledModel(nn.Module):
    """Wrap a score network ``model(x, t, y=None, m=None)`` so that it is evaluated in tiles.

    The wrapper has the model's signature and attributes (``schedule``, ``lipschitz_budget``, ...),
    so every integrator accepts it unchanged. The halo defaults to the model's
    ``receptive_field_radius`` and the alignment to its ``downsampling_factor``. With
    ``shape_stable=True`` (default) the result does not depend on the tile size at all, and equals
    whole-image evaluation under :func:`shape_stable_convolutions` bit for bit.

    Raises:
        ValueError: the halo is smaller than the model's receptive-field radius (the result
            would silently differ from whole-image evaluation), or a size is not positive.
    """

    def __init__(self, model: nn.Module, tile: int = 256, halo: Optional[int] = None,
                 shape_stable: bool = True) -> None:
        super().__init__()
        radius = getattr(model, "receptive_field_radius", None)
        if halo is None:
            if radius is None:
                raise ValueError(
                    f"{type(model).__name__} declares no receptive_field_radius; pass halo= explicitly"
                )
            halo = int(radius)
        if radius is not None and halo < int(radius):
            raise ValueError(f"halo={halo} is below the model's receptive-field radius {radius}")
        if tile <= 0:
            raise ValueError(f"tile must be positive, got {tile!r}")
        self.model = model
        self.tile = int(tile)
        self.halo = int(halo)
        self.align = int(getattr(model, "downsampling_factor", 1))
        self.shape_stable = bool(shape_stable)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                m: Optional[torch.Tensor] = None) -> torch.Tensor:
        def fn(xx: torch.Tensor, yy: Optional[torch.Tensor], mm: Optional[torch.Tensor]) -> torch.Tensor:
            return self.model(xx, t, yy, mm)

        with shape_stable_convolutions(self.shape_stable):
            return tiled_apply(fn, x, (y, m), tile=self.tile, halo=self.halo, align=self.align)


def peak_window_pixels(tile: int, halo: int, align: int = 1) -> int:
    """Largest window (pixels) a tile is evaluated on: bounds the network's activation memory."""
    side = _ceil_to(tile, align) + 2 * halo + align
    return int(math.prod((side, side)))
