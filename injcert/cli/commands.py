"""Command-line front ends of ``invert``, ``decode``, ``reconstruct`` and ``edit``.

One module for the four image commands: they share their argument vocabulary, input/output checks
and summaries; each command is an ``add_*``/``run_*`` pair of short functions.

Images are read and written as ordinary files (PNG/JPEG in, PNG out) or by bundled-image name;
latents as safetensors. Every command takes ``--model CKPT`` (alias ``--checkpoint``; default: the
shipped model), ``--device``, ``--steps``, ``--method`` where it applies, ``--quiet`` and
``--figure PNG`` for a side-by-side figure. High-resolution images are evaluated in tiles
(``--tile``), bit-identically. stdout holds one JSON record; progress bars and the closing one-line
summary go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from ..errors import ConfigError, InputError, NonConvergenceError

__all__ = [
    "add_invert_arguments", "run_invert", "add_decode_arguments", "run_decode",
    "add_reconstruct_arguments", "run_reconstruct", "add_edit_arguments", "run_edit",
    "load_model_for_cli", "side_by_side",
]

_CORRUPTION_CHOICES = ("box", "freeform", "random", "gaps", "blur", "noise")


# --------------------------------------------------------------------------------------------- helpers
def add_model_argument(p: argparse.ArgumentParser) -> None:
    """``--model CKPT`` (alias ``--checkpoint``): the one spelling of the checkpoint in every command."""
    p.add_argument("--model", "--checkpoint", dest="model", default=None, metavar="CKPT",
                   help="checkpoint file (default: the shipped model injcert/assets/default.ckpt)")


def add_quiet_argument(p: argparse.ArgumentParser) -> None:
    """``--quiet``: the same meaning in every command."""
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or stage messages; print only the result and the one-line summary")


def _common(p: argparse.ArgumentParser, *, steps: bool = True, method: bool = True) -> None:
    add_model_argument(p)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="compute dtype")
    if steps:
        p.add_argument("--steps", type=int, default=50, help="integration steps")
    if method:
        p.add_argument("--method", default="reversible", metavar="METHOD",
                       help="integrator: reversible (bit-exact), fixed_point, ddim, dopri5, leapfrog, "
                            "reversible_heun_xbar")
    p.add_argument("--tile", type=int, default=512, help="evaluate the network in tiles of this size, 0 for none")
    add_quiet_argument(p)


def load_model_for_cli(path: Optional[str], device: str, dtype: torch.dtype, tile: int = 512) -> Any:
    """Load a checkpoint (default: the shipped one), move it, and wrap it for tiled evaluation."""
    from ..io import load_checkpoint
    from ..tasks.tiling import TiledModel

    if path is None:
        from .. import DEFAULT_CHECKPOINT

        path = str(DEFAULT_CHECKPOINT)
    _check_device(device)
    _check_tile(tile)
    model = load_checkpoint(path, device=device)
    check_usable_model(model, f"checkpoint {str(path)!r}")
    model = model.to(dtype)
    if tile and tile > 0:
        return TiledModel(model, tile=tile)
    return model


def _check_device(device: str) -> None:
    from ..io import check_device

    check_device(device)


def _check_tile(tile: Any) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
        raise ConfigError(f"--tile must be an int >= 0 (0: no tiling), got {tile!r}")


def check_usable_model(model: Any, what: str = "checkpoint") -> None:
    """Refuse (one line) a model the commands cannot use: a NaN or infinite parameter or buffer
    (:func:`injcert.registry.check_finite`, the one rule), or weights so large that they overflow."""
    from ..registry import check_finite

    check_finite(model, what)
    big = max((float(t.detach().abs().max()) for t in model.state_dict().values()
               if t.is_floating_point() and t.numel()), default=0.0)
    if big > 1e15:
        raise InputError(f"{what} holds weights as large as {big:.3g}; such weights overflow, it cannot be used")


def _inputs(args: argparse.Namespace) -> list:
    """The command's input files (an output may not be one of them)."""
    from .. import DEFAULT_CHECKPOINT

    found = [getattr(args, k, None) for k in ("image", "latent", "mask", "target", "compare", "model")]
    if getattr(args, "model", None) is None:
        found.append(str(DEFAULT_CHECKPOINT))
    return [f for f in found if isinstance(f, str) and f]


