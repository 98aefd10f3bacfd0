"""How fast a restorer learns under a training recipe: R(c) against ``inpaint_biharmonic``, as it trains.

    python benchmarks/restorer_recipes.py [--kinds random] [--max-downscale 8] [--loss mse] [--minutes 10]
                                          [--images NAME_OR_DIR ...] [--threads 1] [--sizes 64] [CKPT]

Trains a fresh :class:`~injcert.model.restorer.Restorer` (or the restorer of the checkpoint
``CKPT``) alone with Adam at a constant learning rate on patches of the training images, corrupted
by ``--kinds``, and every two minutes (and last at the first report after ``--minutes``) prints, as
one JSON line, $R(c)$ minus ``inpaint_biharmonic`` (dB, at the missing pixels, pooled) on the
held-out images at 64² (or ``--sizes``) for a random half of the pixels, the benchmark's box,
free-form strokes and gaps. ``--minutes 0`` only measures ``CKPT``'s restorer. Run two recipes side
by side on the two cores (``--threads 1`` each) and compare the lines at the same minute; a run is
a few minutes, so it chooses a recipe before a run of hours. ``--loss log`` is the former objective
(log of the image-wide MSE), for comparison; ``mse`` is
:func:`~injcert.model.objective.restorer_loss`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from injcert.benchlib import load_batch, scaled_settings
from injcert.cli import run_script
from injcert.data.corruptions import corrupt_batch, expand_map, make_corruption
from injcert.data.images import HELDOUT_IMAGES, TRAIN_IMAGES, PatchDataset, image_files
from injcert.errors import InputError
from injcert.io import load_checkpoint
from injcert.metrics import region_psnr
from injcert.model.objective import restorer_loss
from injcert.model.restorer import Restorer
from injcert.tasks.classical import classical_estimate

KINDS = ("random", "box", "freeform", "gaps")


def _cells(size: int) -> list:
    x = load_batch(list(HELDOUT_IMAGES), size)[0]
    cells = []
    for kind in KINDS:
        params = {"ratio": 0.5} if kind == "random" else scaled_settings(kind, size)
        obs = make_corruption(kind, **params).sample(x, 0)
        m = expand_map(obs.m)
        y, known = obs.y * m[:, :1], m[:, :1] == 1
        bih = region_psnr(classical_estimate(y, m, "inpaint_biharmonic")[1].double(), x.double(), known, outside=True)
        cells.append((f"{kind}@{size}", x, y, m, known, bih))
    return cells


@torch.no_grad()
def _gains(net: Restorer, cells: list) -> dict:
    net.eval()
    out = {name: round(region_psnr(net(y, m).double(), x.double(), known, outside=True) - bih, 3)
           for name, x, y, m, known, bih in cells}
    net.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["random"], choices=KINDS)
    ap.add_argument("--max-downscale", type=float, default=8.0)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--loss", choices=["mse", "log"], default="mse")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--images", nargs="+", default=list(TRAIN_IMAGES))
    ap.add_argument("checkpoint", nargs="?", help="a model checkpoint whose restorer starts the run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    net = load_checkpoint(args.checkpoint).restorer if args.checkpoint else Restorer(3, 3, 32, (1, 2, 3, 4))
    if net is None:
        raise InputError(f"{args.checkpoint!r} has no restorer (model option 'restorer')")
    torch.set_num_threads(args.threads)
    paths = [n for n in args.images if n not in TRAIN_IMAGES]
    files = [n for n in args.images if n in TRAIN_IMAGES] + (image_files(paths) if paths else [])
    data = PatchDataset(files, patch_size=args.patch, length=10**9, seed=args.seed + 1,
                        max_downscale=args.max_downscale)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    cells, g = [c for size in args.sizes for c in _cells(size)], torch.Generator().manual_seed(args.seed + 2)
    start, step, report = time.perf_counter(), 0, 0.0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= report:
            print(json.dumps({"minute": round(elapsed / 60, 1), "step": step, **_gains(net, cells)}), flush=True)
            report += 120.0
            if elapsed >= args.minutes * 60:
                break
        x0 = torch.stack([data[step * args.batch + k] for k in range(args.batch)])
        y, m = corrupt_batch(x0, g, p_uncond=0.0, kinds=args.kinds)
        batch = {"x0": x0, "y": y, "m": m}
        if args.loss == "mse":
            loss = restorer_loss(net, batch)
        else:
            loss = torch.log((net(y, expand_map(m)) - x0).pow(2).flatten(1).mean(1) + 1e-8).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1


if __name__ == "__main__":
    run_script(main)
