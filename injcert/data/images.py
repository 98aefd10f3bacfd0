r"""Real images bundled with scikit-image, patch sampling and PNG input/output.

Long because it is the one home of image input and output: the bundled registry, the train/held-out
split, patch sampling, and safe PNG/JPEG reading and writing; every function is short.

Nothing is downloaded at run time: every registry entry is read straight from a file inside the
installed scikit-image wheel (``skimage/data/``), never through ``skimage.data``'s fetchers (some
of which need ``pooch`` and the network).

Images are returned as tensors ``C×H×W`` with values in ``[-1, 1]`` (``x = 2u - 1`` for the
``[0, 1]`` intensities ``u``), ``C = 3`` for colour and ``C = 1`` for grayscale.

The fixed split
---------------
``HELDOUT_IMAGES`` — used only for evaluation, always at full resolution:

* ``astronaut`` (512×512 RGB, portrait),
* ``chelsea`` (300×451 RGB, a cat's face: a second portrait-like image),
* ``hubble_deep_field`` (872×1000 RGB),
* ``retina`` (1411×1411 RGB).

``TRAIN_IMAGES`` — everything else in :data:`IMAGES`: ``camera``, ``coffee``, ``rocket``,
``brick``, ``grass``, ``gravel``, ``immunohistochemistry``, ``moon``, ``coins``, ``cell``,
``motorcycle`` (left view of the stereo pair only) and ``lfw_faces`` (the 100 face crops of
``lfw_subset.npy`` tiled 10×10). Images closely related to a held-out one (``microaneurysms`` is a
crop of a retina) or not natural photographs (text, charts, logos, synthetic phantoms) are left out.
The split is disjoint and never changes; :class:`PatchDataset` refuses to draw training patches from
a held-out image.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import ArgumentError, ArgumentTypeError, ConfigError, InputError, OutputPathError
from ..io import atomic_write, check_output_path, notice
from .. import limits

__all__ = [
    "ImageInfo",
    "IMAGES",
    "TRAIN_IMAGES",
    "HELDOUT_IMAGES",
    "SKIMAGE_DATA_DIR",
    "load_image",
    "save_image",
    "image_format",
    "PatchDataset",
    "image_files",
]

PathLike = Union[str, "os.PathLike[str]"]

SKIMAGE_DATA_DIR: Path = Path(__import__("skimage").__file__).resolve().parent / "data"
"""Folder of the image files shipped inside the scikit-image wheel."""

#: ITU-R BT.709 luma weights, as in :func:`skimage.color.rgb2gray`.
_LUMA = (0.2125, 0.7154, 0.0721)


@dataclass(frozen=True)
class ImageInfo:
    """One bundled image.

    Attributes:
        name: registry key.
        file: file name inside :data:`SKIMAGE_DATA_DIR`.
        description: one line saying what the picture shows.
        shape: ``(C, H, W)`` of :func:`load_image` with ``gray=None``.
        rgb: ``True`` for colour (``C = 3``), ``False`` for grayscale (``C = 1``).
        split: ``"train"`` or ``"heldout"``.
    """

    name: str
    file: str
    description: str
    shape: tuple[int, int, int]
    rgb: bool
    split: Literal["train", "heldout"]

    @property
    def path(self) -> Path:
        """Absolute path of the file inside the installed scikit-image."""
        return SKIMAGE_DATA_DIR / self.file


def _info(name: str, file: str, description: str, shape: tuple[int, int, int], split: str) -> ImageInfo:
    return ImageInfo(name, file, description, shape, shape[0] == 3, split)  # type: ignore[arg-type]


IMAGES: dict[str, ImageInfo] = {
    i.name: i
    for i in (
        _info("astronaut", "astronaut.png", "Eileen Collins, NASA astronaut (portrait)", (3, 512, 512), "heldout"),
        _info("chelsea", "chelsea.png", "Chelsea the cat (portrait-like face)", (3, 300, 451), "heldout"),
        _info("hubble_deep_field", "hubble_deep_field.jpg", "Hubble eXtreme Deep Field", (3, 872, 1000), "heldout"),
        _info("retina", "retina.jpg", "human retina fundus photograph", (3, 1411, 1411), "heldout"),
        _info("camera", "camera.png", "cameraman (gray)", (1, 512, 512), "train"),
        _info("coffee", "coffee.png", "cup of coffee on a table", (3, 400, 600), "train"),
        _info("rocket", "rocket.jpg", "SpaceX Falcon 9 on the launch pad", (3, 427, 640), "train"),
        _info("brick", "brick.png", "brick wall texture (gray)", (1, 512, 512), "train"),
        _info("grass", "grass.png", "grass texture (gray)", (1, 512, 512), "train"),
        _info("gravel", "gravel.png", "gravel texture (gray)", (1, 512, 512), "train"),
        _info("immunohistochemistry", "ihc.png", "immunohistochemistry stained tissue", (3, 512, 512), "train"),
        _info("moon", "moon.png", "lunar surface (gray)", (1, 512, 512), "train"),
        _info("coins", "coins.png", "Greek coins from Pompeii (gray)", (1, 303, 384), "train"),
        _info("cell", "cell.png", "cell under a microscope (gray)", (1, 660, 550), "train"),
        _info("motorcycle", "motorcycle_left.png", "motorcycle, left stereo view", (3, 500, 741), "train"),
        _info("lfw_faces", "lfw_subset.npy", "100 LFW faces (25×25 each) tiled 10×10 (gray)", (1, 250, 250), "train"),
    )
}
"""Registry of the bundled natural images, name → :class:`ImageInfo`."""

TRAIN_IMAGES: tuple[str, ...] = tuple(n for n, i in IMAGES.items() if i.split == "train")
"""Names of the images patches are trained on."""

HELDOUT_IMAGES: tuple[str, ...] = tuple(n for n, i in IMAGES.items() if i.split == "heldout")
"""Names of the images kept for evaluation (full resolution)."""


def _to_unit_hwc(arr: np.ndarray, source: str) -> np.ndarray:
    """Any image array → float32 ``H×W×C`` in ``[0, 1]`` with ``C ∈ {1, 3}``."""
    from skimage.util import img_as_float

    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"image {source!r} holds NaN or infinite values")
    try:
        u = img_as_float(arr).astype(np.float32)
    except (ValueError, TypeError) as exc:
        raise InputError(f"cannot convert image {source!r} of dtype {arr.dtype}: {exc}") from None
    if u.ndim == 2:
        u = u[:, :, None]
    if u.ndim != 3:
        raise InputError(f"image {source!r} has shape {arr.shape}; expected H×W or H×W×C")
    c = u.shape[2]
    if c in (2, 4):  # gray + alpha, RGBA: drop alpha, and say so

        notice(f"image {source!r} has an alpha channel; it is dropped (transparent pixels keep their colour)")
        u = u[:, :, : c - 1]
    elif c not in (1, 3):
        raise InputError(f"image {source!r} has {c} channels; expected 1, 2, 3 or 4")
    return np.clip(u, 0.0, 1.0)


def _lfw_mosaic(path: Path) -> np.ndarray:
    faces = np.load(path)[:100]  # the first 100 entries are faces, the rest are not
    rows = faces.reshape(10, 10, 25, 25).transpose(0, 2, 1, 3).reshape(250, 250)
    return rows.astype(np.float32)


def _check_pixels(path: Path) -> None:
    """Read an image file's size from its header and compare it with ``limits.pixels``, before
    anything is decoded (a 186 KB PNG can hold 8000×8000 pixels)."""

    size = None
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                size = (int(im.size[1]), int(im.size[0]), int(getattr(im, "n_frames", 1) or 1))
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - not a format PIL knows, or a bomb PIL refused itself
        if type(exc).__name__ == "DecompressionBombError":
            raise InputError(f"image {str(path)!r} is too large: {str(exc).splitlines()[0]}") from None
        try:
            import imageio.v3 as iio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                props = iio.improps(path)
            shape = tuple(int(v) for v in props.shape)
            if len(shape) >= 2:
                size = (shape[0], shape[1], 1) if len(shape) <= 3 else (shape[-3], shape[-2], shape[0])
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001
            raise InputError(f"cannot read image file {str(path)!r}: not an image format injcert can read") from None
    if size is None:  # pragma: no cover
        raise InputError(f"cannot read image file {str(path)!r}: its size is unknown")
    h, w, frames = size
    limits.check("pixels", h * w * max(1, frames), f"pixels of {str(path)!r} ({h}×{w}"
                 + (f"×{frames} frames" if frames > 1 else "") + ")")


def _read_png16(path: Path) -> "np.ndarray | None":
    """A 16-bit colour PNG at full precision (Pillow reads those as 8-bit); ``None`` for any other
    file (the usual decoders read it). Non-interlaced only; colour types 2, 4 and 6."""
    import struct
    import zlib

    with open(path, "rb") as fh:
        sig = fh.read(33)
        if len(sig) < 33 or sig[:8] != b"\x89PNG\r\n\x1a\n" or sig[12:16] != b"IHDR":
            return None
        w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", sig[16:29])
        if depth != 16 or ctype not in (2, 4, 6):
            return None
        if interlace:
            notice(f"image {str(path)!r} is an interlaced 16-bit PNG; read as 8-bit")
            return None
        idat = _png_idat(fh, path)
    channels = {2: 3, 4: 2, 6: 4}[ctype]
    bpp = 2 * channels
    stride = w * bpp
    expected = h * (stride + 1)
    try:
        dec = zlib.decompressobj()
        raw = dec.decompress(b"".join(idat), expected + 1)
    except zlib.error as exc:
        raise InputError(f"cannot read image file {str(path)!r}: corrupt PNG data ({exc})") from None
    if len(raw) != expected:
        raise InputError(f"cannot read image file {str(path)!r}: PNG data of {len(raw)} bytes, expected {expected}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, stride + 1)
    out = np.empty((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for r in range(h):
        cur = _png_unfilter(int(rows[r, 0]), rows[r, 1:], prev, w, bpp, path, r)
        out[r] = cur
        prev = cur
    arr = out.view(">u2").reshape(h, w, channels).astype(np.uint16)
    return arr[:, :, 0] if channels == 1 else arr


def _png_idat(fh: Any, path: Path) -> list:
    """The IDAT chunks' bodies of a PNG file, read from just after its signature up to IEND."""
    import struct

    fh.seek(8)
    idat = []
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise InputError(f"cannot read image file {str(path)!r}: truncated PNG")
        n, kind = struct.unpack(">I4s", head)
        body = fh.read(n)
        fh.read(4)
        if len(body) < n:
            raise InputError(f"cannot read image file {str(path)!r}: truncated PNG")
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    return idat


