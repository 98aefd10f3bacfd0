"""``python -m injcert demo``: the whole pipeline on the bundled images, written to a report folder.

1. every corruption type on three bundled images (``corruptions.png``);
2. the shipped model (or a freshly trained one with ``--train-steps``): its certified Lipschitz
   bound and the certificate (``certificate.md``/``.json``);
3. an exact round trip image → latent → image on a held-out image, next to naive DDIM inversion;
4. a reconstruction of every corruption type on a held-out image, next to the best classical baseline;
5. localized edits (recolor, remove) with the outside-mask error and the seam energy;
6. ``report.md`` tying it together.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .._progress import Stages
from .._progress import summary as say
from ..benchlib import classical_baselines
from ..certify import certify as run_certify
from ..data.corruptions import make_corruption
from ..data.grid import corruption_grid, square_image
from ..io import atomic_directory, atomic_write, load_checkpoint
from ..metrics import colour_grain_ratio, grain_ratio, latent_statistics, psnr, region_psnr, seam_energy, ssim
from ..tasks.edit import edit_full
from ..tasks.invert import decode, encode
from ..tasks.reconstruct import reconstruct_full
from ..theory.lipschitz import lipschitz_bound
from .commands import add_model_argument, add_quiet_argument, side_by_side

__all__ = ["add_arguments", "run", "run_demo"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="report folder")
    add_model_argument(p)
    p.add_argument("--train-steps", type=int, default=0,
                   help="train a fresh model for this many steps instead of loading one (0: load --model)")
    p.add_argument("--size", type=int, default=128, help="side of the held-out crops")
    p.add_argument("--steps", type=int, default=50, help="integration steps of round trips and edits")
    p.add_argument("--reconstruct-steps", type=int, default=50,
                   help="integration steps of reconstructions, from their start level")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--skip-certify", action="store_true", help="do not run the certificate")
    add_quiet_argument(p)


def _log_line(msg: str) -> None:
    """Print a stage line on stdout without breaking a progress bar on stderr."""
    try:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stdout)
    except ImportError:  # pragma: no cover
        print(msg)


def _best_baseline(kind: str, y: torch.Tensor, m: torch.Tensor, x: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The best (by PSNR against the clean image) of the classical baselines of ``kind``
    (:data:`injcert.benchlib.BASELINES`: biharmonic; Richardson–Lucy, Wiener or least squares; nl-means, TV or
    BM3D given the true sigma) — never the corrupted input itself."""
    cands = classical_baselines(kind, y.cpu(), m.cpu(), 2.0)
    name, img = max(cands, key=lambda c: float(psnr(c[1], x.cpu())))
    return name, img.to(y.device)


def run_demo(out: str | Path, *, model_path: str | None = None, train_steps: int = 0, size: int = 128,
             steps: int = 50, device: str = "cpu", certify: bool = True, reconstruct_steps: int = 50,
             log=print, progress: bool = False) -> dict[str, Any]:
    """Run the demo and return its summary (also written to ``out/summary.json``).

    ``log`` receives one line per stage; ``progress`` shows a bar over the stages on stderr."""
    out = Path(out)
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    names = ["corruption grid", "model" + (" and certificate" if certify else ""), "round trip", "reconstruction",
             "editing"]
    stages = Stages("demo", names, enabled=progress)
    # the report is built in a temporary sibling folder and moved into `out` only when complete: a
    # failing demo leaves no partial report, and an earlier report in `out` stays as it was
    try:
        with atomic_directory(out, what="--out") as build:
            def shown(text: str) -> str:
                return text.replace(str(build), str(out))

            result = _run_demo(build, summary, t0, stages, lambda msg: log(shown(msg)), progress,
                               model_path=model_path, train_steps=train_steps, size=size, steps=steps,
                               device=device, certify=certify, reconstruct_steps=reconstruct_steps, shown=shown)
        return result
    finally:
        stages.close()


