"""Three ideas for the gate and the blur row, measured on the TRAINING images and not shipped.

``python benchmarks/gate_probes.py pyramid [--size 256] [--masks 4] [--corruptions box]``
    Could the holdout gate's proxy (the hole moved by half the image, :func:`~injcert.tasks.reconstruct._shifted_hole`)
    also choose, per image, between the coarse-to-fine estimate and plain biharmonic? Without the
    network (``sigma_start=1e-6``, one step), for every box that gets a pyramid level: the real
    ΔPSNR of the pyramid over biharmonic, and whether the proxy says the pyramid wins (lower RMS
    error and an SSIM no lower on the hidden pixels). Prints the summed ΔPSNR of always using the
    pyramid, of using it where the proxy says so, and of an oracle, and how often the proxy is right.

``python benchmarks/gate_probes.py margin [--size 64] [--masks 3]``
    The moved hole can land next to the real one (a ``reconstruct`` box of up to half the image,
    moved by half the image, makes one strip with it), and the proxy is then harder than the task.
    Variant: choose among the 15 moves by quarters of the image the one that hides the most observed
    pixels farther than ``margin`` pixels from the real hole, and hide only those. Prints the summed
    ΔPSNR / ΔSSIM over the classical estimate of the full pipeline (20 steps, gate on) per margin.

``python benchmarks/gate_probes.py blur [--size 64] [--masks 3]``
    Does the flow add to least squares for the local blur if the observation is enforced after it
    (LSMR restarted from the flow's output, a null-space projection)? Compared with the same LSMR
    restarted from the least-squares estimate without the flow, and with least squares run for
    twice the iterations: ΔPSNR / ΔSSIM over ``lsmr_local`` (1000 iterations).
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict

import torch

import injcert
import injcert.tasks.reconstruct as rec
from injcert.cli import run_script
from injcert.cli.compare import TUNING_IMAGES, markdown_table, tuning_observations
from injcert.metrics import psnr, ssim
from injcert.tasks.classical import LSMR_ITERATIONS, _lsmr_local, classical_estimate

LOSS, LOSS_SSIM = 0.005, 1e-5


def pyramid(model, args) -> None:
    for corruption in args.corruptions:
        if len(args.corruptions) > 1:
            print(f"### {corruption}\n")
        _pyramid(model, args, corruption)


def _pyramid(model, args, corruption: str) -> None:
    rows, always, chosen, oracle, right, count = [], 0.0, 0.0, 0.0, 0, 0
    for x, y, m in tuning_observations(corruption, args.size, args.masks, args.images):
        levels = rec.pyramid_levels(model, m)
        if levels == 0:
            continue
        base = classical_estimate(y, m, "auto")[1]
        with torch.no_grad():
            pyr = rec.reconstruct_full(model, y, m, 1, 0, sigma_start=1e-6, levels=levels).image
        gain = psnr(pyr, x) - psnr(base, x)
        known = m[:, :1] == 1
        hide = rec._shifted_hole(~known, known)
        y2, m2 = rec.hidden_observation(y, m, hide)
        b2 = classical_estimate(y2, m2, "auto")[1]
        with torch.no_grad():
            p2 = rec.reconstruct_full(model, y2, m2, 1, 0, sigma_start=1e-6, levels=levels).image
        (eb, sb), (ep, sp) = (rec.hidden_scores(y, known, hide, b2, a) for a in (b2, p2))
        says = ep < eb and sp >= sb
        always += gain
        chosen += gain if says else 0.0
        oracle += max(gain, 0.0)
        right += says == (gain > 0)
        count += 1
        rows.append([len(rows), levels, f"{gain:+.3f}", f"{eb:.3f}", f"{ep:.3f}", "pyramid" if says else "biharmonic"])
    print(markdown_table(["mask", "levels", "ΔPSNR pyramid", "proxy RMS biharmonic", "proxy RMS pyramid", "proxy picks"],
                         rows))
    print(f"\nsummed ΔPSNR over biharmonic: always the pyramid {always:+.3f}, where the proxy picks it {chosen:+.3f}, "
          f"oracle {oracle:+.3f}; the proxy is right on {right}/{count} masks")


def _far_shift(margin: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def shifted(hole: torch.Tensor, onto: torch.Tensor) -> torch.Tensor:
        h, w = hole.shape[-2:]
        ok = onto & (rec._distance_map(hole) > margin)
        moves = [(h // 2, 0), (0, w // 2), (h // 2, w // 2)] + [
            (a * h // 4, b * w // 4) for a in range(4) for b in range(4) if (a, b) not in ((0, 0), (2, 0), (0, 2), (2, 2))]
        moved = torch.stack([torch.roll(hole, s, dims=(-2, -1)) & ok for s in moves])
        return moved[moved.flatten(2).sum(2).argmax(0), torch.arange(hole.shape[0], device=hole.device)]
    return shifted


def margin(model, args) -> None:
    variants: Dict[str, Callable] = {"shipped (half-image moves)": rec._shifted_hole}
    variants.update({f"margin {d} px": _far_shift(d) for d in (0, 1, 4)})
    shipped, blur_flow = rec._shifted_hole, rec.BLUR_FLOW
    rec.BLUR_FLOW = True  # gate blur by the proxy too (shipped off)
    rows = []
    try:
        for corr in args.corruptions:
            acc: Dict[str, list] = {v: [] for v in variants}
            for x, y, m in tuning_observations(corr, args.size, args.masks, args.images):
                est = classical_estimate(y, m, "auto")[1]
                pb, sb = psnr(est, x), ssim(est, x)
                for name, fn in variants.items():
                    rec._shifted_hole = fn
                    with torch.no_grad():
                        img = rec.reconstruct_full(model, y, m, 20, 0).image
                    acc[name].append((psnr(img, x) - pb, ssim(img, x) - sb))
            rows.append([corr] + [f"{sum(a[0] for a in v):+.3f} ({sum(a[0] < -LOSS for a in v)}) / "
                                  f"{sum(a[1] for a in v):+.5f} ({sum(a[1] < -LOSS_SSIM for a in v)})" for v in acc.values()])
    finally:
        rec._shifted_hole, rec.BLUR_FLOW = shipped, blur_flow
    print(f"summed ΔPSNR / ΔSSIM over the classical estimate (masks losing more than {LOSS} dB / {LOSS_SSIM})\n")
    print(markdown_table(["corruption", *variants], rows))


def _lsmr_from(start: torch.Tensor, y: torch.Tensor, m: torch.Tensor, iters: int) -> torch.Tensor:
    """LSMR for the local blur restarted from ``start`` (the correction of least norm, early-stopped)."""
    return torch.stack([_lsmr_local(yi, mi, num_iter=iters, start=si) for si, yi, mi in zip(start, y, m)])


def blur(model, args) -> None:
    acc: Dict[str, list] = {}
    for x, y, m in tuning_observations("blur", args.size, args.masks, args.images):
        est = classical_estimate(y, m, "auto")[1]
        pb, sb = psnr(est, x), ssim(est, x)
        with torch.no_grad():
            flow = rec.reconstruct_full(model, y, m, 20, 0, gate=False).image
        cands = {"flow (no gate)": flow,
                 f"flow, then LSMR {LSMR_ITERATIONS}": _lsmr_from(flow, y, m, LSMR_ITERATIONS),
                 f"least squares, then LSMR {LSMR_ITERATIONS}": _lsmr_from(est, y, m, LSMR_ITERATIONS),
                 f"least squares, {2 * LSMR_ITERATIONS} iterations": torch.stack(
                     [_lsmr_local(yi, mi, num_iter=2 * LSMR_ITERATIONS) for yi, mi in zip(y, m)])}
        for name, img in cands.items():
            acc.setdefault(name, []).append((psnr(img, x) - pb, ssim(img, x) - sb))
    rows = [[name, f"{sum(a[0] for a in v):+.3f}", sum(a[0] < -LOSS for a in v), f"{sum(a[1] for a in v):+.5f}",
             sum(a[1] < -LOSS_SSIM for a in v)] for name, v in acc.items()]
    print(markdown_table(["blur estimate", "summed ΔPSNR", "losers", "summed ΔSSIM", "losers"], rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=["pyramid", "margin", "blur"])
    p.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    p.add_argument("--size", type=int, default=None, help="256 for pyramid, 64 otherwise")
    p.add_argument("--masks", type=int, default=None, help="masks per image: 4 for pyramid, 3 otherwise")
    p.add_argument("--images", nargs="+", default=list(TUNING_IMAGES))
    p.add_argument("--corruptions", nargs="+", default=None,
                   help="blur freeform box for margin; box for pyramid (masks only)")
    args = p.parse_args()
    args.size = args.size or (256 if args.probe == "pyramid" else 64)
    args.masks = args.masks or (4 if args.probe == "pyramid" else 3)
    args.corruptions = args.corruptions or (["box"] if args.probe == "pyramid" else ["blur", "freeform", "box"])
    model = injcert.load_checkpoint(args.checkpoint)
    print(f"checkpoint {args.checkpoint}; {args.probe}; {args.size}²; images {', '.join(args.images)}; "
          f"{args.masks} masks each\n")
    {"pyramid": pyramid, "margin": margin, "blur": blur}[args.probe](model, args)


if __name__ == "__main__":
    run_script(main)
