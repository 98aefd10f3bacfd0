"""Where a training step's time goes: data, normalisation, forward, backward, optimiser.

    python benchmarks/training_step_profile.py [--device cpu|cuda] [--batch 16] [--steps 10]
        [--config /path/train.json] [--compile]

Prints one Markdown table, certified model and the same network unconstrained (plain
convolutions, no per-step normalisation, eps-parameterised) side by side in one run, with the ratio
certified/unconstrained of the whole step. "data" is the CPU time to draw one step's batch in the
training process (patches + t + eps + corruption); with ``--workers N`` in ``train`` it overlaps the
GPU step instead. "normalisation" is the forward+backward of every ``LipConv2d`` effective weight
alone (it is also inside forward/backward). Times are medians over ``--steps`` steps after 3 warm-up
steps; the machine is shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from injcert.data.images import PatchDataset  # noqa: E402
from injcert.model.layers import LipConv2d, batched_effective_weights, batched_normalisation  # noqa: E402
from injcert.model.objective import loss_on_batch  # noqa: E402
from injcert.model.unet import CondUNet  # noqa: E402
from injcert.tasks.train import StepBatches, TrainConfig, _ema_update, _to_device  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def profile(model_cfg: dict, batch: int, steps: int, dev: torch.device, compile_model: bool = False) -> dict:
    torch.manual_seed(0)
    model = CondUNet.from_config(model_cfg).to(dev)
    ema = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ds = PatchDataset(None, patch_size=32, channels=3, length=2**40, seed=0, split="train")
    sb = StepBatches(ds, model.schedule, 0, 0, batch, batch, 0.1, 1e-3)
    fn = torch.compile(model) if compile_model else model
    lips = [m for m in model.modules() if isinstance(m, LipConv2d) and m.constrained]
    rows: dict[str, list] = {k: [] for k in ("data", "normalisation", "forward", "backward", "optimiser", "step")}
    for k in range(steps + 3):
        t0 = time.perf_counter()
        b = sb[k]
        t1 = time.perf_counter()
        b = _to_device(b, dev)
        _sync(dev)
        t2 = time.perf_counter()
        if lips:
            tot = sum(w.sum() for w in batched_effective_weights(lips))
            tot.backward()
            opt.zero_grad(set_to_none=True)
        _sync(dev)
        t3 = time.perf_counter()
        with batched_normalisation(model):
            loss = loss_on_batch(fn, b)
        _sync(dev)
        t4 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _sync(dev)
        t5 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _ema_update(ema, model, 0.999)
        _sync(dev)
        t6 = time.perf_counter()
        if k >= 3:
            for key, v in (("data", t1 - t0), ("normalisation", t3 - t2), ("forward", t4 - t3),
                           ("backward", t5 - t4), ("optimiser", t6 - t5), ("step", t6 - t3)):
                rows[key].append(v)
    med = {k: statistics.median(v) for k, v in rows.items()}
    med["samples_per_s"] = batch / med["step"]
    med["samples_per_s_with_data"] = batch / (med["step"] + med["data"])
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.json"))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--only-certified", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cfg = TrainConfig.from_dict(json.loads(Path(args.config).read_text())).model
    free = dict(cfg, lipschitz_budget=None, lipschitz_kappa=None, parameterization="eps", data_variance=None)
    variants = [("certified", cfg)] + ([] if args.only_certified else [("unconstrained", free)])
    res = {name: profile(c, args.batch, args.steps, dev, args.compile) for name, c in variants}
    print(f"training step profile: device {dev}, batch {args.batch}, 32x32 patches, median of {args.steps} steps"
          f"{', torch.compile' if args.compile else ''} (ms)\n")
    print("| model | data (CPU) | normalisation | forward | backward | optimiser+EMA | step | samples/s | data/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {1e3 * r['data']:.1f} | {1e3 * r['normalisation']:.1f} | {1e3 * r['forward']:.1f} | "
              f"{1e3 * r['backward']:.1f} | {1e3 * r['optimiser']:.1f} | {1e3 * r['step']:.1f} | "
              f"{r['samples_per_s']:.0f} | {r['data'] / r['step']:.2f} |")
    if "unconstrained" in res:
        print(f"\ncertified / unconstrained step time: {res['certified']['step'] / res['unconstrained']['step']:.2f}")


if __name__ == "__main__":
    main()
