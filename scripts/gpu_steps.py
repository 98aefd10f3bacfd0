"""One step of ``make gpu-check`` per process: ``python scripts/gpu_steps.py STEP [OUTDIR]``.

Each step prints one line ``RESULT: <text>`` and exits 0 (passed), 1 (failed) or 3 (skipped);
``scripts/gpu_check.sh`` runs every step under its own hard ``timeout``, so one slow or hung step
(a long native call cannot be interrupted from Python) is reported and the others still run.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import os

#: ``GPU_STEPS_SMOKE=1`` runs every step on the CPU at toy sizes (a dry run of this script).
SMOKE = os.environ.get("GPU_STEPS_SMOKE") == "1"
DEV = torch.device("cpu" if SMOKE else "cuda")


def _s(full: int, smoke: int) -> int:
    return smoke if SMOKE else full


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize(DEV)


def _peak() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEV.type == "cuda" else float("nan")


def _model():
    from injcert.cli.compare import bench_model

    model, _ = bench_model()
    return model.to(DEV).eval()


def conv_bound(out: Path) -> str:
    """Certified operator-norm bound of a 128->128 3x3 conv at 256^2 on the GPU, vs the CPU at 64^2."""
    from injcert import operator_norm_bound

    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    gpu = conv.to(DEV)
    operator_norm_bound(gpu, (128, 32, 32))  # warm-up (cuSOLVER/cuBLAS handles)
    _sync()
    t0 = time.perf_counter()
    b = operator_norm_bound(gpu, (128, _s(256, 16), _s(256, 16)))
    _sync()
    sec = time.perf_counter() - t0
    return f"||conv 128->128 3x3|| at 256^2 <= {b:.6g} in {sec:.2f} s"


def train_throughput(out: Path) -> str:
    """The real training loop (DataLoader workers, batched normalisation), batch 256, 32^2 patches."""
    from injcert.tasks.train import TrainConfig, train

    cfg = json.loads((ROOT / "configs" / "default.json").read_text())
    cfg.update(steps=_s(100, 30), batch_size=_s(256, 4), warmup_steps=0, checkpoint_every=10_000, val_every=10_000,
               val_batches=1, log=str(out / "train.jsonl"))
    t0 = time.perf_counter()
    train(TrainConfig.from_dict(cfg), out / "gpu.ckpt", device=str(DEV), progress=False)
    wall = time.perf_counter() - t0
    recs = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    windows = sorted({r["samples_per_s"] for r in recs[25:]})  # after the first (warm-up) window
    sps = windows[len(windows) // 2] if windows else float("nan")
    return f"{sps:.0f} samples/s (batch 256, 32^2, steps 26-100; whole call {wall:.1f} s incl. start-up)"


def step_profile(out: Path) -> str:
    import subprocess

    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "training_step_profile.py"), "--device", str(DEV),
                          "--batch", str(_s(256, 2)), "--steps", str(_s(20, 2))], capture_output=True, text=True, timeout=170)
    print(res.stdout)
    if res.returncode:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed")
    last = [ln for ln in res.stdout.splitlines() if ln.startswith("certified /")]
    return last[0] if last else "no ratio printed"


def certify_gpu(out: Path) -> str:
    import injcert

    model = _model()
    t0 = time.perf_counter()
    cert = injcert.certify(model, device=str(DEV), **({"steps": 10, "samples": 1} if SMOKE else {}))
    return f"verdict {cert.verdict} in {time.perf_counter() - t0:.1f} s (default options)"


def round_trip_1024(out: Path) -> str:
    import injcert
    from injcert.data.grid import square_image

    model = _model()
    x = square_image("retina", _s(1024, 64)).unsqueeze(0).to(DEV)
    _sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        lat = injcert.encode(model, x, steps=20)
        back = injcert.decode(model, lat)
    _sync()
    sec = time.perf_counter() - t0
    if not torch.equal(back, x):
        raise AssertionError(f"round trip NOT exact: max err {float((back - x).abs().max()):.3g}")
    return f"bit-exact, 20 steps each way, {sec:.1f} s, peak {_peak():.1f} GiB"


def recon_1024(out: Path) -> str:
    from injcert.data.corruptions import make_corruption
    from injcert.data.grid import square_image
    from injcert.metrics import psnr, region_psnr
    from injcert.tasks.reconstruct import reconstruct_full

    model = _model()
    x = square_image("retina", _s(1024, 64)).unsqueeze(0).to(DEV)
    obs = make_corruption("box", min_frac=0.2, max_frac=0.3).sample(x, 0)
    t0 = time.perf_counter()
    with torch.no_grad():
        rec = reconstruct_full(model, obs.y, obs.m, steps=20, seed=0, operator=obs.operator)
    sec = time.perf_counter() - t0
    known = obs.m[:, :1] > 0.5
    if not torch.equal(rec.image[known.expand_as(x)], obs.y[known.expand_as(x)]):
        raise AssertionError("known pixels changed")
    return (f"retina box: PSNR {psnr(rec.image, x):.2f} dB, hole {region_psnr(rec.image, x, 1 - obs.m[:, :1]):.2f} dB, "
            f"{sec:.1f} s, peak {_peak():.1f} GiB")


def logdet_exact(out: Path) -> str:
    """Exact log|det| of one Euler step map at d = 3*64*64 = 12 288 (dense Jacobian, slogdet) in float64."""
    from injcert.theory.logdet import exact_logdet

    model = _model().double()
    side = _s(64, 8)
    x = torch.randn(1, 3, side, side, dtype=torch.float64, device=DEV, generator=torch.Generator(DEV).manual_seed(0))
    t = torch.full((1,), 0.5, dtype=torch.float64, device=DEV)
    _sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        ld = exact_logdet(lambda z: z - 0.01 * model(z, t), x, chunk_size=512)
    _sync()
    return f"log|det| = {float(ld[0]):.6f} at d = {x.numel()} in {time.perf_counter() - t0:.1f} s"


def hutchpp_512(out: Path) -> str:
    from injcert.theory.logdet import trace_estimate

    model = _model()
    x = torch.randn(1, 3, _s(512, 32), _s(512, 32), device=DEV, generator=torch.Generator(DEV).manual_seed(0))
    t = torch.full((1,), 0.5, device=DEV)
    _sync()
    t0 = time.perf_counter()
    est, se = trace_estimate(lambda z: model(z, t), x, "hutchpp", n_probes=12,
                             generator=torch.Generator(DEV).manual_seed(1))
    _sync()
    return f"tr J = {float(est[0]):.1f} +- {float(se[0]):.1f} at d = {x.numel()} in {time.perf_counter() - t0:.1f} s"


STEPS = {f.__name__: f for f in (conv_bound, train_throughput, step_profile, certify_gpu, round_trip_1024,
                                 recon_1024, logdet_exact, hutchpp_512)}


def main() -> int:
    name = sys.argv[1]
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp())
    if not SMOKE and not torch.cuda.is_available():
        print("RESULT: skipped (no CUDA device)")
        return 3
    try:
        print(f"RESULT: {STEPS[name](out)}", flush=True)
        return 0
    except Exception as exc:  # one line for the table; the traceback above it
        import traceback

        traceback.print_exc()
        msg = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else ""
        print(f"RESULT: FAILED: {type(exc).__name__}: {msg}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
