r"""The benchmark library: what ``bench`` (:mod:`injcert.cli.compare`) and the scripts of
``benchmarks/`` share. The held-out images and the corruption masks (:func:`load_batch`,
:data:`CORRUPTION_SETTINGS`, :func:`scaled_settings`, :func:`tuning_observations`), the model to
benchmark (:func:`bench_model`, :func:`fallback_model`), and one function per comparison, each
returning rows: the round trip (:func:`round_trip`), sampling accuracy (:func:`sampling_accuracy`),
reconstruction against the classical baselines of :data:`BASELINES` (:func:`reconstruction_rows`),
editing against naive DDIM inversion (:func:`editing_rows`, :func:`naive_ddim_edit`), and the table
writer (:func:`markdown_table`). :mod:`injcert.cli.compare` re-exports every name.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .data.corruptions import expand_map, make_corruption
from .data.grid import square_image
from .data.images import load_image
from .errors import ArgumentError, NonConvergenceError
from .io import load_checkpoint
from .metrics import (background_preservation, colour_grain_ratio, grain_ratio, psnr, region_mse, region_psnr,
                      seam_energy, ssim)
from .model.unet import CondUNet
from .solvers import Dopri5, get_solver, make_grid, probability_flow_field
from .data.classical import classical_estimate
from .tasks.edit import EDIT_STARTS, edit_full, make_target
from .tasks.reconstruct import GATE_OFF, reconstruct_full

__all__ = [
    "ROUND_TRIP_METHODS",
    "SAMPLING_METHODS",
    "CORRUPTION_SETTINGS",
    "scaled_settings",
    "tuning_observations",
    "TUNING_IMAGES",
    "fallback_model",
    "bench_model",
    "load_batch",
    "round_trip",
    "sampling_accuracy",
    "BASELINES",
    "classical_baselines",
    "reconstruction_rows",
    "naive_ddim_edit",
    "editing_rows",
    "edit_mask",
    "grain_cells",
    "save_image_rows",
    "ReconRow",
    "EditRow",
    "markdown_table",
]


ROUND_TRIP_METHODS: Tuple[str, ...] = ("ddim", "dopri5", "fixed_point", "reversible")
"""Integrators compared in the round-trip table (``ddim`` run backwards = naive DDIM inversion)."""

SAMPLING_METHODS: Tuple[str, ...] = ("ddim", "ddim/uniform", "fixed_point", "reversible", "reversible_heun_xbar",
                                     "leapfrog")
"""Fixed-step integrators compared against dopri5 when sampling from noise (``name/grid``; the grid
is geometric in varsigma unless named; ``ddim/uniform`` is DDIM on its other grid, uniform in t)."""

DOPRI5_TOLERANCES: Tuple[float, ...] = (1e-2, 1e-3)
"""dopri5 tolerances (rtol = atol) swept to compare fixed-step methods at equal NFE."""

CORRUPTION_SETTINGS: Dict[str, Dict[str, Any]] = {
    "box": {"min_frac": 0.25, "max_frac": 0.4},
    "freeform": {"strokes": 3},
    "random": {"ratio": 0.5},
    "gaps": {"kind": "scratch", "count": 2},
    "blur": {"sigma": 2.0, "min_frac": 0.4, "max_frac": 0.6},
    "noise": {"sigma": 0.1},
}
"""Corruptions of the reconstruction table and their parameters (pixel sizes scale with the image)."""

TUNING_IMAGES: Tuple[str, ...] = ("coffee", "camera", "rocket", "brick", "grass", "gravel")
"""Training images the reconstruction defaults were chosen on (``benchmarks/pyramid_blend.py``,
``benchmarks/holdout_gate.py``); the held-out images are never used to choose them."""


def scaled_settings(name: str, size: int) -> Dict[str, Any]:
    """:data:`CORRUPTION_SETTINGS` of ``name`` for an image ``size`` pixels wide: stroke and gap widths
    scale with ``size / 64`` (3 and 1.5 pixels at 64², never less)."""
    params = dict(CORRUPTION_SETTINGS[name])
    scale = max(1.0, size / 64)
    if name == "freeform":
        params["width"] = 3.0 * scale
    if name == "gaps":
        params["width"] = 1.5 * scale
    return params


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------------------------
# model and data


def tuning_observations(name: str, size: int, masks: int, images: Sequence[str] = TUNING_IMAGES):
    """Yields ``(x, y, m)`` for ``masks`` masks of corruption ``name`` (:func:`scaled_settings`) on
    each of ``images`` at ``size``², image ``i``'s mask ``k`` drawn with seed ``i + 10 k``: the masks
    the reconstruction defaults were chosen on. Missing pixels of ``y`` are zeroed (they carry
    nothing); a blurred observation is kept whole."""
    for i, x in enumerate(load_batch(images, size)[0].split(1)):
        for k in range(masks):
            obs = make_corruption(name, **scaled_settings(name, size)).sample(x, i + 10 * k)
            yield x, (obs.y if name == "blur" else obs.y * obs.m[:, :1]), obs.m


def pyramid_study(doc: str, one: Any, describe: Any, columns: Sequence[str], summarize: Any) -> None:
    """A study of the coarse-to-fine start on the tuning images (``benchmarks/pyramid_fallback.py``,
    ``benchmarks/pyramid_restorer.py``). Command line: ``CKPT``, ``--sizes``, ``--masks``, ``--steps``,
    ``--images``, ``--corruptions``. For each size and corruption, ``one(model, x, y, m, steps, seed=i)``
    over the masks of :func:`tuning_observations` (``None`` where it does not apply), each printed as
    ``describe(result)`` as it comes; then one table row per size and corruption: the size, the
    corruption, the count and ``summarize(results)``, under ``columns``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(_default_checkpoint()))
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--masks", type=int, default=1, help="masks (seeds) per image")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", nargs="+", default=list(TUNING_IMAGES))
    p.add_argument("--corruptions", nargs="+", default=["box"])
    args = p.parse_args()
    model = load_checkpoint(args.checkpoint)
    rows = []
    for size in args.sizes:
        for corr in args.corruptions:
            got = []
            for i, (x, y, m) in enumerate(tuning_observations(corr, size, args.masks, args.images)):
                with torch.no_grad():
                    r = one(model, x, y, m, args.steps, seed=i)
                if r is not None:
                    got.append(r)
                    print(f"{size} {corr} #{i}: {describe(r)}", flush=True)
            if got:
                rows.append([f"{size}²", corr, len(got)] + list(summarize(got)))
    print(markdown_table(list(columns), rows))


