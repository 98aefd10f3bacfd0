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


class Stepper:
    """One model's training loop, one timed step at a time (so two models can alternate steps)."""

    def __init__(self, model_cfg: dict, batch: int, dev: torch.device, compile_model: bool = False) -> None:
        torch.manual_seed(0)
        self.dev = dev
        self.model = CondUNet.from_config(model_cfg).to(dev)
        self.ema = copy.deepcopy(self.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        ds = PatchDataset(None, patch_size=32, channels=3, length=2**40, seed=0, split="train")
        self.sb = StepBatches(ds, self.model.schedule, 0, 0, batch, batch, 0.1, 1e-3)
        self.fn = torch.compile(self.model) if compile_model else self.model
        self.lips = [m for m in self.model.modules() if isinstance(m, LipConv2d) and m.constrained]
        self.rows: dict[str, list] = {k: [] for k in ("data", "normalisation", "forward", "backward", "optimiser", "step")}

    def step(self, k: int, record: bool) -> None:
        dev, opt = self.dev, self.opt
        t0 = time.perf_counter()
        b = self.sb[k]
        t1 = time.perf_counter()
        b = _to_device(b, dev)
        _sync(dev)
        t2 = time.perf_counter()
        if self.lips:
            tot = sum(w.sum() for w in batched_effective_weights(self.lips))
            tot.backward()
            opt.zero_grad(set_to_none=True)
        _sync(dev)
        t3 = time.perf_counter()
        with batched_normalisation(self.model):
            loss = loss_on_batch(self.fn, b)
        _sync(dev)
        t4 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _sync(dev)
        t5 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        opt.step()
        _ema_update(self.ema, self.model, 0.999)
        _sync(dev)
        t6 = time.perf_counter()
        if record:
            for key, v in (("data", t1 - t0), ("normalisation", t3 - t2), ("forward", t4 - t3),
                           ("backward", t5 - t4), ("optimiser", t6 - t5), ("step", t6 - t3)):
                self.rows[key].append(v)

    def medians(self, batch: int) -> dict:
        med = {k: statistics.median(v) for k, v in self.rows.items()}
        med["samples_per_s"] = batch / med["step"]
        med["samples_per_s_with_data"] = batch / (med["step"] + med["data"])
        return med


def profile_side_by_side(configs: dict[str, dict], batch: int, steps: int, dev: torch.device,
                         compile_model: bool = False) -> dict[str, dict]:
    """Median step profile of each config; the models **alternate steps** in one loop, so load on a
    shared machine hits both alike and their ratio is stable (back-to-back runs drift by 20-30 %)."""
    steppers = {name: Stepper(c, batch, dev, compile_model) for name, c in configs.items()}
    for k in range(steps + 3):
        for st in steppers.values():
            st.step(k, record=k >= 3)
    return {name: st.medians(batch) for name, st in steppers.items()}


def profile(model_cfg: dict, batch: int, steps: int, dev: torch.device, compile_model: bool = False) -> dict:
    """Median step profile of one model (the asv benchmarks call this)."""
    return profile_side_by_side({"m": model_cfg}, batch, steps, dev, compile_model)["m"]


def default_variants(config: str | Path = ROOT / "configs" / "default.json") -> dict[str, dict]:
    """The shipped training config's model, and the same network unconstrained (plain convolutions,
    no per-step normalisation, eps-parameterised)."""
    cfg = TrainConfig.from_dict(json.loads(Path(config).read_text())).model
    free = dict(cfg, lipschitz_budget=None, lipschitz_kappa=None, parameterization="eps", data_variance=None)
    return {"certified": cfg, "unconstrained": free}


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
    variants = default_variants(args.config)
    if args.only_certified:
        del variants["unconstrained"]
    res = profile_side_by_side(variants, args.batch, args.steps, dev, args.compile)
    print(f"training step profile: device {dev}, batch {args.batch}, 32x32 patches, median of {args.steps} "
          "steps, the models alternating steps"
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
