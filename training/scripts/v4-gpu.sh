#!/usr/bin/env bash
# Trains amfp-synth-v4 (reproduce --recipe v4) on a GPU box within a wall-clock deadline and
# leaves what the rest of the pipeline needs in RESULTS: checkpoint.pt, train_log.json, the
# digest of the simulated dataset and the log. The rest (export, quantize, calibration,
# galleries, evaluation) runs on any machine from the same dataset, which `amfp synth`
# simulates again bit for bit (same binary, same seeds); compare the digests:
#
#   bash training/scripts/v4-gpu.sh AMFP_BINARY WORK RESULTS [DEADLINE_S [REPRODUCE_ARGS...]]  # GPU box
#   cd training && python -m amfp_train.reproduce --amfp AMFP_BINARY --out WORK --recipe v4 \
#       --name amfp-synth-v4 --reuse-simulation --checkpoint RESULTS/checkpoint.pt  # anywhere
#   bash training/scripts/v4-gpu.sh --digest WORK    # the digest of the dataset here
#
# DEADLINE_S (default 540) bounds the whole script: the training's time budget is what is left
# after the simulation, less a margin for the last epoch and the copy (train stops after the
# epoch that crosses it, and its checkpoint is the last finished epoch's). REPRODUCE_ARGS go to
# both reproduce steps (a smoke test: --quick --machines 5200-1,S450-1 --parts-per-machine 4).
# WORKERS (default 8) DataLoader workers; MARGIN_S (default 75) seconds kept after training.
set -euo pipefail
cd "$(dirname "$0")/../.."
digest() {  # one line per file of the simulated datasets: sha256 and the path under WORK
    (cd "$1" && find . -path ./eval -prune -o -type f \( -name '*.png' -o -name 'labels.csv' \
        -o -name 'fleet.toml' \) -print | LC_ALL=C sort | xargs -r -n 64 -P "$(nproc)" sha256sum \
        | LC_ALL=C sort -k2)
}
if [ "${1:-}" = "--digest" ]; then
    digest "$2"
    exit
fi
amfp=$(realpath "$1")
work=$(realpath -m "$2")
results=$(realpath -m "$3")
deadline=${4:-540}
shift $(( $# < 4 ? $# : 4 ))
margin=${MARGIN_S:-75}
start=$(date +%s)
mkdir -p "$work" "$results"
cd training
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
common=(--amfp "$amfp" --out "$work" --recipe v4 --name amfp-synth-v4 --models-dir '' "$@")
workers=${WORKERS:-8}
"$py" -m amfp_train.reproduce "${common[@]}" --stop-after simulate 2>&1 | tee "$results/simulate.log"
simulated=$(date +%s)
digest "$work" > "$results/dataset.sha256" &
left=$(( deadline - (simulated - start) - margin ))
budget=$("$py" -c "print(max(0.5, $left / 60))")
echo "simulated in $(( simulated - start )) s; training budget ${budget} min" | tee -a "$results/simulate.log"
"$py" -m amfp_train.reproduce "${common[@]}" --reuse-simulation --stop-after train \
    --workers "$workers" --threads "$(nproc)" --set "time_budget_min=$budget" 2>&1 | tee "$results/train.log"
wait
cp "$work/checkpoint.pt" "$work/train_log.json" "$results/"
echo "done in $(( $(date +%s) - start )) s" | tee -a "$results/train.log"
