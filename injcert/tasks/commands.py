"""Command-line front ends of ``invert``, ``decode``, ``reconstruct`` and ``edit``.

Images are read and written as ordinary files (PNG/JPEG in, PNG out) or by bundled-image name;
latents as safetensors. Every command takes ``--model CKPT`` (default: the shipped model),
``--device``, ``--steps``, ``--method`` where it applies, and ``--figure PNG`` for a side-by-side
figure. High-resolution images are evaluated in tiles (``--tile``), bit-identically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "add_invert_arguments", "run_invert", "add_decode_arguments", "run_decode",
    "add_reconstruct_arguments", "run_reconstruct", "add_edit_arguments", "run_edit",
    "load_model_for_cli", "side_by_side",
]

_CORRUPTION_CHOICES = ("box", "freeform", "random", "gaps", "blur", "noise")


# --------------------------------------------------------------------------------------------- helpers
def _common(p: argparse.ArgumentParser, *, steps: bool = True, method: bool = True) -> None:
    p.add_argument("--model", default=None, metavar="CKPT", help="checkpoint (default: the shipped model)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="compute dtype")
    if steps:
        p.add_argument("--steps", type=int, default=50, help="integration steps (default: 50)")
    if method:
        p.add_argument("--method", default="reversible", help="integrator: reversible (default), fixed_point, ddim, dopri5, leapfrog, reversible_heun_xbar")
    p.add_argument("--tile", type=int, default=512, help="evaluate the network in tiles of this size (default: 512)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def load_model_for_cli(path: Optional[str], device: str, dtype: torch.dtype, tile: int = 512) -> Any:
    """Load a checkpoint (default: the shipped one), move it, and wrap it for tiled evaluation."""
    from ..io import load_checkpoint
    from .tiling import TiledModel

    if path is None:
        from .. import DEFAULT_CHECKPOINT

        path = str(DEFAULT_CHECKPOINT)
    _check_device(device)
    model = load_checkpoint(path, device=device).to(dtype)
    if tile and tile > 0:
        return TiledModel(model, tile=tile)
    return model


def _check_device(device: str) -> None:
    from ..errors import ConfigError

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here")


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _load(path: str, model: Any, device: str, dtype: torch.dtype) -> Tensor:
    from ..data.images import load_image

    channels = int(getattr(model, "in_channels", 3))
    x = load_image(path, gray=(channels == 1), dtype=dtype)
    return x.unsqueeze(0).to(device)


def _save(x: Tensor, path: str) -> None:
    from ..data.images import save_image

    save_image(x.detach().float().cpu().clamp(-1, 1), path)


def side_by_side(panels: Sequence[tuple[str, Tensor]], path: str) -> Path:
    """Save a row of labelled images (C×H×W or 1×C×H×W in [-1, 1]) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3 * len(panels), 3.3))
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        a = img.detach().float().cpu()
        a = a[0] if a.ndim == 4 else a
        a = ((a.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
        ax.imshow(a[..., 0] if a.shape[-1] == 1 else a, cmap="gray" if a.shape[-1] == 1 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return Path(path)


def _print(obj: dict) -> None:
    print(json.dumps(obj, indent=None, default=float))


# --------------------------------------------------------------------------------------------- invert
def add_invert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image file (PNG/JPEG) or bundled image name")
    p.add_argument("--out", required=True, help="latent file to write (.safetensors)")
    p.add_argument("--figure", default=None, help="also write a PNG: image | latent | decoded")
    _common(p)


def run_invert(args: argparse.Namespace) -> int:
    from .invert import decode, encode

    dt = _dtype(args.dtype)
    model = load_model_for_cli(args.model, args.device, dt, args.tile)
    x = _load(args.image, model, args.device, dt)
    with torch.no_grad():
        lat = encode(model, x, steps=args.steps, method=args.method, progress=not args.quiet)
        lat.save(args.out)
        info = {"image": args.image, "latent": args.out, "shape": list(x.shape), "method": args.method,
                "steps": args.steps, "nfe": lat.nfe}
        if args.figure:
            back = decode(model, lat)
            info["round_trip_max_abs"] = float((back - x).abs().max())
            z = lat.to_tensor()
            side_by_side([("image", x), ("latent x_T (scaled)", z / z.abs().max().clamp_min(1e-12)),
                          ("decoded", back)], args.figure)
    _print(info)
    return 0


# --------------------------------------------------------------------------------------------- decode
def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("latent", help="latent file written by `invert`")
    p.add_argument("--out", required=True, help="image file to write (PNG)")
    p.add_argument("--compare", default=None, help="an image to compare the result with (prints the max-abs difference)")
    _common(p, steps=False, method=False)


def run_decode(args: argparse.Namespace) -> int:
    from .invert import Latent, decode

    lat = Latent.load(args.latent)
    model = load_model_for_cli(args.model, args.device, lat.dtype, args.tile)
    lat = _latent_to(lat, args.device)
    with torch.no_grad():
        x = decode(model, lat, progress=not args.quiet)
    _save(x, args.out)
    info: dict = {"latent": args.latent, "image": args.out, "method": lat.method, "steps": lat.steps}
    if args.compare:
        ref = _load(args.compare, model, args.device, lat.dtype)
        if ref.shape == x.shape:
            info["max_abs_vs_compare"] = float((x - ref).abs().max())
    _print(info)
    return 0


def _latent_to(lat: Any, device: str) -> Any:
    lat.state = lat.state.to(device)
    if lat.aux is not None:
        lat.aux = lat.aux.to(device)
    if lat.remainder is not None:
        lat.remainder = lat.remainder.to(device)
    return lat


# --------------------------------------------------------------------------------------------- reconstruct
def add_reconstruct_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="clean image to corrupt (or a corrupted one with --mask)")
    p.add_argument("--out", required=True, help="reconstruction to write (PNG)")
    p.add_argument("--corruption", choices=_CORRUPTION_CHOICES, default="box",
                   help="corruption applied to the image (ignored with --mask)")
    p.add_argument("--mask", default=None, help="the image is already corrupted: this PNG is white where observed")
    p.add_argument("--ratio", type=float, default=None, help="missing ratio (random)")
    p.add_argument("--sigma", type=float, default=None, help="blur or noise sigma")
    p.add_argument("--width", type=float, default=None, help="stroke / gap width in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruption and of the starting noise")
    p.add_argument("--corrupted-out", default=None, help="also write the corrupted observation (PNG)")
    p.add_argument("--figure", default=None, help="also write a PNG: clean | observed | reconstruction")
    p.add_argument("--start", choices=["auto", "estimate", "observation", "noise"], default="auto",
                   help="where the flow starts: the classical estimate at an intermediate noise level (auto), "
                        "the noisy observation itself (noise only), or pure noise at t_max (default: auto)")
    p.add_argument("--sigma-start", type=float, default=None,
                   help="noise level varsigma of the start from the estimate (default: from the hole size)")
    p.add_argument("--levels", default="0",
                   help="coarse-to-fine levels for missing pixels: an int or 'auto' (default: 0)")
    _common(p)


def _levels(v: str) -> Union[int, str]:
    if v == "auto":
        return v
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"--levels must be an int >= 0 or 'auto', got {v!r}") from None
    if n < 0:
        raise ValueError(f"--levels must be an int >= 0 or 'auto', got {v!r}")
    return n


def _corruption_params(args: argparse.Namespace) -> dict:
    params = {}
    if args.ratio is not None:
        params["ratio"] = args.ratio
    if args.sigma is not None:
        params["sigma"] = args.sigma
    if args.width is not None:
        params["width"] = args.width
    return params


def run_reconstruct(args: argparse.Namespace) -> int:
    from ..data.corruptions import make_corruption
    from ..metrics import psnr, region_psnr
    from .reconstruct import reconstruct_full

    dt = _dtype(args.dtype)
    model = load_model_for_cli(args.model, args.device, dt, args.tile)
    x = _load(args.image, model, args.device, dt)
    clean: Optional[Tensor] = None
    operator = None
    if args.mask:
        from ..data.images import load_image

        mk = load_image(args.mask, gray=True, dtype=dt).unsqueeze(0).to(args.device)
        if mk.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"mask {tuple(mk.shape[-2:])} and image {tuple(x.shape[-2:])} differ in size")
        m1 = (mk > 0).to(dt)
        y, m = x * m1, m1
    else:
        clean = x
        obs = make_corruption(args.corruption, **_corruption_params(args)).sample(x.cpu(), args.seed)
        y, m, operator = obs.y.to(args.device), obs.m.to(args.device), obs.operator
    with torch.no_grad():
        rec = reconstruct_full(model, y, m, steps=args.steps, seed=args.seed, method=args.method, start=args.start,
                               sigma_start=args.sigma_start, levels=_levels(args.levels),
                               blur_sigma=args.sigma if (args.sigma is not None and args.corruption == "blur") else 2.0,
                               operator=(lambda v: operator(v.cpu()).to(v.device)) if operator else None,
                               progress=not args.quiet)
    _save(rec.image, args.out)
    if args.corrupted_out:
        _save(y, args.corrupted_out)
    info: dict = {"image": args.image, "out": args.out, "corruption": "mask" if args.mask else args.corruption,
                  "steps": args.steps, "nfe": rec.nfe}
    if rec.residual is not None:
        info["forward_residual"] = [float(v) for v in rec.residual]
    if clean is not None:
        region = (m[:, :1] < 1).to(dt)
        info["psnr"] = float(psnr(rec.image, clean))
        info["psnr_observed"] = float(psnr(y, clean))
        if float(region.sum()) > 0 and float(region.sum()) < region.numel():
            info["psnr_region"] = float(region_psnr(rec.image, clean, region))
    if args.figure:
        panels = ([("clean", clean)] if clean is not None else []) + [("observed", y), ("reconstruction", rec.image)]
        side_by_side(panels, args.figure)
    _print(info)
    return 0