def _run_demo(out: Path, summary: dict[str, Any], t0: float, stages: Any, log: Any, progress: bool, *,
              model_path: str | None, train_steps: int, size: int, steps: int, device: str, certify: bool,
              reconstruct_steps: int, shown: Any = str) -> dict[str, Any]:
    """The stages of :func:`run_demo` in order (numbered as in the module docstring); fills ``summary``."""
    summary["size"] = size
    _stage_corruptions(out, stages, log)
    model = _stage_model(out, summary, stages, log, model_path=model_path, train_steps=train_steps, steps=steps,
                         device=device, certify=certify)
    x = _stage_round_trip(out, summary, stages, log, model, size=size, steps=steps, device=device)
    _stage_reconstruction(out, summary, stages, log, model, size=size, reconstruct_steps=reconstruct_steps,
                          device=device)
    _stage_editing(out, summary, stages, log, model, x, size=size, steps=steps, device=device)
    summary.update(json.loads(shown(json.dumps(summary))))  # paths as they will be, not the build folder's
    _write_report(out, summary, t0, log)
    return summary


def _stage(stages: Any, detail: str) -> None:
    """Show ``detail`` next to the stage bar."""
    stages._bar.set_postfix_str(detail)


def _stage_corruptions(out: Path, stages: Any, log: Any) -> None:
    """Stage 1: every corruption type on three bundled images."""
    _stage(stages, "corruption grid")
    corruption_grid(out / "corruptions.png")
    stages._bar.update(1)
    log(f"[1/5] corruption grid -> {out / 'corruptions.png'}")


def _stage_model(out: Path, summary: dict[str, Any], stages: Any, log: Any, *, model_path: str | None,
                 train_steps: int, steps: int, device: str, certify: bool) -> Any:
    """Stage 2: load (or train) the model, its certified Lipschitz bound and, unless skipped, the certificate."""
    # imported here, not at module level: DEFAULT_CHECKPOINT is read as it is now (callers and tests may
    # point it elsewhere), and tasks.train (torch.distributed, DDP) is needed only with --train-steps
    from .. import DEFAULT_CHECKPOINT

    _stage(stages, "training" if train_steps > 0 else "model")
    if train_steps > 0:
        from ..tasks.train import TrainConfig, train

        cfg = TrainConfig.from_dict({"steps": train_steps, "checkpoint_every": train_steps})
        ckpt = train(cfg, out / "model.ckpt", device=device, progress=False)
    else:
        ckpt = Path(model_path) if model_path else DEFAULT_CHECKPOINT
    model = load_checkpoint(ckpt, device=device)
    C = int(model.in_channels)
    lb = lipschitz_bound(model, (C, 32, 32), size_independent=True)
    summary["model"] = {"checkpoint": str(ckpt), "budget": float(model.lipschitz_budget),
                        "certified_lipschitz": lb.value,
                        "val_loss": getattr(model, "checkpoint_metadata", {}).get("val_loss")}
    log(f"[2/5] model {ckpt}: certified Lip_x(eps) <= {lb.value:.4g} (budget {model.lipschitz_budget:g})")
    if certify:
        _stage(stages, "certificate")
        cert = run_certify(model, steps=steps)
        cert.to_markdown(out / "certificate.md")  # links to the proof pages relative to out/
        atomic_write(out / "certificate.json", cert.to_json().encode())
        summary["certificate"] = cert.verdict
        log(f"      certificate: {cert.verdict} -> {out / 'certificate.md'}")
    stages._bar.update(1)
    return model


def _stage_round_trip(out: Path, summary: dict[str, Any], stages: Any, log: Any, model: Any, *, size: int,
                      steps: int, device: str) -> torch.Tensor:
    """Stage 3: exact round trip of the held-out astronaut next to naive DDIM inversion; returns the image."""
    x = square_image("astronaut", size).unsqueeze(0).to(device)
    with torch.no_grad():
        _stage(stages, "round trip: reversible")
        lat = encode(model, x, steps=steps, method="reversible")
        back = decode(model, lat)
        _stage(stages, "round trip: naive DDIM")
        lat_d = encode(model, x, steps=steps, method="ddim")
        back_d = decode(model, lat_d)
    # the latent of a held-out image should look like white noise: x-space state at t_max over sigma(t_max)
    summary["latent"] = latent_statistics(lat.standardized())
    summary["round_trip"] = {"reversible_max_abs": float((back - x).abs().max()),
                             "reversible_bit_exact": bool(torch.equal(back, x)),
                             "ddim_max_abs": float((back_d - x).abs().max()),
                             "ddim_mse": float(((back_d - x) ** 2).mean()), "nfe_per_direction": lat.nfe}
    side_by_side([("image", x), ("reversible round trip", back), ("naive DDIM round trip", back_d),
                  ("|reversible - image|", back, x), ("|naive DDIM - image|", back_d, x)],
                 out / "round_trip.png")
    stages._bar.update(1)
    log(f"[3/5] round trip (astronaut {size}², {steps} steps): reversible max|err| = "
        f"{summary['round_trip']['reversible_max_abs']:.3g} (bit-exact: {summary['round_trip']['reversible_bit_exact']}),"
        f" naive DDIM max|err| = {summary['round_trip']['ddim_max_abs']:.3g}")
    return x


