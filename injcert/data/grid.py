"""Demo figure: every corruption type applied to a few bundled images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ArgumentError
from .corruptions import CORRUPTIONS, BlurRegion, BoxMask, Compose, GaussianNoise, make_corruption
from .images import load_image
from ..io import save_figure

__all__ = ["corruption_grid", "square_image"]

PathLike = Union[str, "os.PathLike[str]"]


def square_image(name_or_path: PathLike, size: int) -> Tensor:
    """Load an image as 3 channels, centre-crop it to a square and resize it to ``size``.

    Arguments:
        name_or_path: a bundled image name or a file path (see :func:`load_image`).
        size: output side in pixels, ``>= 1``.

    Returns:
        A float32 tensor ``3×size×size`` in ``[-1, 1]``.

    Raises:
        ValueError: ``size < 1`` or an unknown image (see :func:`load_image`).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ArgumentError(f"size must be a positive int, got {size!r}")
    x = load_image(name_or_path, gray=False)
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[:, top : top + s, left : left + s].unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].clamp(-1.0, 1.0)


def corruption_grid(
    out_png: PathLike,
    images: Sequence[str] = ("astronaut", "camera", "coffee"),
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Save a grid: rows are images; columns are the clean image, each registered corruption
    (with its default parameters), a composition (box + blur + noise) and channel 0 of that
    composition's map (white = observed as is). Drawn on a bare Agg canvas (no pyplot state).

    Arguments:
        out_png: output PNG path (parent folders are created).
        images: bundled image names or file paths.
        size: side of each (centre-cropped, resized) tile in pixels.
        seed: seed of the corruptions (row ``r`` uses ``seed + r``).

    Returns:
        The path of the PNG written.

    Raises:
        ValueError: no images, a bad ``size``, or an unknown image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = tuple(images)
    if not images:
        raise ArgumentError("images must name at least one image, got an empty sequence")
    names = list(CORRUPTIONS)
    compose = Compose([BoxMask(0.2, 0.35), BlurRegion(2.0, 0.3, 0.5), GaussianNoise(0.1, 0.3, 0.5)])
    titles = ["clean", *names, "box+blur+noise", "m[0] (composed)"]
    fig = Figure(figsize=(1.6 * len(titles), 1.7 * len(images)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), len(titles), squeeze=False)
    for r, name in enumerate(images):
        x = square_image(name, size).unsqueeze(0)
        tiles = [x]
        for k, cname in enumerate(names):
            y, _ = make_corruption(cname)(x, seed + 1000 * r + k)
            tiles.append(y)
        y, m = compose(x, seed + 1000 * r + len(names))
        tiles.append(y)
        for c, tile in enumerate(tiles):
            img = ((tile[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            axes[r][c].imshow(img, interpolation="nearest")
        axes[r][-1].imshow(m[0, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[r][0].set_ylabel(str(name), fontsize=8)
    for c, title in enumerate(titles):
        axes[0][c].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)

    save_figure(fig, out, format="png")
    return out