# --------------------------------------------------------------------------------------------- edit
def add_edit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image to edit (file or bundled name)")
    p.add_argument("--mask", required=True, help="PNG, white inside the region to edit")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", default=None, help="target image (PNG) whose content goes inside the mask")
    target.add_argument("--op", choices=("remove", "recolor", "move"), default=None, help="a named edit")
    p.add_argument("--strength", type=float, default=0.5, help="edit strength in (0, 1] (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise added to the target")
    p.add_argument("--out", required=True, help="edited image (PNG)")
    p.add_argument("--figure", default=None, help="also write a PNG: image | mask | target | edited")
    _common(p, method=False)


def run_edit(args: argparse.Namespace) -> int:
    from ..data.images import load_image
    from ..metrics import region_psnr, seam_energy
    from .edit import edit_full

    dt = _dtype(args.dtype)
    model = load_model_for_cli(args.model, args.device, dt, args.tile)
    x = _load(args.image, model, args.device, dt)
    mk = load_image(args.mask, gray=True, dtype=dt).unsqueeze(0).to(args.device)
    if mk.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"mask {tuple(mk.shape[-2:])} and image {tuple(x.shape[-2:])} differ in size")
    mask = (mk > 0).to(dt)
    target: Any = args.op
    if args.target:
        target = _load(args.target, model, args.device, dt)
        if target.shape != x.shape:
            raise ValueError(f"target {tuple(target.shape)} and image {tuple(x.shape)} differ in shape")
    with torch.no_grad():
        res = edit_full(model, x, mask, target, args.strength, args.steps, seed=args.seed, progress=not args.quiet)
    _save(res.image, args.out)
    info = {"image": args.image, "out": args.out, "outside_max_abs": res.outside_max_abs, "nfe": res.nfe,
            "seam_energy": float(seam_energy(res.image, mask)), "seam_energy_input": float(seam_energy(x, mask)),
            "psnr_inside_vs_target": float(region_psnr(res.image, res.target, mask))}
    if args.figure:
        side_by_side([("image", x), ("mask", mask.expand_as(x) * 2 - 1), ("target", res.target), ("edited", res.image)],
                     args.figure)
    _print(info)
    return 0