def _png_unfilter(f: int, line: "np.ndarray", prev: "np.ndarray", w: int, bpp: int, path: Path,
                  r: int) -> "np.ndarray":
    """Row ``r`` of a PNG undone from its filter ``f`` (None, Sub, Up, Average, Paeth), given the row above."""
    stride = w * bpp
    if f == 0:
        cur = line.copy()
    elif f == 1:  # Sub: a running sum per byte position of the pixel, modulo 256
        cur = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(stride)
    elif f == 2:  # Up
        cur = line + prev
    elif f in (3, 4):  # Average, Paeth: sequential along the row
        cur_l = bytearray(line.tobytes())
        up = prev.tobytes()
        for i in range(stride):
            a = cur_l[i - bpp] if i >= bpp else 0
            b = up[i]
            if f == 3:
                cur_l[i] = (cur_l[i] + ((a + b) >> 1)) & 0xFF
            else:
                c = up[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                cur_l[i] = (cur_l[i] + pred) & 0xFF
        cur = np.frombuffer(bytes(cur_l), dtype=np.uint8)
    else:
        raise InputError(f"cannot read image file {str(path)!r}: unknown PNG filter {f} in row {r}")
    return cur


@lru_cache(maxsize=64)
def _decode(key: str, mtime_ns: int) -> Tensor:
    """Decoded image ``C×H×W`` float32 in ``[-1, 1]``; cached (``mtime_ns`` invalidates files)."""
    from skimage import io

    if key in IMAGES:
        info = IMAGES[key]
        path = info.path
        if path.suffix == ".npy":
            arr = _lfw_mosaic(path)
        else:
            arr = io.imread(path)
    else:
        path = Path(key)
        _check_pixels(path)
        arr = _read_png16(path)
        if arr is None:
            try:
                with warnings.catch_warnings():  # imageio's plugin probing warns on unknown formats
                    warnings.simplefilter("ignore", DeprecationWarning)
                    arr = io.imread(path)
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input file
                msg = (str(exc).strip().splitlines() or [""])[0]
                raise InputError(f"cannot read image file {str(path)!r}: {type(exc).__name__}: {msg}") from None
        arr = np.asarray(arr)
    u = _to_unit_hwc(np.asarray(arr), key)
    if key not in IMAGES and arr.dtype not in (np.uint8, np.bool_):  # after the checks: an error stays one line

        depth = f"{arr.dtype.itemsize * 8}-bit" if arr.dtype.kind in "ui" else f"{arr.dtype} (floating point)"
        notice(f"image {key!r} is {depth}; read at full precision (images are written as 8-bit PNG)")
    t = torch.from_numpy(np.ascontiguousarray(u.transpose(2, 0, 1)))
    return t.mul_(2.0).sub_(1.0)


def _resolve(name_or_path: PathLike) -> tuple[str, int]:
    if isinstance(name_or_path, str) and name_or_path in IMAGES:
        info = IMAGES[name_or_path]
        if not info.path.is_file():
            raise FileNotFoundError(
                f"bundled image {name_or_path!r} is missing from the scikit-image install: {info.path}"
            )
        return name_or_path, 0
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ArgumentTypeError(f"expected an image name or a file path, got {type(name_or_path).__name__}")
    path = Path(name_or_path)
    if path.is_file():
        return str(path.resolve()), path.stat().st_mtime_ns
    if path.exists():
        raise InputError(f"image {str(name_or_path)!r} is not a regular file")
    text = str(name_or_path)
    if isinstance(name_or_path, str) and os.sep not in text and "/" not in text and not path.suffix:
        raise InputError(
            f"unknown image name {text!r}; choose one of {sorted(IMAGES)} or give a PNG/JPEG file path"
        )
    raise FileNotFoundError(f"image file not found: {text!r}")


def _convert_channels(x: Tensor, channels: int) -> Tensor:
    c = x.shape[-3]
    if c == channels:
        return x
    if channels == 3 and c == 1:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    if channels == 1 and c == 3:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * w).sum(dim=-3, keepdim=True)
    raise ArgumentError(f"cannot convert {c} channels to {channels}")


