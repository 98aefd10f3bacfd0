#!/usr/bin/env bash
# Turn a few minutes of one GPU into the largest training run they buy: the restorer first (direct
# supervision, cheap, most of the restoration quality), then the certified refiner around it.
#
#   bash scripts/gpu_train.sh OUT_DIR [SECONDS] [IMAGES...]
#
# OUT_DIR receives restorer.ckpt, start.ckpt and refiner.json (the restorer with the band skip of its
# residual, scripts/residual_bands.py, and the refiner config that accepts it), model.ckpt (the
# refined model to ship), their .state files (resume
# with `python -m injcert train --resume OUT_DIR/model.ckpt.state ...`) and JSON-lines logs.
# SECONDS (default 480) is the whole budget: 40 % restorer, 60 % refiner, each stopped and saved
# by --time-limit at a step boundary. IMAGES default to the bundled training images; give folders
# of your own photographs to add them (searched recursively, unreadable files skipped).
# Runs from a plain checkout on a machine with torch, torchdiffeq, scikit-image and safetensors:
#   PYTHONPATH=$PWD python3 ...   (no venv needed); VPY picks the interpreter (default python3).
# The first steps warm up cuDNN and the allocator; DataLoader workers draw batches ahead.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/gpu_train.sh OUT_DIR [SECONDS] [IMAGES...]}
BUDGET=${2:-480}
shift $(( $# >= 2 ? 2 : 1 ))
VPY=${VPY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
IMAGES=()
if [ "$#" -gt 0 ]; then IMAGES=(--images camera coffee rocket brick grass gravel immunohistochemistry moon coins cell motorcycle lfw_faces "$@"); fi
R_LIMIT=$(( BUDGET * 2 / 5 ))
F_LIMIT=$(( BUDGET - R_LIMIT ))
# on a GPU a step is far faster than on the CPU: larger batches, more steps (the cosine schedule
# needs the step count; a run stopped by the time limit keeps its last checkpoint)
"$VPY" -m injcert train --config configs/restorer.json "${IMAGES[@]}" --device "$DEVICE" \
    --batch-size 64 --steps 20000 --time-limit "$R_LIMIT" \
    --out "$OUT/restorer.ckpt" --log "$OUT/restorer.log.jsonl" --quiet
# the band skip of what the restorer leaves (fitted on the CPU in seconds), then the refiner around it
"$VPY" scripts/residual_bands.py "$OUT/restorer.ckpt" "$OUT/start.ckpt" \
    --config configs/refiner.json --config-out "$OUT/refiner.json"
"$VPY" -m injcert train --config "$OUT/refiner.json" "${IMAGES[@]}" --device "$DEVICE" \
    --init "$OUT/start.ckpt" --batch-size 128 --steps 20000 --time-limit "$F_LIMIT" \
    --out "$OUT/model.ckpt" --log "$OUT/model.log.jsonl" --quiet
echo "gpu-train: wrote $OUT/model.ckpt; certify it with: python -m injcert certify $OUT/model.ckpt"