def fallback_model(seed: int = 0) -> nn.Module:
    """A small freshly initialised :class:`~injcert.model.unet.CondUNet` (untrained), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CondUNet(in_channels=3, base_channels=16, channel_mults=(1, 2), blocks_per_level=1,
                         lipschitz_budget=10.0, emb_dim=32)
    return model.eval()


def _default_checkpoint() -> Path:
    # imported at call time, not at module level: read injcert.DEFAULT_CHECKPOINT as it is now
    # (tests and callers may point it elsewhere after this module was imported)
    from . import DEFAULT_CHECKPOINT  # layout: lazy (read injcert.DEFAULT_CHECKPOINT at call time)

    return DEFAULT_CHECKPOINT


def bench_model(checkpoint: Optional[str] = None, *, allow_fallback: bool = True) -> Tuple[nn.Module, str]:
    """The model to benchmark and a one-line description of where it came from.

    Arguments:
        checkpoint: a checkpoint path; ``None`` means :data:`injcert.DEFAULT_CHECKPOINT`.
        allow_fallback: when the (default) checkpoint does not exist, return :func:`fallback_model`
            instead of raising.

    Raises:
        FileNotFoundError: the checkpoint is missing and ``allow_fallback`` is false, or an
            explicitly named checkpoint is missing.
        CheckpointError: the checkpoint exists but cannot be loaded.
    """
    path = Path(checkpoint) if checkpoint is not None else _default_checkpoint()
    if path.is_file():
        return load_checkpoint(path).eval(), f"checkpoint {path.name}"
    if checkpoint is not None or not allow_fallback:
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    return fallback_model(), "UNTRAINED fallback CondUNet (no default checkpoint yet)"


def _as(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    p = next(model.parameters(), None)
    if p is None or p.dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype)


def load_batch(names: Sequence[str], size: Optional[int]) -> List[Tensor]:
    """Held-out images as batches ``N×3×H×W`` in ``[-1, 1]`` (float32).

    ``size`` given: one batch of centre crops resized to ``size × size``; ``None``: full
    resolution, one batch per image.
    """
    if not names:
        raise ArgumentError("need at least one image name")
    if size is not None:
        return [torch.stack([square_image(n, size) for n in names])]
    out = []
    for n in names:
        x = load_image(n, gray=False)
        out.append(x.unsqueeze(0))
    return out


# --------------------------------------------------------------------------------------------
# round trip and sampling


def round_trip(model: nn.Module, x: Tensor, method: str, steps: int, dtype: torch.dtype = torch.float32,
               *, dopri5_tol: float = 1e-5) -> Dict[str, float]:
    """Encode then decode ``x``; returns ``max_abs``, ``mse``, ``nfe`` (encode + decode), ``seconds``.

    ``dopri5`` runs with rtol = atol = ``dopri5_tol`` (its ``steps`` are ignored: adaptive).

    A ``fixed_point`` decode that cannot certify a step (``NonConvergenceError``) gives
    ``max_abs = mse = nan`` and ``failed = 1.0`` — reported, never hidden.
    """
    net = _as(model, dtype)
    xx = x.to(dtype)
    field = probability_flow_field(net)
    grid = make_grid(field.schedule, steps, "geometric")
    solver = Dopri5(rtol=dopri5_tol, atol=dopri5_tol) if method == "dopri5" else get_solver(method)
    t0 = time.perf_counter()
    with torch.no_grad():
        lat = solver.encode(field, xx, grid)
        try:
            out = solver.decode(field, lat, grid)
        except NonConvergenceError:
            return {"max_abs": math.nan, "mse": math.nan, "nfe": float(lat.nfe),
                    "seconds": time.perf_counter() - t0, "failed": 1.0}
    sec = time.perf_counter() - t0
    err = (out.value().to(torch.float64) - xx.to(torch.float64))
    return {"max_abs": float(err.abs().max()), "mse": float(err.pow(2).mean()), "nfe": float(lat.nfe + out.nfe),
            "seconds": sec, "failed": 0.0}


def _sample(model: nn.Module, z: Tensor, method: str, steps: int, rtol: float = 1e-6) -> Tuple[Tensor, int]:
    field = probability_flow_field(model)
    alpha = float(field.schedule.alpha(field.schedule.t_max))
    method, _, kind = method.partition("/")
    solver = Dopri5(rtol=rtol, atol=rtol) if method == "dopri5" else get_solver(method)
    grid = make_grid(field.schedule, steps, kind or "geometric")
    with torch.no_grad():
        try:
            out = solver.decode(field, z / alpha, grid)
        except NonConvergenceError:
            return torch.full_like(z, math.nan), -1
    return out.value(), out.nfe


def sampling_accuracy(model: nn.Module, z: Tensor, steps: Sequence[int], reference: Tensor,
                      ) -> List[Tuple[str, int, float]]:
    """RMS distance to ``reference`` of samples from noise ``z``: rows ``(method, nfe, rms)``.

    Fixed-step methods at each of ``steps``; dopri5 at each of :data:`DOPRI5_TOLERANCES`
    (its row label carries the tolerance). ``nfe = -1`` marks a failed ``fixed_point`` decode.
    """
    rows = []
    for m in SAMPLING_METHODS:
        for n in steps:
            out, nfe = _sample(model, z, m, n)
            rows.append((f"{m} ({n} steps)", nfe, float((out - reference).pow(2).mean().sqrt())))
    for tol in DOPRI5_TOLERANCES:
        out, nfe = _sample(model, z, "dopri5", 1, rtol=tol)
        rows.append((f"dopri5 (tol {tol:g})", nfe, float((out - reference).pow(2).mean().sqrt())))
    return rows


# --------------------------------------------------------------------------------------------
# reconstruction


BASELINES: Dict[str, Tuple[str, ...]] = {
    "box": ("inpaint_biharmonic",),
    "freeform": ("inpaint_biharmonic",),
    "random": ("inpaint_biharmonic",),
    "gaps": ("inpaint_biharmonic",),
    "blur": ("richardson_lucy", "wiener", "richardson_lucy_local", "lsmr_local"),
    "noise": ("denoise_nl_means", "denoise_tv_chambolle", "bm3d"),
}
"""The classical methods run side by side with ours per corruption (:mod:`injcert.tasks.classical`;
the noise methods are given the true sigma, the deblurring ones the true PSF)."""


def classical_baselines(name: str, y: Tensor, m: Tensor, sigma_blur: float = 2.0) -> List[Tuple[str, Tensor]]:
    """Every classical baseline of corruption ``name`` on one batch: ``[(method, x_hat), ...]``."""
    if name not in BASELINES:
        raise ArgumentError(f"no classical baseline for corruption {name!r}; choices: {sorted(BASELINES)}")
    return [classical_estimate(y, m, method, blur_sigma=sigma_blur) for method in BASELINES[name]]


@dataclass
class ReconRow:
    corruption: str
    method: str
    psnr: float
    ssim: float
    psnr_region: float
    seconds: float
    #: what produced the result (ours): the start estimate and in how many images the flow was kept
    source: str = ""


def _source(runs: Sequence[Tuple[Optional[str], Optional[bool]]]) -> str:
    """``"inpaint_biharmonic 1, restorer 3; flow kept 2/4"``: the start estimates of a method's runs
    (with their counts where they differ) and how often the flow shaped the result (:func:`_flow_used`:
    the gate kept it, or ``0/n`` where it started at ``GATE_OFF`` without a gate; ``"flow"`` where it
    ran ungated); empty for the baselines."""
    if not runs:
        return ""
    names = [str(e or "noise") for e, _ in runs]
    kinds = sorted(set(names))
    starts = kinds[0] if len(kinds) == 1 else ", ".join(f"{k} {names.count(k)}" for k in kinds)
    gated = [k for _, k in runs if k is not None]
    flow = f"flow kept {sum(gated)}/{len(gated)}" if gated else "flow"
    return f"{starts}; {flow}"


def _region(m: Tensor) -> Tensor:
    return (m[:, :1] < 0.5).to(m.dtype)


def _ours(model: nn.Module, obs: Any, steps: int, seed: int, per_image: bool,
          options: Dict[str, Any]) -> Tuple[Tensor, List[Tuple[Optional[str], Optional[bool]]]]:
    """Our reconstruction of a batch and, per call, ``(start estimate, flow kept)``: one call per image
    (``per_image``: as a user restores one photograph per call, each image gets its own start check,
    start level and gate decision; the forward operator, which only feeds the audit's residual, is
    the batch's and is left out), or one call for the batch (one decision for all its images)."""
    with torch.no_grad():
        if not per_image:
            rec = reconstruct_full(model, obs.y, obs.m, steps, seed, operator=obs.operator, **options)
            return rec.image, [(_start_name(rec), _flow_used(model, rec))]
        recs = [reconstruct_full(model, obs.y[i:i + 1], obs.m[i:i + 1], steps, seed, **options)
                for i in range(obs.y.shape[0])]
    return torch.cat([r.image for r in recs]), [(_start_name(r), _flow_used(model, r)) for r in recs]


def _start_name(rec: Any) -> Optional[str]:
    """The start estimate's name; ``"restorer over pyramid"`` where $R(c)$ won a pyramid start's hold-out."""
    return rec.estimate_method if rec.pyramid_holdout is None else f"{rec.estimate_method} over pyramid"


def started_from_pyramid(rec: Any) -> bool:
    """Whether a reconstruction started from the coarse-to-fine pyramid: it kept it, or $R(c)$ won the
    pyramid's hold-out (``Reconstruction.pyramid_holdout``) and the image was restored from $R(c)$."""
    return (rec.estimate_method or "").startswith("pyramid") or rec.pyramid_holdout is not None


def _flow_used(model: nn.Module, rec: Any) -> Optional[bool]:
    """Whether the flow shaped the result: the gate's decision where one ran, ``False`` where the
    decode started at :data:`~injcert.tasks.reconstruct.GATE_OFF` without a gate (a blurred region
    while ``BLUR_FLOW`` is off: the result is the start estimate), else ``None``."""
    if rec.flow_kept is not None:
        return rec.flow_kept
    off = float(model.schedule.t_of_varsigma(GATE_OFF))
    return False if rec.estimate is not None and rec.t_start <= off * (1 + 1e-9) else None


def reconstruction_rows(model: nn.Module, batches: Sequence[Tensor], steps: int, seed: int = 0,
                        corruptions: Sequence[str] = tuple(CORRUPTION_SETTINGS), keep: Optional[dict] = None,
                        baselines: Optional[Dict[str, Tuple[str, ...]]] = None,
                        options: Optional[Dict[str, Any]] = None,
                        variants: Optional[Dict[str, Dict[str, Any]]] = None,
                        per_image: bool = True) -> List[ReconRow]:
    """Ours vs the classical baselines per corruption, same images and same masks; ours restores
    each image in a call of its own (``per_image``, the default) or the whole batch in one call.

    ``baselines`` overrides :data:`BASELINES` per corruption (e.g. one method only, for a quick
    check); ``options`` are passed to
    :func:`~injcert.tasks.reconstruct.reconstruct_full` (e.g. ``levels="auto"``); ``variants`` adds
    one row per entry, ``label: options`` (on top of ``options``), for ablations.

    Metrics are averaged over the batches (image-wise PSNR/SSIM; region PSNR pooled per batch).
    ``keep``, if given, receives ``{corruption: (x, y, baseline, ours, m)}`` of the first batch.
    """
    rows: List[ReconRow] = []
    for name in corruptions:
        acc: Dict[str, List[Tuple[float, float, float, float]]] = {}
        sources: Dict[str, List[Tuple[Optional[str], Optional[bool]]]] = {}
        for bi, x in enumerate(batches):
            params = scaled_settings(name, x.shape[-1])
            obs = make_corruption(name, **params).sample(x, seed + bi)
            region = _region(obs.m)
            blur_sigma = params.get("sigma", 2.0) if name == "blur" else 2.0  # the true PSF
            results = []
            for method in (baselines or BASELINES).get(name, BASELINES[name]):
                t0 = time.perf_counter()
                label, base = classical_estimate(obs.y, obs.m, method, blur_sigma=blur_sigma)
                results.append((label, base, time.perf_counter() - t0))
            n_base = len(results)
            for label, extra in {"ours": {}, **(variants or {})}.items():
                t0 = time.perf_counter()
                image, runs = _ours(model, obs, steps, seed, per_image,
                                    {"blur_sigma": blur_sigma, **(options or {}), **extra})
                results.append((label, image, time.perf_counter() - t0))
                sources.setdefault(label, []).extend(runs)
            ours = results[n_base][1]
            for lab, img, sec in results:
                acc.setdefault(lab, []).append((psnr(img, x), ssim(img, x), region_psnr(img, x, region), sec))
            if keep is not None and bi == 0:
                best = max(results[:n_base], key=lambda r: psnr(r[1], x))
                keep[name] = (x, obs.y, best[1], ours, obs.m, best[0])
        for lab, vals in acc.items():
            p, s, r = (sum(v[i] for v in vals) / len(vals) for i in range(3))
            rows.append(ReconRow(name, lab, p, s, r, sum(v[3] for v in vals), _source(sources.get(lab, []))))
    return rows


# --------------------------------------------------------------------------------------------
# editing


def _edit_grid(sched: Any, steps: int, strength: float) -> Tuple[Tensor, float]:
    grid = make_grid(sched, steps, "geometric", t_end=float(strength) * sched.t_max)  # the grid edit_full uses
    return grid, float(grid[-1])


def naive_ddim_edit(model: nn.Module, x0: Tensor, mask: Tensor, target: Tensor, strength: float = 0.5,
                    steps: int = 20, seed: int = 0, noise_scale: float = 0.0,
                    start: str = "encoded") -> Tuple[Tensor, int]:
    """The baseline edit: DDIM-encode to $t_e$, replace the inside by the target's DDIM encoding
    (``start="encoded"``, as :func:`~injcert.tasks.edit.edit_full` by default) or by the noised
    target (``start="noised"``, the same noise as ``edit_full``), DDIM-decode, **no reset** outside.

    Uses the same grid and the same context condition as ``edit_full``; returns ``(image, nfe)``.
    """
    if start not in EDIT_STARTS:
        raise ArgumentError(f"unknown start {start!r}; choices: {list(EDIT_STARTS)}")
    field = probability_flow_field(model)
    grid, s_e = _edit_grid(field.schedule, steps, strength)
    m = (mask > 0.5).to(x0.dtype)
    outside = 1 - m
    cond = (x0 * outside, expand_map(outside))
    solver = get_solver("ddim")
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64) * float(noise_scale)  # as edit_full
    with torch.no_grad():
        lat = solver.encode(field, x0, grid, cond)
        inside = m.bool().expand_as(x0)
        if start == "encoded":
            tenc = solver.encode(field, target.to(x0.dtype), grid, cond)
            inner, extra = tenc.value(), tenc.nfe
        else:
            inner, extra = (target.to(torch.float64) + s_e * eps).to(x0.dtype), 0
        begin = torch.where(inside, inner, lat.value())
        out = solver.decode(field, begin, grid, cond)
    return out.value(), lat.nfe + extra + out.nfe