def load_image(
    name_or_path: PathLike,
    *,
    gray: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Load a bundled image by name, or a PNG/JPEG file, as a ``C×H×W`` tensor in ``[-1, 1]``.

    Arguments:
        name_or_path: a key of :data:`IMAGES` or the path of an image file (read by
            :func:`skimage.io.imread`; an alpha channel is dropped).
        gray: ``None`` keeps the image's own channels; ``True`` converts colour to one luma
            channel (BT.709 weights, as :func:`skimage.color.rgb2gray`); ``False`` makes
            three channels (gray is repeated).
        dtype: a floating dtype of the result.

    Returns:
        A fresh tensor ``C×H×W`` (``C`` is 1 or 3), values in ``[-1, 1]``.

    Raises:
        ValueError: an unknown registry name (the message lists the names), an unreadable
            file, or a non-floating ``dtype``.
        FileNotFoundError: a path that does not exist.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ArgumentError(f"dtype must be a floating torch dtype, got {dtype!r}")
    key, mtime = _resolve(name_or_path)
    x = _decode(key, mtime)
    if gray is True:
        x = _convert_channels(x, 1)
    elif gray is False:
        x = _convert_channels(x, 3)
    return x.to(dtype=dtype, copy=True).clamp_(-1.0, 1.0)


def image_format(path: PathLike) -> str:
    """The Pillow format an output file name asks for (``.png`` → ``"PNG"``); a name without a
    known image suffix raises :class:`~injcert.errors.OutputPathError` (nothing is written)."""
    from PIL import Image

    suffix = Path(os.fspath(path)).suffix.lower()
    fmt = Image.registered_extensions().get(suffix) if suffix else None
    if fmt is None or fmt not in Image.SAVE:
        raise OutputPathError(f"cannot tell which image format to write to {os.fspath(path)!r}"
                              f"{' (no suffix)' if not suffix else f' (unknown suffix {suffix!r})'}; use a name ending in .png")
    return fmt


def save_image(image: Tensor, path: PathLike, *, inputs: Sequence[PathLike] = ()) -> Path:
    """Write an image tensor in ``[-1, 1]`` as an 8-bit image (PNG for ``.png``; the format comes
    from the suffix), atomically through :func:`injcert.io.atomic_write`.

    Arguments:
        image: ``C×H×W`` or ``1×C×H×W`` with ``C`` in ``{1, 3}``; values outside ``[-1, 1]`` are
            clipped.
        path: output file (missing parent folders are made); a symlink, a device node, a fifo, a
            directory or one of ``inputs`` is refused.
        inputs: the command's input files, which ``path`` must not be.

    Returns:
        The path written.

    Raises:
        ValueError: a tensor of another shape or a non-floating dtype.
        InputError: NaN or infinite values (nothing is written).
        OutputPathError: a refused path or a name without a known image suffix (nothing is written).
    """
    if not isinstance(image, Tensor):
        raise InputError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if not image.is_floating_point():
        raise InputError(f"image must have a floating dtype, got {image.dtype}")
    x = image.detach()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise InputError(f"image must be C×H×W or 1×C×H×W with C in {{1, 3}}, got shape {tuple(image.shape)}")

    fmt = image_format(path)
    check_output_path(path, inputs=inputs)
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"refusing to write {os.fspath(path)!r}: the image holds NaN or infinite values")
    import io as _io

    from PIL import Image

    u = ((x.to(torch.float64).cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    arr = u.permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    im = Image.fromarray(np.ascontiguousarray(arr))
    if fmt in ("JPEG",) and im.mode not in ("L", "RGB"):  # pragma: no cover
        im = im.convert("RGB")
    buf = _io.BytesIO()
    im.save(buf, format=fmt)
    return atomic_write(path, buf.getvalue(), inputs=inputs)


def _seed_for(seed: int, index: int) -> int:
    """Mix ``(seed, index)`` into one 63-bit seed (SplitMix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class PatchDataset(torch.utils.data.Dataset):
    r"""Random square patches of bundled (or user) images — deterministic per index.

    Item ``i`` depends only on ``(seed, i)``: a ``torch.Generator`` seeded from both picks an
    image uniformly among ``images``, a crop position uniformly, and a horizontal flip with
    probability 1/2; with ``dihedral`` also a rotation by a multiple of 90° (uniform), so the flips
    and rotations draw all eight symmetries of the square. With ``max_downscale`` $s_{\max} > 1$ it also draws a scale $s$ log-uniform on
    $[1, \min(s_{\max}, h/p, w/p)]$, crops a square of side $\lfloor s p\rceil$ and resizes it to
    $p$ (antialiased bilinear): the patches then span the scales at which an image is seen whole,
    down to the few-pixel detail of a photograph shown at 64². Decoded images are cached in memory (module-level LRU cache, per process),
    so the dataset works with ``DataLoader`` for any ``num_workers``.

    Arguments:
        images: registry names or file paths; ``None`` takes all images of ``split``.
        patch_size: side ``p`` of the square patches (pixels).
        channels: 3 (gray images are repeated) or 1 (colour is converted to luma).
        length: number of items.
        seed: base seed.
        split: ``"train"`` (no held-out registry image allowed), ``"heldout"`` (only held-out
            registry images allowed) or ``"all"`` (no check). File paths are allowed in any split.
        max_downscale: the largest downscaling factor $s_{\max} \ge 1$ (1: native-resolution crops,
            and the same draws as without the option).
        dihedral: also rotate by a random multiple of 90° (``False``: the same draws as without the
            option).

    Raises:
        ValueError: invalid sizes, an unknown split, an image from the wrong split, an image
            smaller than ``patch_size``, or an unknown name / missing file (see :func:`load_image`).
    """

    def __init__(
        self,
        images: Sequence[PathLike] | None = None,
        patch_size: int = 32,
        channels: int = 3,
        length: int = 10_000,
        seed: int = 0,
        split: Literal["train", "heldout", "all"] = "train",
        max_downscale: float = 1.0,
        dihedral: bool = False,
    ) -> None:
        if not isinstance(dihedral, bool):
            raise ConfigError(f"dihedral must be a bool, got {dihedral!r}")
        if split not in ("train", "heldout", "all"):
            raise ConfigError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        if images is None:
            images = TRAIN_IMAGES if split == "train" else HELDOUT_IMAGES if split == "heldout" else tuple(IMAGES)
        images = tuple(images)
        if not images:
            raise ConfigError("images must name at least one image, got an empty sequence")
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ConfigError(f"patch_size must be a positive int, got {patch_size!r}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
        if isinstance(max_downscale, bool) or not isinstance(max_downscale, (int, float)) or not max_downscale >= 1 \
                or not np.isfinite(max_downscale):
            raise ConfigError(f"max_downscale must be a finite number >= 1, got {max_downscale!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ConfigError(f"length must be a non-negative int, got {length!r}")
        if split != "all":
            for name in images:
                info = IMAGES.get(name) if isinstance(name, str) else None
                if info is not None and info.split != split:
                    raise ConfigError(f"image {name!r} belongs to the {info.split!r} split, not {split!r}")
        for name in images:
            key, mtime = _resolve(name)
            h, w = _decode(key, mtime).shape[-2:]
            if h < patch_size or w < patch_size:
                raise ConfigError(f"image {name!r} of size {h}×{w} is smaller than patch_size={patch_size}")
        self.images = images
        self.patch_size = patch_size
        self.channels = channels
        self.length = length
        self.seed = int(seed)
        self.split = split
        self.max_downscale = float(max_downscale)
        self.dihedral = dihedral

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        """Patch ``index`` as a float32 tensor ``channels×p×p`` in ``[-1, 1]``."""
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} out of range for a PatchDataset of length {self.length}")
        g = torch.Generator().manual_seed(_seed_for(self.seed, i))
        k = int(torch.randint(len(self.images), (1,), generator=g))
        img = _decode(*_resolve(self.images[k]))
        p = c = self.patch_size
        h, w = img.shape[-2:]
        if self.max_downscale > 1:
            s_hi = min(self.max_downscale, h / p, w / p)
            c = min(h, w, int(round(p * s_hi ** float(torch.rand((), generator=g, dtype=torch.float64)))))
        top = int(torch.randint(h - c + 1, (1,), generator=g))
        left = int(torch.randint(w - c + 1, (1,), generator=g))
        flip = bool(torch.rand((), generator=g) < 0.5)
        patch = img[:, top : top + c, left : left + c]
        if c != p:
            patch = torch.nn.functional.interpolate(patch[None].to(torch.float32), size=(p, p), mode="bilinear",
                                                    antialias=True, align_corners=False)[0].clamp(-1, 1)
        if flip:
            patch = patch.flip(-1)
        if self.dihedral:
            patch = torch.rot90(patch, int(torch.randint(4, (1,), generator=g)), (-2, -1))
        return _convert_channels(patch, self.channels).to(torch.float32, copy=True).contiguous()


#: File suffixes :func:`image_files` collects from a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(paths: Sequence[PathLike], *, min_side: int = 1, warn: bool = True) -> list[str]:
    """The training images under ``paths``: registry names and files as given, folders searched
    recursively for PNG/JPEG files (sorted, so the list is the same on every machine). Every file is
    decoded once; one that cannot be read, or is smaller than ``min_side`` on a side, is skipped with
    one line on stderr (``warn``).

    Raises:
        InputError: nothing usable was found.
        FileNotFoundError: a path that does not exist.
    """
    import sys

    found: list[str] = []
    for p in paths:
        if isinstance(p, str) and p in IMAGES:
            found.append(p)
            continue
        path = Path(p)
        if path.is_dir():
            found += sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(str(path))
        else:
            raise FileNotFoundError(f"image file or folder not found: {str(p)!r}")
    good = []
    for f in found:
        try:
            h, w = _decode(*_resolve(f)).shape[-2:]
        except (ValueError, OSError) as exc:
            if warn:
                print(f"injcert: skipping {f}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                      file=sys.stderr)
            continue
        if min(h, w) < min_side:
            if warn:
                print(f"injcert: skipping {f}: {h}×{w} is smaller than {min_side} pixels on a side", file=sys.stderr)
            continue
        good.append(f)
    if not good:
        raise InputError(f"no usable PNG/JPEG image under {[str(p) for p in paths]}")
    return good
