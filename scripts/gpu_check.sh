#!/usr/bin/env bash
# GPU check for injcert: the CUDA-marked tests and a GPU benchmark, one process per step.
#
#   make gpu-check            (or: VPY=python3 bash scripts/gpu_check.sh)
#
# Each step runs in its own process under a hard `timeout` (a long native call cannot be
# interrupted from Python), and its row is printed as soon as it finishes; the table is repeated
# at the end. Budget: the per-step limits below add up to < 5 minutes of steps that pass normally.
# Without a CUDA device it says so and exits 0 (nothing was checked, nothing is claimed).
# Exit status: 0 all passed (or no GPU), 1 a step failed or timed out.
set -u
cd "$(dirname "$0")/.."
VPY=${VPY:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$VPY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu-check: no CUDA device available to PyTorch ($("$VPY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'torch not importable')); nothing checked."
    exit 0
fi
OUT=${GPU_CHECK_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/injcert-gpu-check.XXXXXX")}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ROWS=()
FAILED=0

row() {  # name, result, seconds
    local line="| $1 | $2 | $3 s |"
    ROWS+=("$line")
    echo "$line"
}

run_step() {  # name, budget seconds, command...
    local name=$1 budget=$2
    shift 2
    local t0=$SECONDS log="$OUT/$name.log"
    timeout -k 5 "$budget" "$@" >"$log" 2>&1
    local rc=$? dt=$((SECONDS - t0)) res
    res=$(grep -a '^RESULT: ' "$log" | tail -n 1 | cut -c9-)
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        res="TIMED OUT after ${budget} s"; FAILED=1
    elif [ "$rc" -eq 3 ]; then
        :
    elif [ "$rc" -ne 0 ]; then
        FAILED=1; [ -n "$res" ] || res="FAILED (exit $rc): $(tail -n 1 "$log")"
        tail -n 20 "$log" | sed 's/^/    /'
    fi
    row "$name" "${res:-passed}" "$dt"
}

echo "| step | result | time |"
echo "|---|---|---|"
run_step pytest-cuda 120 "$VPY" -m pytest -q -m cuda -p no:cacheprovider tests
run_step conv-bound-256 45 "$VPY" scripts/gpu_steps.py conv_bound "$OUT"
run_step train-throughput 60 "$VPY" scripts/gpu_steps.py train_throughput "$OUT"
run_step step-profile 45 "$VPY" scripts/gpu_steps.py step_profile "$OUT"
run_step certify 60 "$VPY" scripts/gpu_steps.py certify_gpu "$OUT"
run_step round-trip-1024 40 "$VPY" scripts/gpu_steps.py round_trip_1024 "$OUT"
run_step reconstruct-1024 40 "$VPY" scripts/gpu_steps.py recon_1024 "$OUT"
run_step logdet-exact-12288 40 "$VPY" scripts/gpu_steps.py logdet_exact "$OUT"
run_step hutchpp-512 30 "$VPY" scripts/gpu_steps.py hutchpp_512 "$OUT"

echo
echo "| step ($(${VPY} -c 'import torch; print(torch.cuda.get_device_name(0))')) | result | time |"
echo "|---|---|---|"
printf '%s\n' "${ROWS[@]}"
if [ "$FAILED" -ne 0 ]; then echo "gpu-check: FAILED"; exit 1; fi
echo "gpu-check: passed"
