"""Trade-off benchmark: Lipschitz budget vs. validation loss, certified bound and throughput.

asv suite (``track_*``) plus a script: ``python benchmarks/bench_training.py [--steps N]`` trains
one small model per budget (``None`` = unconstrained: plain convolutions, caps $=\\infty$, gain 1)
for the same number of steps on the same data and prints a Markdown table. The unconstrained
model's bound is still *certified* by :func:`injcert.lipschitz_bound` (it is just large).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

BUDGETS: list[Optional[float]] = [None, 100.0, 30.0, 10.0]

BENCH_CONFIG: dict[str, Any] = {
    "steps": 40,
    "batch_size": 16,
    "lr": 1e-3,
    "seed": 0,
    "patch_size": 32,
    "channels": 3,
    "model": {"base_channels": 16, "channel_mults": [1, 2, 2], "blocks_per_level": 1, "emb_dim": 64},
    "ema_decay": 0.9,
    "checkpoint_every": 10_000,
    "val_every": 10_000,
    "val_batches": 2,
    "warmup_steps": 5,
}


def run_one(budget: Optional[float], steps: int, workdir: Path) -> dict[str, float]:
    """Train one model; returns val loss, certified bound (size-independent) and samples/s."""
    from injcert.io import load_checkpoint
    from injcert.tasks.train import TrainConfig, train
    from injcert.theory.lipschitz import lipschitz_bound

    cfg = copy.deepcopy(BENCH_CONFIG)
    cfg["steps"] = steps
    cfg["model"]["lipschitz_budget"] = budget
    name = "none" if budget is None else f"{budget:g}"
    cfg["log"] = str(workdir / f"log-{name}.jsonl")
    t0 = time.perf_counter()
    out = train(TrainConfig.from_dict(cfg), workdir / f"model-{name}.safetensors", progress=False)
    wall = time.perf_counter() - t0
    recs = [json.loads(line) for line in Path(cfg["log"]).read_text().splitlines()]
    model = load_checkpoint(out)
    bound = lipschitz_bound(model, (3, 32, 32), size_independent=True).value
    sps = sorted(r["samples_per_s"] for r in recs[1:] or recs)
    return {
        "val_loss": float(model.checkpoint_metadata["val_loss"]),
        "certified_bound": float(bound),
        "samples_per_second": float(sps[len(sps) // 2]),
        "wall_s": wall,
    }


class TrainingTradeoff:
    """asv: one short training run per Lipschitz budget (cached across the track_* methods)."""

    params = [BUDGETS]
    param_names = ["lipschitz_budget"]
    timeout = 1800

    def setup_cache(self) -> dict[str, dict[str, float]]:
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as d:
            return {str(b): run_one(b, BENCH_CONFIG["steps"], Path(d)) for b in BUDGETS}

    def track_val_loss(self, cache: dict, budget: Optional[float]) -> float:
        return cache[str(budget)]["val_loss"]

    track_val_loss.unit = "mse"  # type: ignore[attr-defined]

    def track_certified_bound(self, cache: dict, budget: Optional[float]) -> float:
        return cache[str(budget)]["certified_bound"]

    track_certified_bound.unit = "lipschitz"  # type: ignore[attr-defined]

    def track_samples_per_second(self, cache: dict, budget: Optional[float]) -> float:
        return cache[str(budget)]["samples_per_second"]

    track_samples_per_second.unit = "samples/s"  # type: ignore[attr-defined]


class TrainingStep:
    """asv: the default model's training step, certified and unconstrained alternating steps in one
    run (``benchmarks/training_step_profile.py``), on each available device: the overhead of the
    certified normalisation as a ratio, the throughput, and the data share of a step."""

    params = [["cpu", "cuda"]]
    param_names = ["device"]
    timeout = 900

    def setup_cache(self) -> dict[str, dict]:
        from .training_step_profile import default_variants, profile_side_by_side

        torch.set_num_threads(2)
        out = {}
        for dev in self.params[0]:
            if dev == "cuda" and not torch.cuda.is_available():
                continue
            batch = 256 if dev == "cuda" else 16
            out[dev] = profile_side_by_side(default_variants(), batch, 10, torch.device(dev))
        return out

    def setup(self, cache: dict, device: str) -> None:
        if device not in cache:
            raise NotImplementedError(f"no {device} device here")

    def track_certified_over_unconstrained(self, cache: dict, device: str) -> float:
        return cache[device]["certified"]["step"] / cache[device]["unconstrained"]["step"]

    track_certified_over_unconstrained.unit = "ratio"  # type: ignore[attr-defined]

    def track_certified_samples_per_second(self, cache: dict, device: str) -> float:
        return cache[device]["certified"]["samples_per_s"]

    track_certified_samples_per_second.unit = "samples/s"  # type: ignore[attr-defined]

    def track_data_over_step(self, cache: dict, device: str) -> float:
        r = cache[device]["certified"]
        return r["data"] / r["step"]

    track_data_over_step.unit = "ratio"  # type: ignore[attr-defined]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=BENCH_CONFIG["steps"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for b in BUDGETS:
            r = run_one(b, args.steps, Path(d))
            rows.append((b, r))
            print(f"budget={b}: {r}", file=sys.stderr, flush=True)
    m = BENCH_CONFIG["model"]
    print(f"Training trade-off: {args.steps} steps, batch {BENCH_CONFIG['batch_size']}, patch "
          f"{BENCH_CONFIG['patch_size']}, base {m['base_channels']}, mults {m['channel_mults']}, "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| budget L_max | val loss (EMA) | certified Lip_x (size-indep.) | samples/s | wall s |")
    print("|---|---|---|---|---|")
    for b, r in rows:
        name = "unconstrained" if b is None else f"{b:g}"
        print(f"| {name} | {r['val_loss']:.4f} | {r['certified_bound']:.4g} | {r['samples_per_second']:.1f} | "
              f"{r['wall_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
