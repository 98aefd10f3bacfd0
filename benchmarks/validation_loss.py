"""Held-out validation loss of checkpoints on the training's own validation sets, side by side.

    python benchmarks/validation_loss.py CKPT [CKPT ...] [--batch-sizes 16 256]

The validation set of a run is ``val_batches`` (4) batches of the run's batch size drawn with the
fixed seed ``VAL_SEED`` (``injcert.tasks.train.validation_batches``), so a checkpoint's metadata
``val_loss`` depends on the batch size it was trained with; this prints every checkpoint on the same
sets. Uses the training config of ``configs/default.json`` for everything but the batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from injcert.io import load_checkpoint  # noqa: E402
from injcert.cli import run_script  # noqa: E402
from injcert.tasks.train import TrainConfig, validation_batches, validation_loss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 256])
    args = ap.parse_args()
    cfg = TrainConfig.from_dict(json.loads((ROOT / "configs" / "default.json").read_text()))
    models = [load_checkpoint(p).eval() for p in args.checkpoints]
    print("| checkpoint | " + " | ".join(f"4x{b} patches" for b in args.batch_sizes) + " |")
    print("|---|" + "---|" * len(args.batch_sizes))
    rows = {p: [] for p in args.checkpoints}
    for b in args.batch_sizes:
        cfg.batch_size = b
        batches = validation_batches(cfg, models[0].schedule, torch.device("cpu"))
        for p, m in zip(args.checkpoints, models):
            rows[p].append(validation_loss(m, batches))
    for p, vals in rows.items():
        print(f"| {p} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")


if __name__ == "__main__":
    run_script(main)
