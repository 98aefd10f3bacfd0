r"""Side-by-side comparison against the baselines: ``python -m injcert bench``.

Long because ``bench`` is one report: its sections (round trip, sampling, reconstruction, editing)
share the images, the masks and the table writer; each section is its own function.

One run, on the same held-out images and the same corruption masks for every method:

* **Round trip** $\lVert \mathrm{decode}(\mathrm{encode}(x)) - x\rVert$ (max-abs and MSE), network
  evaluations (NFE) and wall time for naive DDIM inversion (``ddim``), torchdiffeq ``dopri5``
  backward integration, the certified ``fixed_point`` inverse and the bit-exact ``reversible``
  scheme, at 10/20/50/100 steps, in float32 and float64.
* **Sampling accuracy** of each integrator against a tight dopri5 reference, with dopri5 itself at
  several tolerances so that methods can be compared at equal NFE — on the analytic mixture
  problem (:class:`injcert.model.analytic.AnalyticMixtureScore`, exact score) and on the model.
* **Reconstruction** PSNR/SSIM overall and PSNR inside the corrupted region, per corruption type,
  against the classical baselines of :data:`BASELINES` (:mod:`injcert.tasks.classical`):
  ``inpaint_biharmonic`` for missing pixels, ``richardson_lucy``, ``wiener``,
  ``richardson_lucy_local`` and ``lsmr_local`` (true PSF; the last two for the local operator) for
  the blurred region,
  ``denoise_nl_means``, ``denoise_tv_chambolle`` and ``bm3d`` (true sigma) for noise.
* **Editing**: outside-mask error of the bit-exact edit with trajectory reset
  (:func:`injcert.tasks.edit.edit_full`, Theorem 7) against the same edit done with naive DDIM
  inversion (encode with DDIM, replace the inside, decode with DDIM, no reset).

The model is :data:`injcert.DEFAULT_CHECKPOINT` when it exists (or ``--checkpoint``); otherwise a
small freshly initialised :class:`~injcert.model.unet.CondUNet` is used and every table says so —
an untrained network gives meaningless reconstruction numbers, but the round-trip, NFE and
background-preservation columns are properties of the integrators and hold for any network.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._progress import Stages, bar, summary
from ..data.corruptions import expand_map, make_corruption
from ..data.grid import square_image
from ..data.images import HELDOUT_IMAGES, load_image
from ..errors import ArgumentError, ConfigError, NonConvergenceError
from ..io import atomic_write, load_checkpoint, save_figure
from ..metrics import background_preservation, psnr, region_mse, region_psnr, seam_energy, ssim
from ..model.analytic import AnalyticMixtureScore, flow_map
from ..model.unet import CondUNet
from ..solvers import Dopri5, get_solver, make_grid, probability_flow_field
from ..tasks.classical import classical_estimate
from ..tasks.edit import EDIT_STARTS, edit_full, make_target
from ..tasks.reconstruct import reconstruct_full
from .commands import add_model_argument, add_quiet_argument

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
    "markdown_table",
    "add_arguments",
    "run",
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
    from .. import DEFAULT_CHECKPOINT

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
    """``"restorer; flow kept 2/4"``: the start estimates of a method's runs and how often the gate
    kept the flow (``"flow"`` where no gate ran); empty for the baselines."""
    if not runs:
        return ""
    starts = ", ".join(sorted({str(e or "noise") for e, _ in runs}))
    gated = [k for _, k in runs if k is not None]
    flow = f"flow kept {sum(gated)}/{len(gated)}" if gated else "flow"
    return f"{starts}; {flow}"


def _region(m: Tensor) -> Tensor:
    return (m[:, :1] < 0.5).to(m.dtype)


def reconstruction_rows(model: nn.Module, batches: Sequence[Tensor], steps: int, seed: int = 0,
                        corruptions: Sequence[str] = tuple(CORRUPTION_SETTINGS), keep: Optional[dict] = None,
                        baselines: Optional[Dict[str, Tuple[str, ...]]] = None,
                        options: Optional[Dict[str, Any]] = None,
                        variants: Optional[Dict[str, Dict[str, Any]]] = None) -> List[ReconRow]:
    """Ours vs the classical baselines per corruption, same images and same masks.

    ``baselines`` overrides :data:`BASELINES` per corruption (e.g. without ``bm3d`` at 1024², where
    it takes minutes per image); ``options`` are passed to
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
                with torch.no_grad():
                    rec = reconstruct_full(model, obs.y, obs.m, steps, seed, operator=obs.operator,
                                           blur_sigma=blur_sigma, **{**(options or {}), **extra})
                results.append((label, rec.image, time.perf_counter() - t0))
                sources.setdefault(label, []).append((rec.estimate_method, rec.flow_kept))
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


