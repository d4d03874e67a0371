#!/usr/bin/env bash
# Issue 17's acceptance grid on synth 300: frozen O-net (the demo), frozen random ResNet50, a
# ResNet18 fine-tuned from random weights and the O-net fine-tuned from its own weights, each on
# the data sets of seeds 0, 1, 2 (`demo --seed S`'s synth and split).
# Usage: scripts/finetune-grid.sh OUT [SEEDS...]; prints one line per arm and seed from the
# runs' report.json (ensemble VAL and TEST ROC-AUC) into OUT/grid.tsv. Steps resume.
set -euo pipefail
out=${1:?usage: scripts/finetune-grid.sh OUT [SEEDS...]}
shift
seeds=("${@:-0 1 2}")
py=${PYTHON:-python}
members=(--members lstm64,lstm32,gru64 --temporal-change --epochs 40)
faces=(--detector mtcnn --no-face full_frame --box-smoothing-s 0.5)
sampling=(--inference-frames 36 --sampling uniform)
step() { local name=$1; shift; local t0=$SECONDS; "$@" > /dev/null; echo "$name $((SECONDS - t0)) s" >&2; }
# extract (backbone args in "$@") into $s/STORE, train the members into $s/RUN, evaluate them
chain() {
  local label=$1 store=$2 run=$3; shift 3
  step "seed $seed extract $label" $py -m training extract --manifest "$s/manifest.csv" \
    --out "$s/$store" "$@" "${faces[@]}" "${sampling[@]}" --seed "$seed"
  step "seed $seed train $label" $py -m training train --store "$s/$store" --out "$s/$run" \
    "${members[@]}" --seed "$seed"
  step "seed $seed evaluate $label" $py -m training evaluate --store "$s/$store" --run "$s/$run"
}
for seed in ${seeds[*]}; do
  s=$out/s$seed
  step "seed $seed demo (O-net)" $py -m training demo --out "$s" --seed "$seed"
  chain "random resnet50" store-rand run-rand --arch resnet50 --weights none --input-size 64
  step "seed $seed finetune resnet18" $py -m training finetune --manifest "$s/manifest.csv" \
    --out "$s/ft" --arch resnet18 --weights none --input-size 64 "${faces[@]}" --frames 8 \
    --epochs 8 --seed "$seed"
  chain "fine-tuned resnet18" store-ft run-ft --arch resnet18 \
    --weights "file:$s/ft/backbone.safetensors" --input-size 64
  step "seed $seed finetune onet" $py -m training finetune --manifest "$s/manifest.csv" \
    --out "$s/ft-onet" --arch mtcnn_onet --weights facenet --input-size 48 "${faces[@]}" \
    --frames 8 --epochs 8 --lr 3e-4 --seed "$seed"
  chain "fine-tuned onet" store-ft-onet run-ft-onet --arch mtcnn_onet \
    --weights "file:$s/ft-onet/backbone.safetensors" --input-size 48
done
for seed in ${seeds[*]}; do
  for arm in run run-rand run-ft run-ft-onet; do
    $py - "$out/s$seed/$arm/report.json" "$seed" "$arm" <<'PY' | tee -a "$out/grid.tsv"
import json, sys
report = json.load(open(sys.argv[1]))
ensemble = report["models"]["ensemble"]
print(sys.argv[2], sys.argv[3], ensemble["val"]["roc_auc"], ensemble["test"]["roc_auc"], sep="\t")
PY
  done
done