def _finite(t: Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"the model produced NaN or infinite values in {what}; its weights are unusable")


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _load(path: str, model: Any, device: str, dtype: torch.dtype) -> Tensor:
    from ..data.images import load_image

    channels = int(getattr(model, "in_channels", 3))
    x = load_image(path, gray=(channels == 1), dtype=dtype)
    return x.unsqueeze(0).to(device)


def _save(x: Tensor, path: str, inputs: Sequence[str] = ()) -> None:
    from ..data.images import save_image

    save_image(x.detach().float().cpu().clamp(-1, 1), path, inputs=inputs)


def side_by_side(panels: Sequence[tuple], path: str, *, inputs: Sequence[str] = ()) -> Path:
    """Save a row of labelled images (C×H×W or 1×C×H×W in [-1, 1]) as one PNG.

    A panel ``(title, img)`` is drawn as an image; ``(title, a, b)`` is the per-pixel error map
    ``max_c |a - b|`` on a log colour scale with its colorbar (exact zeros drawn in white and
    counted in the title), which makes a round-trip error visible where the images look alike.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3 * len(panels) + 0.6 * sum(len(p) == 3 for p in panels), 3.3))
    for i, panel in enumerate(panels):
        title, img = panel[0], panel[1]
        ax = fig.add_subplot(1, len(panels), i + 1)
        if len(panel) == 3:
            _error_panel(fig, ax, title, img, panel[2])
            continue
        a = img.detach().float().cpu()
        a = a[0] if a.ndim == 4 else a
        a = ((a.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
        ax.imshow(a[..., 0] if a.shape[-1] == 1 else a, cmap="gray" if a.shape[-1] == 1 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    from ..io import save_figure

    return save_figure(fig, path, inputs=inputs, dpi=100)


def _error_panel(fig: Any, ax: Any, title: str, a: Tensor, b: Tensor) -> None:
    import matplotlib as mpl
    import numpy as np
    from matplotlib.colors import LogNorm

    e = (a.detach().double().cpu() - b.detach().double().cpu()).abs()
    e = e[0] if e.ndim == 4 else e
    e = e.amax(dim=0).numpy()
    nz = e[e > 0]
    zeros = int((e == 0).sum())
    if nz.size == 0:
        ax.imshow(np.full_like(e, 0.93), cmap="gray", vmin=0, vmax=1)
        ax.text(0.5, 0.5, "0\n(identical)", transform=ax.transAxes, ha="center", va="center", fontsize=12)
        ax.set_title(f"{title}\n0 at every pixel (bit-exact)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    lo, hi = float(nz.min()), float(nz.max())
    lo = min(max(lo, hi * 1e-8), hi / 10)  # at least a decade, at most eight
    cmap = mpl.colormaps["magma"].with_extremes(bad="white")  # exact zeros (masked) in white
    im = ax.imshow(np.ma.masked_equal(e, 0.0), cmap=cmap, norm=LogNorm(vmin=lo, vmax=hi))
    extra = f", {zeros} px exactly 0 (white)" if zeros else ""
    ax.set_title(f"{title}\nmax {hi:.3g}{extra}", fontsize=9)
    ax.axis("off")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label("max over channels |error| (log scale)", fontsize=7)
    cb.ax.tick_params(labelsize=7)


def _print(obj: dict) -> None:
    print(json.dumps(obj, indent=None, default=float))


def _summary(command: str, text: str) -> None:
    """The closing line on stderr (stdout holds the JSON record)."""
    from .._progress import summary

    summary(command, text, stream=sys.stderr)


def _load_mask(path: str, x: Tensor, dt: torch.dtype) -> Tensor:
    """A mask file as N×1×H×W in {0, 1}: a pixel is set where **any** channel is brighter than 50 %
    (white, but also pure red (255, 0, 0) or any saturated colour); gray masks are unchanged."""
    from ..data.images import load_image

    mk = load_image(path, dtype=dt).unsqueeze(0).to(x.device)
    if mk.shape[-2:] != x.shape[-2:]:
        raise InputError(f"mask {tuple(mk.shape[-2:])} and image {tuple(x.shape[-2:])} differ in size")
    return (mk.amax(dim=1, keepdim=True) > 0).to(dt)


# --------------------------------------------------------------------------------------------- invert
def add_invert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image file (PNG/JPEG) or bundled image name")
    p.add_argument("--out", required=True, help="latent file to write (.safetensors)")
    p.add_argument("--figure", default=None,
                   help="also write a PNG: image | latent | decoded | round-trip error map (log scale)")
    _common(p)


def run_invert(args: argparse.Namespace) -> int:
    from ..solvers import SOLVERS
    from ..tasks.invert import check_decodable, decode, encode

    if args.method not in SOLVERS:
        raise ConfigError(f"unknown --method {args.method!r}; choices: {sorted(SOLVERS)}")
    dt = _dtype(args.dtype)
    inputs = _inputs(args)
    model = load_model_for_cli(args.model, args.device, dt, args.tile)
    x = _load(args.image, model, args.device, dt)
    check_decodable(model, args.method, args.steps)  # a latent `decode` would refuse is never written
    with torch.no_grad():
        lat = encode(model, x, steps=args.steps, method=args.method, progress=not args.quiet)
        _finite(lat.to_tensor(), "the latent")
        info = {"image": args.image, "latent": args.out, "shape": list(x.shape), "method": args.method,
                "steps": args.steps, "nfe": lat.nfe}
        back = None
        if args.figure or args.method == "fixed_point":
            try:
                back = decode(model, lat, progress=not args.quiet)
            except NonConvergenceError as exc:
                raise InputError(f"the {args.method} latent would not decode ({str(exc).splitlines()[0]}); "
                                 "nothing written: use more steps") from None
            _finite(back, "the round trip")
        if args.figure:
            info["round_trip_max_abs"] = float((back - x).abs().max())
            z = lat.to_tensor()
            from ..io import check_output_path

            check_output_path(args.out, inputs=inputs)
            side_by_side([("image", x), ("latent x_T (scaled)", z / z.abs().max().clamp_min(1e-12)),
                          ("decoded", back), ("|decoded - image|", back, x)], args.figure, inputs=inputs)
        lat.save(args.out, inputs=inputs)
    _print(info)
    text = f"wrote {args.out} ({args.method}, {args.steps} steps, {lat.nfe} NFE)"
    if args.figure:
        text += f" and {args.figure}; round-trip max |error| = {info['round_trip_max_abs']:.3g}"
    _summary("invert", text)
    return 0


# --------------------------------------------------------------------------------------------- decode
def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("latent", help="latent file written by `invert`")
    p.add_argument("--out", required=True, help="image file to write (PNG)")
    p.add_argument("--compare", default=None, help="an image to compare the result with (prints the max-abs difference)")
    p.add_argument("--force", action="store_true",
                   help="decode even if the latent was made by another model (its weights' fingerprint differs) "
                        "or records none")
    _common(p, steps=False, method=False)
    p.set_defaults(dtype=None)  # a latent decodes in the dtype it was encoded in; --dtype may only confirm it
    for action in p._actions:
        if action.dest == "dtype":
            action.help = "compute dtype (default: the latent's own, which --dtype may only confirm)"


def run_decode(args: argparse.Namespace) -> int:
    from ..tasks.invert import Latent, decode


    inputs = _inputs(args)
    lat = Latent.load(args.latent)
    if args.dtype is not None and _dtype(args.dtype) != lat.dtype:
        raise ConfigError(f"--dtype {args.dtype} conflicts with the latent, which was encoded in "
                          f"{str(lat.dtype).replace('torch.', '')} (a latent decodes in its own dtype)")
    if lat.model_sha256 is None and not args.force:
        raise InputError(f"latent {args.latent!r} records no model fingerprint (an older injcert wrote it); "
                         "pass --force to decode it with this checkpoint anyway")
    model = load_model_for_cli(args.model, args.device, lat.dtype, args.tile)
    lat.check_model(model, force=args.force)
    lat = _latent_to(lat, args.device)
    with torch.no_grad():
        x = decode(model, lat, progress=not args.quiet, force=args.force)
    _finite(x, "the decoded image")
    ref = _load(args.compare, model, args.device, lat.dtype) if args.compare else None  # read before writing
    _save(x, args.out, inputs)
    info: dict = {"latent": args.latent, "image": args.out, "method": lat.method, "steps": lat.steps}
    if ref is not None:
        if ref.shape == x.shape:
            info["max_abs_vs_compare"] = float((x - ref).abs().max())
    _print(info)
    text = f"wrote {args.out} ({tuple(x.shape[-2:])[0]}x{tuple(x.shape[-2:])[1]}, {lat.method}, {lat.steps} steps)"
    if "max_abs_vs_compare" in info:
        text += f"; max |difference| vs {args.compare} = {info['max_abs_vs_compare']:.3g}"
    elif args.compare:
        text += f"; {args.compare} has another shape, not compared"
    _summary("decode", text)
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
    p.add_argument("--mask", default=None,
                   help="the image is already corrupted: this PNG is set (white, or any channel > 50%%) where observed")
    p.add_argument("--ratio", type=float, default=None, help="missing ratio of `random` (default: 0.5)")
    p.add_argument("--sigma", type=float, default=None,
                   help="sigma of `blur` in pixels (default: 2.0) or of `noise` in [-1, 1] units (default: 0.1)")
    p.add_argument("--width", type=float, default=None,
                   help="stroke width of `freeform` (default: 6.0) or gap width of `gaps` (default: 2.0), in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruption and of the starting noise")
    p.add_argument("--corrupted-out", default=None, help="also write the corrupted observation (PNG)")
    p.add_argument("--mask-out", default=None,
                   help="also write the observation mask (PNG, white where observed as is): with --corrupted-out, "
                        "the input of `reconstruct OBSERVED --mask MASK`")
    p.add_argument("--figure", default=None, help="also write a PNG: clean | observed | reconstruction")
    p.add_argument("--start", choices=["auto", "estimate", "observation", "noise"], default="auto",
                   help="where the flow starts: an estimate at an intermediate noise level (auto: for missing pixels "
                        "the model's restorer R(c) when it has one, its mean with the classical fill for a large hole, "
                        "else the classical estimate), "
                        "the noisy observation itself (noise only), or pure noise at t_max (default: auto)")
    p.add_argument("--sigma-start", type=float, default=None,
                   help="noise level varsigma of the start from the estimate (default: from the hole size)")
    p.add_argument("--levels", default="auto",
                   help="coarse-to-fine levels for missing pixels: an int, or auto: halve until every missing "
                        "pixel is within reach of the network (default: auto)")
    p.add_argument("--no-gate", dest="gate", action="store_false",
                   help="keep the flow even where it restores observed pixels hidden in the shape of the hole "
                        "worse than its classical start, or (noise) where Stein's unbiased estimate of its error "
                        "is higher than BM3D's (default: the flow is kept only where it does better)")
    _common(p)


def _levels(v: str) -> Union[int, str]:
    if v == "auto":
        return v

    try:
        n = int(v)
    except ValueError:
        raise ConfigError(f"--levels must be an int >= 0 or 'auto', got {v!r}") from None
    if n < 0:
        raise ConfigError(f"--levels must be an int >= 0 or 'auto', got {v!r}")
    return n


def _check_reconstruct_options(args: argparse.Namespace) -> None:
    """Options the reconstruction would reject deep inside (or overflow on), checked first."""
    import math


    s0 = args.sigma_start
    if s0 is not None and not (math.isfinite(s0) and s0 > 0):
        raise ConfigError(f"--sigma-start must be a finite number > 0, got {s0!r}")
    if args.start == "observation" and (args.mask or args.corruption != "noise"):
        raise ConfigError("--start observation needs --corruption noise (an observation with additive noise only)")
    if args.corruption == "noise" and not args.mask and args.sigma is not None and not args.sigma <= 10.0:
        raise ConfigError(f"--sigma of the noise must be at most 10 (images are in [-1, 1]), got {args.sigma!r}")


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
    from ..tasks.reconstruct import reconstruct_full

    dt = _dtype(args.dtype)
    inputs = _inputs(args)
    levels = _levels(args.levels)
    _check_reconstruct_options(args)
    if not args.mask:
        # the user's corruption options, validated before anything is loaded (an InjcertError)
        corruption = make_corruption(args.corruption, **_corruption_params(args))
    model = load_model_for_cli(args.model, args.device, dt, args.tile)
    x = _load(args.image, model, args.device, dt)
    clean: Optional[Tensor] = None
    operator = None
    if args.mask:
        m1 = _load_mask(args.mask, x, dt)
        y, m = x * m1, m1
    else:
        clean = x
        if args.corruption == "blur" and args.sigma is not None and args.sigma > max(x.shape[-2:]):
            raise ConfigError(f"--sigma {args.sigma:g} of a blur exceeds the image size {tuple(x.shape[-2:])}")
        obs = corruption.sample(x.cpu(), args.seed)
        y, m, operator = obs.y.to(args.device), obs.m.to(args.device), obs.operator
    with torch.no_grad():
        rec = reconstruct_full(model, y, m, steps=args.steps, seed=args.seed, method=args.method, start=args.start,
                               sigma_start=args.sigma_start, levels=levels, gate=args.gate,
                               blur_sigma=args.sigma if (args.sigma is not None and args.corruption == "blur") else 2.0,
                               operator=(lambda v: operator(v.cpu()).to(v.device)) if operator else None,
                               progress=not args.quiet)
    _finite(rec.image, "the reconstruction")
    info = _reconstruct_info(args, rec, y, m, clean, dt)
    _write_reconstruction(args, rec, y, m, clean, dt, inputs)
    _print(info)
    text = f"wrote {args.out}" + "".join(f", {o}" for o in (args.corrupted_out, args.mask_out) if o) + \
        (f", {args.figure}" if args.figure else "") + f" ({info['corruption']}, {args.steps} steps, {rec.nfe} NFE)"
    if "psnr" in info:
        text += f"; PSNR {info['psnr']:.2f} dB (observed {info['psnr_observed']:.2f} dB)"
    _summary("reconstruct", text)
    return 0


def _reconstruct_info(args: argparse.Namespace, rec: Any, y: Tensor, m: Tensor, clean: Optional[Tensor],
                      dt: torch.dtype) -> dict:
    """The JSON summary of a reconstruction: the hold-out scores, the forward residual and, against the
    clean image (a synthetic corruption), the PSNRs."""
    from ..metrics import psnr, region_psnr

    info: dict = {"image": args.image, "out": args.out, "corruption": "mask" if args.mask else args.corruption,
                  "steps": args.steps, "nfe": rec.nfe}
    if rec.holdout is not None:
        h = rec.holdout
        if math.isnan(h.start_ssim):  # the noise gate: Stein's unbiased estimates, no SSIM
            info["sure_rms"] = {"start": h.start, "flow": h.flow, "flow_kept": rec.flow_kept}
        else:
            info["holdout_rms"] = {"start": h.start, "flow": h.flow, "flow_kept": rec.flow_kept}
            info["holdout_ssim"] = {"start": h.start_ssim, "flow": h.flow_ssim}
            if not math.isnan(h.restorer):  # a pyramid start that R(c) did not beat
                info["holdout_rms"]["restorer"], info["holdout_ssim"]["restorer"] = h.restorer, h.restorer_ssim
    p = rec.pyramid_holdout
    if p is not None:  # a pyramid start that R(c) beat: the image was restored from R(c)
        info["pyramid_holdout_rms"] = {"start": p.start, "flow": p.flow, "restorer": p.restorer}
    if rec.residual is not None:
        info["forward_residual"] = [float(v) for v in rec.residual]
    if clean is not None:
        region = (m[:, :1] < 1).to(dt)
        info["psnr"] = float(psnr(rec.image, clean))
        info["psnr_observed"] = float(psnr(y, clean))
        if float(region.sum()) > 0 and float(region.sum()) < region.numel():
            info["psnr_region"] = float(region_psnr(rec.image, clean, region))
    return info


def _write_reconstruction(args: argparse.Namespace, rec: Any, y: Tensor, m: Tensor, clean: Optional[Tensor],
                          dt: torch.dtype, inputs: Any) -> None:
    """The reconstruction and the optional observation, mask and figure, every path checked first."""
    from ..io import check_output_path

    for out in (args.out, args.corrupted_out, args.figure, args.mask_out):  # all checked before the first is written
        if out:
            check_output_path(out, inputs=inputs)
    _save(rec.image, args.out, inputs)
    if args.corrupted_out:
        _save(y, args.corrupted_out, inputs)
    if args.mask_out:
        _save((m[:, :1] >= 1).to(dt) * 2 - 1, args.mask_out, inputs)
    if args.figure:
        panels = ([("clean", clean)] if clean is not None else []) + [("observed", y), ("reconstruction", rec.image)]
        side_by_side(panels, args.figure, inputs=inputs)


# --------------------------------------------------------------------------------------------- edit
def add_edit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image to edit (file or bundled name)")
    p.add_argument("--mask", required=True, help="PNG, set (white, or any channel > 50%%) inside the region to edit")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", default=None, help="target image (PNG) whose content goes inside the mask")
    target.add_argument("--op", choices=("remove", "recolor", "move"), default=None,
                        help="a named edit: remove (fill the region with what the model believes is there, plus "
                             "the texture of its surroundings), recolor (tint it red), move (put the content 16 px to "
                             "the left of the region into it)")
    p.add_argument("--no-texture", action="store_false", dest="texture",
                   help="with --op remove: the smooth fill alone, without the surroundings' texture")
    p.add_argument("--strength", type=float, default=0.5, help="edit strength in (0, 1]")
    p.add_argument("--start", choices=("encoded", "noised", "luma"), default="encoded",
                   help="the inside starts from the target's own hidden state (encoded, default: the target's "
                        "detail is kept), from the noised target (noised: SDEdit, regenerates the region) or the "
                        "same with one noise shared by the channels (luma: grain without colour speckle)")
    p.add_argument("--noise-scale", type=float, default=0.0, dest="noise_scale",
                   help="with --start noised or luma: the start noise, a fraction of the SDEdit start (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise added to the target (--start noised) and of the texture (--op remove)")
    p.add_argument("--out", required=True, help="edited image (PNG)")
    p.add_argument("--figure", default=None, help="also write a PNG: image | mask | target | edited")
    _common(p, method=False)


def run_edit(args: argparse.Namespace) -> int:
    from ..metrics import region_psnr, seam_energy
    from ..tasks.edit import edit_full

    if not (isinstance(args.strength, float) and 0.0 < args.strength <= 1.0):
        raise ConfigError(f"--strength must lie in (0, 1], got {args.strength!r}")
    dt = _dtype(args.dtype)
    inputs = _inputs(args)
    model = load_model_for_cli(args.model, args.device, dt, args.tile)
    x = _load(args.image, model, args.device, dt)
    mask = _load_mask(args.mask, x, dt)
    if not bool(mask.any()):
        raise InputError(f"mask {args.mask!r} is empty: no pixel to edit (set the region to edit to white)")
    target: Any = args.op
    if args.target:
        target = _load(args.target, model, args.device, dt)
        if target.shape != x.shape:
            raise InputError(f"target {tuple(target.shape)} and image {tuple(x.shape)} differ in shape")
    with torch.no_grad():
        res = edit_full(model, x, mask, target, args.strength, args.steps, seed=args.seed, progress=not args.quiet,
                        start=args.start, noise_scale=args.noise_scale, texture=args.texture)
    _finite(res.image, "the edited image")
    info = {"image": args.image, "out": args.out, "outside_max_abs": res.outside_max_abs, "nfe": res.nfe,
            "seam_energy": float(seam_energy(res.image, mask)), "seam_energy_input": float(seam_energy(x, mask)),
            "psnr_inside_vs_target": float(region_psnr(res.image, res.target, mask))}
    from ..io import check_output_path

    for out in (args.out, args.figure):  # every output checked before the first is written
        if out:
            check_output_path(out, inputs=inputs)
    _save(res.image, args.out, inputs)
    if args.figure:
        side_by_side([("image", x), ("mask", mask.expand_as(x) * 2 - 1), ("target", res.target), ("edited", res.image)],
                     args.figure, inputs=inputs)
    _print(info)
    _summary("edit", f"wrote {args.out}" + (f" and {args.figure}" if args.figure else "")
             + f" ({args.op or 'target'}, strength {args.strength:g}, {args.steps} steps, {res.nfe} NFE); "
               f"outside-mask max |change| = {res.outside_max_abs:g}")
    return 0
