r"""Side-by-side comparison against the baselines: ``python -m injcert bench``.

The command (its options, its report and figures); the comparisons themselves, shared with the
scripts of ``benchmarks/``, are :mod:`injcert.benchlib`, whose names are re-exported here.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._progress import Stages, bar, summary
from ..benchlib import (BASELINES, CORRUPTION_SETTINGS, ROUND_TRIP_METHODS, SAMPLING_METHODS, TUNING_IMAGES,  # noqa: F401
                        EditRow, ReconRow, _as, _DTYPES, _sample, bench_model, classical_baselines, edit_mask,
                        editing_rows, fallback_model, load_batch, markdown_table, naive_ddim_edit,
                        reconstruction_rows, round_trip, sampling_accuracy, scaled_settings, tuning_observations)
from ..data.corruptions import make_corruption  # noqa: F401  (benchmarks/deblur_iterations.py imports it from here)
from ..data.images import HELDOUT_IMAGES
from ..errors import ConfigError
from ..io import atomic_write, save_figure
from ..model.analytic import AnalyticMixtureScore
from ..solvers import flow_map
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
