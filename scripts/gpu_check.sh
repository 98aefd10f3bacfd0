#!/usr/bin/env bash
# GPU check for injcert: the CUDA-marked tests and a short GPU benchmark, printed as one table.
#
#   make gpu-check            (or: VPY=.venv/bin/python bash scripts/gpu_check.sh)
#
# Budget: under 8 minutes on one GPU: tests <= 220 s, benchmark <= 230 s (each step has its own
# alarm, so one slow step is reported as timed out and the others still run).
# Without a CUDA device it says so and exits 0 (nothing was checked, nothing is claimed).
# Exit status: 0 all passed (or no GPU), 1 a test or a benchmark step failed.
set -u
cd "$(dirname "$0")/.."
VPY=${VPY:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$VPY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu-check: no CUDA device available to PyTorch ($("$VPY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'torch not importable')); nothing checked."
    exit 0
fi

OUT=$(mktemp -d "${TMPDIR:-/tmp}/injcert-gpu-check.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== pytest -m cuda"
timeout 220 "$VPY" -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -n 15
tests_rc=${PIPESTATUS[0]}

echo "== GPU benchmark"
timeout 230 "$VPY" - "$OUT" "$tests_rc" <<'PY'
import math
import signal
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

out, tests_rc = Path(sys.argv[1]), int(sys.argv[2])
dev = torch.device("cuda")
rows = []
failed = tests_rc != 0
rows.append(("pytest -m cuda", "passed" if tests_rc == 0 else ("timed out" if tests_rc == 124 else f"FAILED (exit {tests_rc})"), ""))


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = fn()
    torch.cuda.synchronize()
    return res, time.perf_counter() - t0


def _alarm(signum, frame):
    raise TimeoutError("step budget exceeded")


signal.signal(signal.SIGALRM, _alarm)


def step(name, fn, budget):
    global failed
    signal.alarm(budget)
    try:
        res, sec = timed(fn)
        rows.append((name, res, f"{sec:.2f} s"))
    except NotImplementedError as exc:
        rows.append((name, f"skipped: {exc}", ""))
    except Exception as exc:  # report every failure, keep going
        failed = True
        traceback.print_exc()
        rows.append((name, f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}", ""))
    finally:
        signal.alarm(0)


import injcert
from injcert.tasks.compare import bench_model

model, origin = bench_model()
model = model.to(dev).eval()
rows.append(("model", origin, ""))


def certify_time():
    try:
        cert_fn = injcert.certify
    except AttributeError:
        raise NotImplementedError("injcert.certify is not available")
    cert = cert_fn(model, device="cuda", samples=4, steps=20)
    return f"verdict {getattr(cert, 'verdict', '?')}"


def conv_bound():
    from injcert import operator_norm_bound

    conv = nn.Conv2d(128, 128, 3, padding=1).to(dev)
    b = operator_norm_bound(conv, (128, 256, 256))
    return f"certified ||conv128 3x3|| on 256^2 <= {b:.4g}"


def train_throughput():
    from injcert.tasks.train import TrainConfig, train

    cfg = TrainConfig.from_dict({"steps": 30, "batch_size": 64, "patch_size": 32, "seed": 0, "warmup_steps": 0,
                                 "checkpoint_every": 10_000, "val_every": 10_000, "val_batches": 1,
                                 "log": str(out / "log.jsonl")})
    train(cfg, out / "gpu.ckpt", device="cuda", progress=False)
    import json

    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    sps = sorted(r["samples_per_s"] for r in recs if "samples_per_s" in r)
    return f"{sps[len(sps) // 2]:.1f} samples/s (median, batch 64, 32^2 patches, 30 steps)" if sps else "no log"


def recon_1024():
    from injcert.data.corruptions import make_corruption
    from injcert.data.grid import square_image
    from injcert.metrics import psnr, region_psnr
    from injcert.tasks.reconstruct import reconstruct_full

    x = square_image("retina", 1024).unsqueeze(0).to(dev)
    obs = make_corruption("box", min_frac=0.2, max_frac=0.3).sample(x, 0)
    with torch.no_grad():
        rec = reconstruct_full(model, obs.y, obs.m, steps=20, seed=0, operator=obs.operator)
    mem = torch.cuda.max_memory_allocated() / 2**30
    return (f"retina 1024^2 box, 20 steps, NFE {rec.nfe}: PSNR {psnr(rec.image, x):.2f} dB, "
            f"hole {region_psnr(rec.image, x, 1 - obs.m[:, :1]):.2f} dB, peak {mem:.1f} GiB")


def round_trip_1024():
    from injcert.data.grid import square_image

    x = square_image("retina", 1024).unsqueeze(0).to(dev)
    with torch.no_grad():
        lat = injcert.encode(model, x, steps=20)
        back = injcert.decode(model, lat)
    return "bit-exact" if torch.equal(back, x) else f"NOT exact: max err {float((back - x).abs().max()):.3g}"


step("certify (20 steps, 4 samples)", certify_time, 60)
step("operator_norm_bound 128ch 3x3 @ 256^2", conv_bound, 45)
step("training throughput", train_throughput, 45)
step("reconstruction 1024^2", recon_1024, 40)
step("round trip 1024^2 (reversible)", round_trip_1024, 25)

name = torch.cuda.get_device_name(0)
print(f"\n| check ({name}) | result | time |\n|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")
sys.exit(1 if failed else 0)
PY
bench_rc=$?
if [ "$bench_rc" -eq 124 ]; then echo "gpu-check: the GPU benchmark timed out (230 s)"; fi
if [ "$tests_rc" -ne 0 ] || [ "$bench_rc" -ne 0 ]; then
    echo "gpu-check: FAILED (tests exit $tests_rc, benchmark exit $bench_rc)"
    exit 1
fi
echo "gpu-check: passed"
