#!/usr/bin/env bash
# Turn a few minutes of one GPU into the largest training run they buy: the restorer first (direct
# supervision, cheap, most of the restoration quality), then the certified refiner around it.
#
#   bash scripts/gpu_train.sh OUT_DIR [SECONDS] [IMAGES...]
#
# Stage 1 trains a restorer from scratch with RESTORER_CONFIG (default configs/restorer_large.json: four
# times the shipped restorer's weights, one more level, 64-px patches of every mask kind; too slow to
# train on a CPU) into OUT_DIR/restorer.ckpt.
# Stage 2, with REFINER_FROM (default: the shipped model), grafts that restorer into REFINER_FROM's
# certified refiner (scripts/graft_restorer.py: nothing the certificate reads changes) as
# OUT_DIR/start.ckpt and fine-tunes the refiner around it with configs/refiner.json
# (train --model-from-init). With REFINER_FROM="" the refiner is trained from scratch around the new
# restorer instead, with the band skip of its residual (scripts/residual_bands.py; OUT_DIR/refiner.json).
# OUT_DIR/model.ckpt is the model to benchmark and ship; each .ckpt has a .state file (resume with
# `python -m injcert train --resume OUT_DIR/model.ckpt.state ...`) and a JSON-lines log.
# SECONDS (default 480) is the whole budget: 40 % restorer, 60 % refiner, each stopped and saved
# by --time-limit at a step boundary. IMAGES default to the bundled training images; give folders
# of your own photographs to add them (searched recursively, unreadable files skipped).
# Runs from a plain checkout on a machine with torch, torchdiffeq, scikit-image and safetensors:
#   PYTHONPATH=$PWD python3 ...   (no venv needed); VPY picks the interpreter (default python3),
#   DEVICE the torch device (default cuda), R_BATCH and F_BATCH the batch sizes (64, 128).
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
RESTORER_CONFIG=${RESTORER_CONFIG:-configs/restorer_large.json}
REFINER_FROM=${REFINER_FROM-injcert/assets/default.ckpt}
R_BATCH=${R_BATCH:-64}
F_BATCH=${F_BATCH:-128}
# on a GPU a step is far faster than on the CPU: larger batches, more steps (the cosine schedule
# needs the step count; a run stopped by the time limit keeps its last checkpoint)
"$VPY" -m injcert train --config "$RESTORER_CONFIG" "${IMAGES[@]}" --device "$DEVICE" \
    --batch-size "$R_BATCH" --steps 20000 --time-limit "$R_LIMIT" \
    --out "$OUT/restorer.ckpt" --log "$OUT/restorer.log.jsonl" --quiet
if [ -n "$REFINER_FROM" ]; then
    # the new restorer inside the trained refiner, which then adapts to it
    "$VPY" scripts/graft_restorer.py "$REFINER_FROM" "$OUT/restorer.ckpt" "$OUT/start.ckpt"
    "$VPY" -m injcert train --config configs/refiner.json "${IMAGES[@]}" --device "$DEVICE" \
        --init "$OUT/start.ckpt" --model-from-init --batch-size "$F_BATCH" --steps 20000 \
        --time-limit "$F_LIMIT" --out "$OUT/model.ckpt" --log "$OUT/model.log.jsonl" --quiet
else
    # the band skip of what the restorer leaves (fitted in seconds), then a refiner from scratch around it
    "$VPY" scripts/residual_bands.py "$OUT/restorer.ckpt" "$OUT/start.ckpt" \
        --config configs/refiner.json --config-out "$OUT/refiner.json"
    "$VPY" -m injcert train --config "$OUT/refiner.json" "${IMAGES[@]}" --device "$DEVICE" \
        --init "$OUT/start.ckpt" --batch-size "$F_BATCH" --steps 20000 --time-limit "$F_LIMIT" \
        --out "$OUT/model.ckpt" --log "$OUT/model.log.jsonl" --quiet
fi
echo "gpu-train: wrote $OUT/model.ckpt; certify it with: python -m injcert certify $OUT/model.ckpt"