def _canvas(w: float, h: float):
    # matplotlib is imported lazily: it is heavy, and only the figures need it (not the parser, not
    # the library functions above)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _show(ax: Any, x: Tensor, title: str) -> None:
    img = ((x.detach().to(torch.float64).clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
    ax.imshow(img if img.shape[-1] == 3 else img[..., 0], cmap=None if img.shape[-1] == 3 else "gray")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _figure_round_trip(rt: Dict[Tuple[str, str, int], Dict[str, float]], steps: Sequence[int], path: Path,
                       methods: Sequence[str] = ROUND_TRIP_METHODS) -> None:
    fig = _canvas(7.5, 3.0)
    axes = fig.subplots(1, 2)
    for ax, dt in zip(axes, _DTYPES):
        for m in methods:
            ys = [max(rt[(m, dt, n)]["max_abs"], 1e-18) for n in steps]
            ax.semilogy(steps, ys, marker="o", label=m)
        ax.set_title(f"round trip max-abs error ({dt}); 1e-18 = exact", fontsize=8)
        ax.set_xlabel("steps", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _figure_recon(keep: dict, path: Path) -> None:
    names = [k for k in CORRUPTION_SETTINGS if k in keep]
    fig = _canvas(6.5, 1.6 * len(names) + 0.2)
    axes = fig.subplots(len(names), 4, squeeze=False)
    for r, name in enumerate(names):
        x, y, base, ours, _m, label = keep[name]
        for c, (img, title) in enumerate(((x[0], "clean"), (y[0], name), (base[0], label), (ours[0], "ours"))):
            _show(axes[r][c], img, title)
    fig.tight_layout()
    save_figure(fig, path)


def _figure_edit(keep: dict, path: Path) -> None:
    x, target, ours, naive, mask = keep["edit"]
    out = (1 - mask[0])
    fig = _canvas(7.5, 1.9)
    axes = fig.subplots(1, 5)
    _show(axes[0], x[0], "original")
    _show(axes[1], target[0], "target")
    _show(axes[2], ours[0], "ours")
    _show(axes[3], naive[0], "naive DDIM")
    diff = ((naive[0] - x[0]).abs().amax(0) * out[0]).cpu().numpy()
    axes[4].imshow(diff, cmap="magma")
    axes[4].set_title(f"|naive - x| outside (max {diff.max():.2g})", fontsize=7)
    axes[4].axis("off")
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m injcert bench``."""
    parser.add_argument("--out", default="bench_out", help="output folder (default: bench_out)")
    add_model_argument(parser)
    parser.add_argument("--device", default="cpu",
                        help="torch device; the comparison runs on the CPU only (for GPU numbers see "
                             "`make gpu-check`), so anything but cpu is refused (default: cpu)")
    parser.add_argument("--images", nargs="+", default=None, metavar="NAME",
                        help="held-out images (default: all of them; --quick: the first two)")
    parser.add_argument("--size", type=int, default=None,
                        help="centre crop resized to SIZE x SIZE (default: 32; --quick: 16)")
    parser.add_argument("--full", action="store_true", help="full resolution instead of --size crops (slow on CPU)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, metavar="N",
                        help="step counts of the round-trip and sampling tables (default: 10 20 50 100; --quick: 10 20)")
    parser.add_argument("--recon-steps", type=int, default=None,
                        help="steps of reconstruction and editing (default: 20; --quick: 5)")
    parser.add_argument("--methods", nargs="+", default=list(ROUND_TRIP_METHODS), choices=list(ROUND_TRIP_METHODS),
                        metavar="METHOD", help=f"round-trip integrators (default: {' '.join(ROUND_TRIP_METHODS)})")
    parser.add_argument("--dopri5-tol", type=float, default=None,
                        help="rtol = atol of the dopri5 round trip (default: 1e-4; --quick: 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of corruptions and noise (default: 0)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test defaults: 2 images, 16x16, steps 10 20, 5 reconstruction/editing steps, "
                        "dopri5 tolerance 1e-3 (explicit options still win)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["roundtrip", "sampling", "reconstruction", "editing"],
                        help="sections to leave out (default: none)")
    add_quiet_argument(parser)


@dataclass
class _Bench:
    """Settings and shared state of one ``bench`` run (what the sections below read and append to)."""

    model: nn.Module
    batches: List[Tensor]
    out: Path
    quiet: bool
    seed: int
    steps: List[int]
    rsteps: int
    dtol: float
    methods: List[str]
    md: List[str]
    key: List[str]

    def emit(self, title: str, table: str, note: str = "") -> None:
        """Print (unless quiet) and record one section of ``results.md``."""
        block = f"## {title}\n\n{table}\n" + (f"\n{note}\n" if note else "")
        if not self.quiet:
            print(block)
        self.md.append(block)


def _options(args: argparse.Namespace) -> Tuple[List[str], int, List[int], int, float, List[str]]:
    """``(images, size, steps, recon_steps, dopri5_tol, methods)`` from the arguments and --quick, checked."""
    q = bool(args.quick)
    images = list(args.images) if args.images else list(HELDOUT_IMAGES[:2] if q else HELDOUT_IMAGES)
    size = args.size if args.size is not None else (16 if q else 32)
    steps = list(args.steps) if args.steps else ([10, 20] if q else [10, 20, 50, 100])
    rsteps = args.recon_steps if args.recon_steps is not None else (5 if q else 20)
    dtol = args.dopri5_tol if args.dopri5_tol is not None else (1e-3 if q else 1e-4)
    methods = [m for m in ROUND_TRIP_METHODS if m in args.methods]
    if any(n < 1 for n in steps) or rsteps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps} and --recon-steps {rsteps}")
    if not args.full and size < 8:
        raise ConfigError(f"--size must be at least 8, got {size}")
    return images, size, steps, rsteps, dtol, methods


def _round_trip_table(b: _Bench) -> Tuple[Dict[Tuple[str, str, int], Dict[str, float]], List[list], Any]:
    """Every round trip of ``b.methods`` × dtypes × ``b.steps``: ``(results by key, table rows, bar)``;
    the caller closes the progress bar (after printing the table)."""
    rt: Dict[Tuple[str, str, int], Dict[str, float]] = {}
    rows = []
    inner = bar(desc="bench: round trips", total=len(_DTYPES) * len(b.methods) * len(b.steps), enabled=not b.quiet)
    for dt_name, dt in _DTYPES.items():
        for m in b.methods:
            for n in b.steps:
                inner.update(1)
                if m == "dopri5" and n != b.steps[0]:
                    rt[(m, dt_name, n)] = rt[(m, dt_name, b.steps[0])]
                    continue
                agg = [round_trip(b.model, x, m, n, dt, dopri5_tol=b.dtol) for x in b.batches]
                r = {"max_abs": max(a["max_abs"] for a in agg), "mse": sum(a["mse"] for a in agg) / len(agg),
                     "nfe": sum(a["nfe"] for a in agg) / len(agg), "seconds": sum(a["seconds"] for a in agg)}
                rt[(m, dt_name, n)] = r
                rows.append([m, "adaptive" if m == "dopri5" else n, dt_name, r["max_abs"], r["mse"],
                             int(r["nfe"]), r["seconds"]])
    return rt, rows, inner


def _section_round_trip(b: _Bench) -> None:
    """The round-trip table, its figure and its key line."""
    rt, rows, inner = _round_trip_table(b)
    b.emit("Round trip decode(encode(x)) vs x",
           markdown_table(["method", "steps", "dtype", "max-abs err", "MSE", "NFE", "time [s]"], rows),
           "`ddim` = naive DDIM inversion; `dopri5` = torchdiffeq backward integration (rtol = atol = "
           f"{b.dtol:g}, adaptive steps); `failed` = the fixed-point inverse could not certify a step "
           "(h·L ≥ 1, Theorem 2) and raised instead of returning an unverified iterate. "
           "0 = bit-exact.")
    inner.close()  # after the table is printed, as before the split
    _figure_round_trip(rt, b.steps, b.out / "round_trip.png", b.methods)
    b.md.append("![round trip](round_trip.png)\n")
    rev = [v["max_abs"] for (m, _, _), v in rt.items() if m == "reversible"]
    if rev:
        b.key.append(f"reversible round trip max |error| {max(rev):.3g} over {len(rev)} runs")


def _section_sampling(b: _Bench) -> None:
    """Sampling accuracy vs dopri5 on the analytic mixture and on the model (float64)."""
    gen = torch.Generator().manual_seed(b.seed)
    analytic = AnalyticMixtureScore()
    za = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    ref_a = flow_map(analytic, za, analytic.schedule.t_max, 0.0)
    rows_a = sampling_accuracy(analytic, za, b.steps, ref_a)
    net = _as(b.model, torch.float64)
    x = b.batches[0][:1].to(torch.float64)
    zm = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ref_m, _ = _sample(net, zm, "dopri5", 1, rtol=1e-5)
    rows_m = sampling_accuracy(net, zm, b.steps, ref_m)
    rows = [[a[0], a[1], a[2], c[1], c[2]] for a, c in zip(rows_a, rows_m)]
    b.emit("Sampling accuracy vs dopri5 (float64)",
           markdown_table(["method", "NFE (analytic)", "RMS err (analytic)", "NFE (model)", "RMS err (model)"],
                          [[r[0], "failed" if r[1] < 0 else r[1], r[2], "failed" if r[3] < 0 else r[3], r[4]]
                           for r in rows]),
           "Reference: dopri5 at rtol = atol = 1e-10 (analytic: the exact score of a 3-component mixture, "
           "4×1×8×8) and 1e-5 (model, 1 image). Compare rows at equal NFE; dopri5 rows sweep its tolerance.")


def _recon_verdict(rows_r: Sequence[ReconRow]) -> List[str]:
    """Per corruption, whether ours or the best baseline (highest PSNR) has the higher PSNR (one phrase each)."""
    verdict = []
    for name in CORRUPTION_SETTINGS:
        ours = next((r for r in rows_r if r.corruption == name and r.method == "ours"), None)
        bases = [r for r in rows_r if r.corruption == name and r.method != "ours"]
        base = max(bases, key=lambda r: r.psnr) if bases else None
        if ours and base:
            verdict.append(f"{name}: {'ours' if ours.psnr > base.psnr else base.method} higher PSNR "
                           f"({ours.psnr:.2f} vs {base.psnr:.2f} dB)")
    return verdict


def _section_reconstruction(b: _Bench) -> None:
    """The reconstruction table (ours vs the classical baselines), its figure and its key line."""
    keep: dict = {}
    rows_r = reconstruction_rows(b.model, b.batches, b.rsteps, b.seed, keep=keep)
    table = [[r.corruption, r.method, r.psnr, r.ssim, r.psnr_region, r.seconds] for r in rows_r]
    verdict = _recon_verdict(rows_r)
    b.emit(f"Reconstruction ({b.rsteps} steps)",
           markdown_table(["corruption", "method", "PSNR [dB]", "SSIM", "PSNR in region [dB]", "time [s]"], table),
           "Region = the pixels not observed as is (m[0] = 0). PSNR and SSIM are the mean of the per-image "
           "values; PSNR in region pools the region pixels of all images of a batch into one MSE (then the "
           "mean over batches). Verdict per corruption against the best baseline (honest, whichever is higher): " + "; ".join(verdict) + ".")
    _figure_recon(keep, b.out / "reconstruction.png")
    b.md.append("![reconstruction](reconstruction.png)\n")
    wins = sum(1 for v in verdict if v.split(": ", 1)[1].startswith("ours"))
    b.key.append(f"reconstruction: ours higher PSNR on {wins} of {len(verdict)} corruptions")


def _section_editing(b: _Bench) -> None:
    """The background-preservation table of the edit (ours vs naive DDIM), its figure and its key line."""
    keep: dict = {}
    rows_e = editing_rows(b.model, b.batches, b.rsteps, keep=keep)
    b.emit(f"Editing: background preservation ({b.rsteps} steps, strength 0.5, recolor a centred box)",
           markdown_table(["method", "outside max-abs", "outside MSE", "outside PSNR [dB]", "seam energy", "NFE",
                           "time [s]"],
                          [[r.method, r.outside_max_abs, r.outside_mse, r.outside_psnr, r.seam, r.nfe, r.seconds]
                           for r in rows_e]),
           "Ours resets the state outside the mask to the stored bit-exact trajectory (Theorem 7): "
           "outside error exactly 0, PSNR inf.")
    _figure_edit(keep, b.out / "editing.png")
    b.md.append("![editing](editing.png)\n")
    ours = [r for r in rows_e if r.method.startswith("ours")]
    if ours:
        b.key.append(f"edit outside-mask max |change| {max(r.outside_max_abs for r in ours):g}")


_SECTIONS: Tuple[Tuple[str, str, Callable[[_Bench], None]], ...] = (
    ("roundtrip", "round trip", _section_round_trip),
    ("sampling", "sampling accuracy", _section_sampling),
    ("reconstruction", "reconstruction", _section_reconstruction),
    ("editing", "editing", _section_editing),
)
"""The sections of ``bench`` in order: ``(--skip name, progress label, function)``."""


def run(args: argparse.Namespace) -> int:
    """Run the comparison, print the tables and write ``results.md`` and figures into ``--out``."""
    if torch.device(getattr(args, "device", "cpu") or "cpu").type != "cpu":
        raise ConfigError(f"bench runs on the CPU only, got --device {args.device!r} (GPU numbers: make gpu-check)")
    quiet = bool(getattr(args, "quiet", False))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    images, size, steps, rsteps, dtol, methods = _options(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, origin = bench_model(getattr(args, "model", None))
    batches = load_batch(images, None if args.full else size)
    res_txt = "full resolution" if args.full else f"{size}x{size} centre crops"
    md: List[str] = [
        "# injcert side-by-side comparison",
        "",
        f"Model: {origin}. Images: {', '.join(images)} ({res_txt}). Seed {args.seed}. "
        f"Threads: {torch.get_num_threads()}. All methods run on the same images and the same masks.",
        "",
    ]
    b = _Bench(model, batches, out, quiet, args.seed, steps, rsteps, dtol, methods, md, [])
    if not quiet:
        print(md[2] + "\n")
    skip = set(args.skip)
    sections = [s for s, _, _ in _SECTIONS if s not in skip]
    stages = Stages("bench", sections, enabled=not quiet)
    for name, label, section in _SECTIONS:
        if name in skip:
            continue
        stages._bar.set_postfix_str(label)
        section(b)
        stages._bar.update(1)
    stages.close()
    atomic_write(out / "results.md", "\n".join(md).encode())
    summary("bench", f"wrote {out / 'results.md'} and its figures ({len(images)} images, {res_txt})"
            + ("; " + "; ".join(b.key) if b.key else ""))
    return 0
