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
  :class:`TiledModel` evaluates under :func:`shape_stable_convolutions`, which computes CPU
  convolutions as im2col + GEMMs of one fixed shape (BLAS, too, picks its summation order from
  the matrix shapes: measured 1-ulp float64 differences with OpenBLAS), and asks for deterministic
  cuDNN algorithms on CUDA. Whole-image
  evaluation under the same context gives the same bits (``tests/test_tiling.py`` checks it on
  the real network). Its speed against oneDNN is measured by ``python benchmarks/bench_tiling.py
  speed`` (see ``docs/benchmarks/results.md``); ``shape_stable=False`` trades bit-identity for
  oneDNN's speed (results then agree to rounding).

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

from ..errors import ArgumentError

__all__ = ["TiledModel", "tile_windows", "tiled_apply", "shape_stable_convolutions", "peak_window_pixels"]


#: Columns per GEMM call of the shape-stable convolution: every call has the same shape.
GEMM_CHUNK = 256
#: Bytes of im2col columns built at a time by the shape-stable convolution (a strip of output rows):
#: small enough to stay in cache between the copy and its GEMMs. It does not change a bit of the
#: result, only the speed (``tests/test_tiling.py`` checks both).
STRIP_BYTES = 8 << 20


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _stable_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: Any,
                   padding: Any, dilation: Any, groups: int, strip_bytes: Optional[int] = None) -> torch.Tensor:
    """``conv2d`` as im2col + GEMMs of one fixed shape ``(C_out, C_in k k) x (C_in k k, GEMM_CHUNK)``.

    BLAS picks its kernels (hence the summation order of an output value) from the matrix shapes,
    so a plain im2col + GEMM still gives results that depend, by an ulp, on the image size (measured
    in float64 with OpenBLAS). Splitting the columns into chunks of exactly ``GEMM_CHUNK`` (the last
    one zero-padded) makes every call identical in shape, and a GEMM's value in column ``j`` depends
    only on column ``j`` of its right factor: each output value is then computed by the same
    arithmetic in the same order whatever the window. The columns are built a strip of output rows
    at a time (about ``strip_bytes``, default :data:`STRIP_BYTES`), from a strided view of the padded
    input: which columns share a chunk changes nothing, and the strip stays in cache, which is
    faster than building the whole image as one strip (``python benchmarks/bench_tiling.py speed``
    compares the two; see ``docs/benchmarks/results.md``).
    """
    import torch.nn.functional as F

    kh, kw = weight.shape[-2:]
    st, pd, dl = _pair(stride), _pair(padding), _pair(dilation)
    n, cin = x.shape[:2]
    xp = F.pad(x, (pd[1], pd[1], pd[0], pd[0])) if pd != (0, 0) else x
    # N×C×kh×kw×Ho×Wo, a view: im2col's column (c, i, j) at output pixel (r, s) is win[:, c, i, j, r, s]
    win = xp.unfold(2, dl[0] * (kh - 1) + 1, st[0]).unfold(3, dl[1] * (kw - 1) + 1, st[1])
    win = win[..., :: dl[0], :: dl[1]].permute(0, 1, 4, 5, 2, 3)
    ho, wo = win.shape[-2:]
    cout = weight.shape[0]
    cg_out, k = cout // groups, (cin // groups) * kh * kw
    wmats = [weight[g * cg_out:(g + 1) * cg_out].reshape(cg_out, k) for g in range(groups)]
    budget = STRIP_BYTES if strip_bytes is None else int(strip_bytes)
    rows = max(1, budget // max(1, cin * kh * kw * x.element_size() * wo))
    strips = []
    for r0 in range(0, ho, rows):
        r = min(rows, ho - r0)
        cols = win[..., r0:r0 + r, :].reshape(n, cin * kh * kw, r * wo)  # im2col of these rows (a copy)
        pad = (-cols.shape[-1]) % GEMM_CHUNK
        if pad:
            cols = F.pad(cols, (0, pad))
        outs = []
        for g, wmat in enumerate(wmats):
            cg = cols[:, g * k:(g + 1) * k]
            outs.append(torch.cat([torch.matmul(wmat, cg[..., j:j + GEMM_CHUNK])
                                   for j in range(0, cg.shape[-1], GEMM_CHUNK)], dim=-1))
        strips.append(torch.cat(outs, dim=1)[..., :r * wo].reshape(n, cout, r, wo))
    out = torch.cat(strips, dim=2) if len(strips) > 1 else strips[0]
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class _StableConvMode(torch.overrides.TorchFunctionMode):
    """Routes CPU ``conv2d`` calls through :func:`_stable_conv2d` (other calls run unchanged)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.nn.functional.conv2d, torch.conv2d):
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            defaults = (None, None, None, 1, 0, 1, 1)
            vals = dict(zip(names, defaults))
            vals.update(zip(names, args))
            vals.update(kwargs)
            x = vals["input"]
            if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dim() == 4 \
                    and not isinstance(vals["padding"], str):
                return _stable_conv2d(x, vals["weight"], vals["bias"], vals["stride"], vals["padding"],
                                      vals["dilation"], int(vals["groups"]))
        return func(*args, **kwargs)


@contextmanager
def shape_stable_convolutions(enabled: bool = True) -> Iterator[None]:
    """Run convolutions with per-pixel arithmetic that does not depend on the input size.

    On CPU every ``conv2d`` becomes im2col + GEMMs of one fixed shape (:func:`_stable_conv2d`); on
    CUDA cuDNN is asked for deterministic algorithms without autotuning. ``enabled=False`` is a
    no-op.
    """
    if not enabled:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oneDNN's TF32 notice when toggling flags
        with torch.backends.mkldnn.flags(enabled=False):
            with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False,
                                            deterministic=True):
                with _StableConvMode():
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
        raise ArgumentError(f"need tile > 0, halo >= 0, align > 0; got tile={tile}, halo={halo}, align={align}")
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
                raise ArgumentError(
                    f"{type(model).__name__} declares no receptive_field_radius; pass halo= explicitly"
                )
            halo = int(radius)
        if radius is not None and halo < int(radius):
            raise ArgumentError(f"halo={halo} is below the model's receptive-field radius {radius}")
        if tile <= 0:
            raise ArgumentError(f"tile must be positive, got {tile!r}")
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
        def fn(xx: torch.Tensor, yy: Optional[torch.Tensor], mm: Optional[torch.Tensor],
               *anchor: torch.Tensor) -> torch.Tensor:
            return self.model(xx, t, yy, mm, *anchor)

        with shape_stable_convolutions(self.shape_stable):
            spatial: tuple = (y, m)
            if getattr(self.model, "restorer", None) is not None:
                # R(c) sees the whole image (it is not local): computed once, whole, and cropped per tile
                spatial += (self.model.anchor(x.new_zeros(x.shape) if y is None else y, m),)
            return tiled_apply(fn, x, spatial, tile=self.tile, halo=self.halo, align=self.align)


def peak_window_pixels(tile: int, halo: int, align: int = 1) -> int:
    """Largest window (pixels) a tile is evaluated on: bounds the network's activation memory."""
    side = _ceil_to(tile, align) + 2 * halo + align
    return int(math.prod((side, side)))