@dataclass
class EditRow:
    method: str
    outside_max_abs: float
    outside_mse: float
    outside_psnr: float
    seam: float
    nfe: int
    seconds: float


def edit_mask(x: Tensor, frac: float = 0.4) -> Tensor:
    """A centred square edit mask (1 inside) covering ``frac`` of each side."""
    n, _, h, w = x.shape
    mask = torch.zeros(n, 1, h, w, dtype=x.dtype)
    dh, dw = max(1, int(h * frac)), max(1, int(w * frac))
    mask[..., (h - dh) // 2:(h - dh) // 2 + dh, (w - dw) // 2:(w - dw) // 2 + dw] = 1
    return mask


def editing_rows(model: nn.Module, batches: Sequence[Tensor], steps: int, strength: float = 0.5,
                 keep: Optional[dict] = None) -> List[EditRow]:
    """Ours (bit-exact, reset outside) vs naive DDIM inversion on a "recolor" edit of a centred box."""
    acc: Dict[str, List[Tuple[float, float, float, float, int, float]]] = {}
    for bi, x in enumerate(batches):
        mask = edit_mask(x)
        target = make_target(x, mask, "recolor")
        t0 = time.perf_counter()
        with torch.no_grad():
            res = edit_full(model, x, mask, target, strength, steps)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive, nfe_naive = naive_ddim_edit(model, x, mask, target, strength, steps)
        t_naive = time.perf_counter() - t0
        for lab, img, nfe, sec in (("ours (reversible + reset)", res.image, res.nfe, t_ours),
                                   ("naive DDIM inversion", naive, nfe_naive, t_naive)):
            acc.setdefault(lab, []).append((background_preservation(img, x, mask),
                                            region_mse(img, x, mask, outside=True),
                                            region_psnr(img, x, mask, outside=True),
                                            seam_energy(img, mask, x), nfe, sec))
        if keep is not None and bi == 0:
            keep["edit"] = (x, target, res.image, naive, mask)
    rows = []
    for lab, vals in acc.items():
        mse = sum(v[1] for v in vals) / len(vals)
        rows.append(EditRow(lab, max(v[0] for v in vals), mse,
                            math.inf if mse == 0 else 10 * math.log10(4.0 / mse),
                            sum(v[3] for v in vals) / len(vals), int(sum(v[4] for v in vals)),
                            sum(v[5] for v in vals)))
    return rows


# --------------------------------------------------------------------------------------------
# output


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "failed"
        if math.isinf(v):
            return "inf"
        if v == 0.0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-2:
            return f"{v:.2e}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (floats formatted compactly, ``nan`` shown as "failed")."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def grain_cells(image: Tensor, mask: Tensor) -> str:
    """``"grain | colour grain | seam"``: an edit's Markdown cells (:func:`~injcert.metrics.grain_ratio`,
    :func:`~injcert.metrics.colour_grain_ratio`, :func:`~injcert.metrics.seam_energy`)."""
    return (f"{grain_ratio(image, mask):.2f} | {colour_grain_ratio(image, mask):.2f} | "
            f"{float(seam_energy(image, mask)):.4f}")


def save_image_rows(rows: Sequence[Sequence[Tensor]], out: str, scale: int = 3) -> None:
    """Rows of ``C×H×W`` images side by side, one row under the other, enlarged ``scale``× (nearest
    neighbour, so grain stays visible), written as one PNG to ``out``; prints the path."""
    from .data.images import save_image  # layout: lazy (PIL is only needed to write a figure)

    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0], out)
    print(f"wrote {out}")