def _reconstruction_row(model: Any, xr: torch.Tensor, kind: str, *, reconstruct_steps: int,
                        device: str) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Reconstruct ``xr`` under corruption ``kind``: ``(summary row, observed, ours)``."""
    obs = make_corruption(kind).sample(xr.cpu(), 0)
    y, m = obs.y.to(device), obs.m.to(device)
    with torch.no_grad():
        rec = reconstruct_full(model, y, m, steps=reconstruct_steps, seed=0,
                               operator=lambda v: obs.operator(v.cpu()).to(v.device))
    base_name, base = _best_baseline(kind, y, m, xr)
    region = (m[:, :1] < 1).to(xr.dtype)
    has_region = 0 < float(region.sum()) < region.numel()
    row = {"corruption": kind, "baseline": base_name,
           "psnr_ours": float(psnr(rec.image, xr)), "psnr_baseline": float(psnr(base, xr)),
           "ssim_ours": float(ssim(rec.image, xr)), "ssim_baseline": float(ssim(base, xr)),
           "psnr_region_ours": float(region_psnr(rec.image, xr, region)) if has_region else None,
           "psnr_region_baseline": float(region_psnr(base, xr, region)) if has_region else None,
           "known_pixels_exact": bool(torch.equal(rec.image[(m[:, :1] == 1).expand_as(y)], y[(m[:, :1] == 1).expand_as(y)])),
           "forward_residual": float(rec.residual[0]) if rec.residual is not None else None,
           # what the flow started from: the model's restorer R(c), or a classical estimate
           "start": rec.estimate_method or "noise",
           # the holdout gate: did the flow beat its start on hidden observed pixels?
           "flow": {None: "—", True: "kept", False: "gated off"}[rec.flow_kept]}
    return row, y, rec.image


def _stage_reconstruction(out: Path, summary: dict[str, Any], stages: Any, log: Any, model: Any, *, size: int,
                          reconstruct_steps: int, device: str) -> None:
    """Stage 4: every corruption type on the held-out chelsea, next to the best classical baseline."""
    xr = square_image("chelsea", size).unsqueeze(0).to(device)
    rows = []
    panels = [("clean", xr)]
    for kind in ("box", "freeform", "random", "gaps", "blur", "noise"):
        _stage(stages, f"reconstruction: {kind}")
        row, y, ours = _reconstruction_row(model, xr, kind, reconstruct_steps=reconstruct_steps, device=device)
        rows.append(row)
        panels += [(f"{kind}: observed", y), (f"{kind}: ours", ours)]
    summary["reconstruction"] = rows
    side_by_side(panels[:7], out / "reconstruction_1.png")
    side_by_side([panels[0]] + panels[7:], out / "reconstruction_2.png")
    stages._bar.update(1)
    log(f"[4/5] reconstruction (chelsea {size}²): " + ", ".join(
        f"{r['corruption']} {r['psnr_ours']:.1f} dB ({r['baseline']} {r['psnr_baseline']:.1f})" for r in rows))


def _stage_editing(out: Path, summary: dict[str, Any], stages: Any, log: Any, model: Any, x: torch.Tensor, *,
                   size: int, steps: int, device: str) -> None:
    """Stage 5: localized edits (recolor, remove) of ``x`` with the outside-mask error and the seam energy."""
    mask = torch.zeros(1, 1, size, size, device=device)
    mask[..., size // 4 : size // 2, size // 3 : 2 * size // 3] = 1
    edits = []
    for op in ("recolor", "remove"):
        _stage(stages, f"editing: {op}")
        with torch.no_grad():
            res = edit_full(model, x, mask, op, strength=0.6, steps=steps)
        edits.append({"operation": op, "outside_max_abs": res.outside_max_abs,
                      "outside_identical": bool(torch.equal(res.image[(mask == 0).expand_as(x)], x[(mask == 0).expand_as(x)])),
                      "seam_energy": float(seam_energy(res.image, mask)), "seam_energy_input": float(seam_energy(x, mask)),
                      "grain_ratio": grain_ratio(res.image, mask), "grain_ratio_input": grain_ratio(x, mask),
                      "colour_grain_ratio": colour_grain_ratio(res.image, mask),
                      "colour_grain_ratio_input": colour_grain_ratio(x, mask),
                      "psnr_inside_vs_target": float(region_psnr(res.image, res.target, mask)), "nfe": res.nfe})
        side_by_side([("image", x), ("target", res.target), ("edited", res.image)], out / f"edit_{op}.png")
    summary["editing"] = edits
    stages._bar.update(1)
    log("[5/5] editing: " + ", ".join(f"{e['operation']}: outside max|err| = {e['outside_max_abs']:g}" for e in edits))


def _write_report(out: Path, summary: dict[str, Any], t0: float, log: Any) -> None:
    """Stage 6: ``summary.json`` and ``report.md``."""
    summary["wall_seconds"] = time.perf_counter() - t0
    atomic_write(out / "summary.json", json.dumps(summary, indent=2).encode())
    atomic_write(out / "report.md", _report(summary).encode())
    log(f"report: {out / 'report.md'} ({summary['wall_seconds']:.0f} s)")


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _report(s: dict[str, Any]) -> str:
    lines = ["# injcert demo report", "", "![corruptions](corruptions.png)", "", "## Model", ""]
    for k, v in s["model"].items():
        lines.append(f"- {k}: {_fmt(v)}")
    if "certificate" in s:
        lines += ["", f"Certificate verdict: **{s['certificate']}** — see [certificate.md](certificate.md)."]
    lines += ["", "## Round trip", ""] + [f"- {k}: {_fmt(v)}" for k, v in s["round_trip"].items()]
    lines += ["", "![round trip](round_trip.png)", ""]
    if "latent" in s:
        lines += [f"## Latent of the held-out astronaut, {s['size']}² (white noise: std 1, lag-1 0, flatness 1)", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in s["latent"].items()] + [""]
    lines += [f"## Reconstruction (held-out chelsea, {s['size']}²)", "",
              "`start`: what the flow started from — `restorer`, the model's own estimate $R(c)$ from the "
              "observation (missing pixels), `restorer+classical`, the mean of $R(c)$ and the classical fill "
              "(a large hole), `pyramidN`, the coarse-to-fine start over N levels, or a classical estimate "
              "(biharmonic for missing pixels, least squares for blur, BM3D for noise). "
              "`flow`: `kept` where the flow restored observed pixels hidden in the shape of the hole better "
              "than its start (the holdout gate) or, for noise, where Stein's unbiased estimate of its error "
              "was below BM3D's, `gated off` where it did not: that row's result is "
              "the start, to float precision; `—` where no gate ran: blur, whose flow is "
              "off by default (`BLUR_FLOW`: the result is the least-squares estimate).", ""]
    keys = list(s["reconstruction"][0])
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in s["reconstruction"]]
    lines += ["", "![reconstruction](reconstruction_1.png)", "![reconstruction](reconstruction_2.png)", "",
              "## Editing", ""]
    keys = list(s["editing"][0])
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in s["editing"]]
    lines += ["", "![edit](edit_recolor.png)", "![edit](edit_remove.png)", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    quiet = bool(getattr(args, "quiet", False))
    s = run_demo(args.out, model_path=args.model, train_steps=args.train_steps, size=args.size, steps=args.steps,
                 device=args.device, certify=not args.skip_certify, reconstruct_steps=args.reconstruct_steps,
                 log=(lambda msg: None) if quiet else _log_line, progress=not quiet)
    rt = s["round_trip"]
    key = [f"certificate {s['certificate']}"] if "certificate" in s else []
    key.append(f"reversible round trip max |error| {rt['reversible_max_abs']:.3g}"
               + (" (bit-exact)" if rt["reversible_bit_exact"] else "") + f", naive DDIM {rt['ddim_max_abs']:.3g}")
    key.append(f"edits: outside-mask max |change| {max(e['outside_max_abs'] for e in s['editing']):g}")
    say("demo", f"wrote {Path(args.out) / 'report.md'} and its figures in {s['wall_seconds']:.0f} s; " + "; ".join(key))
    return 0
