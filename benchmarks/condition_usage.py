"""How much the network uses its condition: the denoiser with and without (y, m), side by side.

    python benchmarks/condition_usage.py CKPT [CKPT ...] [--sizes 64 256] [--corruptions random box] [--ratio 0.5]

Held-out images (centre crops at ``size``²), half their pixels missing at random (seed 0). For each
checkpoint and noise level ς: the denoiser $D(x_0 + ς\\varepsilon, t(ς), c)$ — read off the network
as $(x_t - \\sigma_t\\hat\\varepsilon)/\\alpha_t$ — with the condition $c = (y, m)$ and with none,
as PSNR at the observed and at the missing pixels (``--corruptions box``, ``freeform`` or ``gaps``
for the restoration benchmark's masks instead, ``--sizes`` for several sizes). A network that uses
its condition returns the observed pixels (PSNR far above the noisy input's there) and interpolates
the missing ones at least as well as ``inpaint_biharmonic`` once the noise drowns them. The last row is $D$ at $t_{\\max}$
from the condition alone (the state is pure noise): the network's own inpainting; a model with a
restorer adds the row ``R(c)``, the restorer's own estimate. The last column is the denoiser's exact
linear part alone, $R + K_t(c)(x_t - \\alpha_t R)$ (what the certified deep path adds to is the rest).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from injcert.cli.compare import load_batch, markdown_table, scaled_settings  # noqa: E402
from injcert.data.corruptions import expand_map, make_corruption  # noqa: E402
from injcert.cli import run_script  # noqa: E402
from injcert.io import load_checkpoint  # noqa: E402
from injcert.metrics import region_psnr  # noqa: E402
from injcert.model.bands import mix_weights  # noqa: E402
from injcert.tasks.classical import classical_estimate  # noqa: E402


@torch.no_grad()
def _linear_part(model, z: torch.Tensor, t: float, y: torch.Tensor, m: torch.Tensor):
    """The denoiser's exact linear part with the condition, $R + K_t(c)(z - \\alpha_t R)$ (``K_t z`` without
    a restorer); ``None`` for a model without one (an ε-network, or no skip)."""
    if getattr(model, "parameterization", None) != "denoiser" or not hasattr(model, "linear_skip"):
        return None
    tt = torch.full((z.shape[0],), t)
    mix = mix_weights(m, z.dtype) if getattr(model, "band_mix", False) else None
    if getattr(model, "restorer", None) is None:
        return model.linear_skip(z, tt)
    r = model.anchor(y, m)
    return r + model.linear_skip(z, tt, mix) - float(model.schedule.alpha(t)) * model.linear_skip(r, tt, mix)


@torch.no_grad()
def _denoise(model, z: torch.Tensor, t: float, cond) -> torch.Tensor:
    s = model.schedule
    a, sg = float(s.alpha(t)), float(s.sigma(t))
    tt = torch.full((z.shape[0],), t)
    return (z - sg * model(z, tt, *cond)) / a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--size", "--sizes", dest="sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--images", nargs="+", default=["astronaut", "chelsea", "hubble_deep_field", "retina"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--corruptions", nargs="+", default=["random"], choices=["random", "box", "freeform", "gaps"],
                    help="random: --ratio of the pixels missing; box, freeform, gaps: the restoration "
                         "benchmark's (benchlib.scaled_settings)")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.3, 1.0])
    ap.add_argument("--restorer-only", action="store_true",
                    help="only the row R(c) (no denoiser: fast on many or large images)")
    args = ap.parse_args()
    models = [(path, load_checkpoint(path).eval()) for path in args.checkpoints]  # a bad one fails before any work
    for size in args.sizes:
        for kind in args.corruptions:
            _report(models, args, size, kind)


def _report(models, args, size: int, kind: str) -> None:
    x = load_batch(args.images, size)[0]
    params = {"ratio": args.ratio} if kind == "random" else scaled_settings(kind, size)
    obs = make_corruption(kind, **params).sample(x, 0)
    m = expand_map(obs.m)
    y = obs.y * m[:, :1]
    known = m[:, :1] == 1

    def psnr(a: torch.Tensor, observed: bool) -> float:  # pooled over the batch, [-1, 1]
        return region_psnr(a.double(), x.double(), known, outside=not observed)

    _, bih = classical_estimate(y, m, "inpaint_biharmonic")
    what = (f"{args.ratio:.0%} of the pixels missing at random" if kind == "random"
            else {"box": "a box missing", "freeform": "free-form strokes missing", "gaps": "thin gaps missing"}[kind])
    print(f"\n### {size}², {what}\n\nimages {', '.join(args.images)}; inpaint_biharmonic at the missing pixels: "
          f"{psnr(bih, False):.2f} dB\n")
    rows = []
    for path, model in models:
        if not args.restorer_only:
            rows += _denoiser_rows(Path(path).name, model, args.levels, x, y, m, psnr)
        if getattr(model, "restorer", None) is not None:
            with torch.no_grad():
                r = model.anchor(y, m)
            rows.append([Path(path).name, "R(c)", "—", "—", psnr(r, True), "—", psnr(r, False), "—"])
    print(markdown_table(["checkpoint", "ς", "noisy input, observed [dB]", "D without c, observed",
                          "D with c, observed", "D without c, missing", "D with c, missing",
                          "linear part with c, missing"], rows))


def _denoiser_rows(name: str, model, levels, x, y, m, psnr) -> list:
    """The denoiser with and without the condition at each noise level, and at $t_{\\max}$."""
    rows = []
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    sched = model.schedule
    for lv in levels:
        t = float(sched.t_of_varsigma(lv))
        z = float(sched.alpha(t)) * (x + lv * noise)
        with_c = _denoise(model, z, t, (y, m))
        without = _denoise(model, z, t, (None, None))
        lin = _linear_part(model, z, t, y, m)
        rows.append([name, f"{lv:g}", psnr(x + lv * noise, True),
                     psnr(without, True), psnr(with_c, True),
                     psnr(without, False), psnr(with_c, False), "—" if lin is None else psnr(lin, False)])
    t = float(sched.t_max)
    z = float(sched.alpha(t)) * x + float(sched.sigma(t)) * noise
    d, lin = _denoise(model, z, t, (y, m)), _linear_part(model, z, t, y, m)
    rows.append([name, "t_max", "—", "—", psnr(d, True), "—", psnr(d, False),
                 "—" if lin is None else psnr(lin, False)])
    return rows


if __name__ == "__main__":
    run_script(main)
