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
for seed in ${seeds[*]}; do
  s=$out/s$seed
  step "seed $seed demo (O-net)" $py -m training demo --out "$s" --seed "$seed"
  step "seed $seed extract random resnet50" $py -m training extract --manifest "$s/manifest.csv" \
    --out "$s/store-rand" --arch resnet50 --weights none --input-size 64 "${faces[@]}" \
    "${sampling[@]}" --seed "$seed"
  step "seed $seed train random resnet50" $py -m training train --store "$s/store-rand" \
    --out "$s/run-rand" "${members[@]}" --seed "$seed"
  step "seed $seed evaluate random resnet50" $py -m training evaluate --store "$s/store-rand" \
    --run "$s/run-rand"
  step "seed $seed finetune resnet18" $py -m training finetune --manifest "$s/manifest.csv" \
    --out "$s/ft" --arch resnet18 --weights none --input-size 64 "${faces[@]}" --frames 8 \
    --epochs 8 --seed "$seed"
  step "seed $seed extract fine-tuned resnet18" $py -m training extract --manifest \
    "$s/manifest.csv" --out "$s/store-ft" --arch resnet18 \
    --weights "file:$s/ft/backbone.safetensors" --input-size 64 "${faces[@]}" "${sampling[@]}" \
    --seed "$seed"
  step "seed $seed train fine-tuned resnet18" $py -m training train --store "$s/store-ft" \
    --out "$s/run-ft" "${members[@]}" --seed "$seed"
  step "seed $seed evaluate fine-tuned resnet18" $py -m training evaluate --store "$s/store-ft" \
    --run "$s/run-ft"
  step "seed $seed finetune onet" $py -m training finetune --manifest "$s/manifest.csv" \
    --out "$s/ft-onet" --arch mtcnn_onet --weights facenet --input-size 48 "${faces[@]}" \
    --frames 8 --epochs 8 --lr 3e-4 --seed "$seed"
  step "seed $seed extract fine-tuned onet" $py -m training extract --manifest "$s/manifest.csv" \
    --out "$s/store-ft-onet" --arch mtcnn_onet --weights "file:$s/ft-onet/backbone.safetensors" \
    --input-size 48 "${faces[@]}" "${sampling[@]}" --seed "$seed"
  step "seed $seed train fine-tuned onet" $py -m training train --store "$s/store-ft-onet" \
    --out "$s/run-ft-onet" "${members[@]}" --seed "$seed"
  step "seed $seed evaluate fine-tuned onet" $py -m training evaluate \
    --store "$s/store-ft-onet" --run "$s/run-ft-onet"
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
