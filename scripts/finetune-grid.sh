#!/usr/bin/env bash
# Issue 17's acceptance grid on synth 300, each arm on the data sets of seeds 0, 1, 2
# (`demo --seed S`'s synth and split; `demo` itself always runs, into `run`):
#   onet       the frozen O-net, face tracks without gap filling: `demo`'s recipe until members
#              were centred and gaps filled (the acceptance's "frozen O-net" arm)
#   rand       frozen random ResNet50
#   ft         ResNet18 fine-tuned from random weights (self-blended images + the dataset's fakes)
#   ft-onet    the O-net fine-tuned from its own weights (the same fakes)
#   ft-onet-sup the O-net fine-tuned on the dataset's fakes alone (supervised, no self-blending:
#              what fine-tuning reaches when it trains on the test's kind of fake)
#   onet-gaps  the frozen O-net with the face tracks' detector gaps filled over up to 1 s
#              (--fill-gaps-s 1.0); with centred members, `demo`'s recipe
#   ft-onet-clip the O-net fine-tuned on clips of 8 consecutive crops (self-blended twins that
#              jitter per frame + the dataset's fakes), all 36 frames of each video, gaps filled
#   ft-onet-clip-centred the same, its clip classifier reading features centred on the clip's
#              mean (--clip-centred), so it cannot learn what a face looks like
# Every arm's features train members twice: into run-ARM, and with --centre-sequences (members
# that read each frame minus its video's mean frame) into run-ARM-centred.
# Usage: [ARMS="rand ft ..."] scripts/finetune-grid.sh OUT [SEEDS...]. Steps resume. At the end
# `training compare` writes OUT/report.md (ensemble VAL / TEST ROC-AUC, the arms side by side,
# seeds as columns, with means) and the script prints it.
set -euo pipefail
out=${1:?usage: [ARMS=...] scripts/finetune-grid.sh OUT [SEEDS...]}
shift
seeds=("${@:-0 1 2}")
read -ra arms <<< "${ARMS:-onet rand ft ft-onet ft-onet-sup onet-gaps ft-onet-clip ft-onet-clip-centred}"
py=${PYTHON:-python}
members=(--members lstm64,lstm32,gru64 --temporal-change --epochs 40)
faces=(--detector mtcnn --no-face full_frame --box-smoothing-s 0.5)
extra=()  # face settings an arm adds to both finetune and extract (`local extra=(...)`)
sampling=(--inference-frames 36 --sampling uniform)
step() { local name=$1; shift; local t0=$SECONDS; "$@" > /dev/null; echo "$name $((SECONDS - t0)) s" >&2; }
# train members on store $1 into run $2 (member args after them), evaluate
fit() {
  local store=$1 run=$2; shift 2
  step "seed $seed train ${run##*/}" $py -m training train --store "$store" --out "$run" \
    "${members[@]}" "$@" --seed "$seed"
  step "seed $seed evaluate ${run##*/}" $py -m training evaluate --store "$store" --run "$run"
}
# extract (backbone args in "$@") into $s/store-ARM, then members into $s/run-ARM{,-centred}
chain() {
  local arm=$1; shift
  step "seed $seed extract $arm" $py -m training extract --manifest "$s/manifest.csv" \
    --out "$s/store-$arm" "$@" "${faces[@]}" "${extra[@]}" "${sampling[@]}" --seed "$seed"
  fit "$s/store-$arm" "$s/run-$arm"
  fit "$s/store-$arm" "$s/run-$arm-centred" --centre-sequences
}
# finetune into $s/ARM (backbone and fine-tuning args in "$@"), then chain on its weights
tuned() {
  local arm=$1 arch=$2 size=$3; shift 3
  step "seed $seed finetune $arm" $py -m training finetune --manifest "$s/manifest.csv" \
    --out "$s/$arm" --arch "$arch" --input-size "$size" "${faces[@]}" "${extra[@]}" --frames 8 \
    --epochs 8 --seed "$seed" "$@"
  chain "$arm" --arch "$arch" --input-size "$size" --weights "file:$s/$arm/backbone.safetensors"
}
arm_onet() { chain onet --arch mtcnn_onet --weights facenet --input-size 48; }
arm_rand() { chain rand --arch resnet50 --weights none --input-size 64; }
arm_ft() { tuned ft resnet18 64 --weights none; }
arm_ft-onet() { tuned ft-onet mtcnn_onet 48 --weights facenet --lr 3e-4; }
arm_ft-onet-sup() { tuned ft-onet-sup mtcnn_onet 48 --weights facenet --lr 3e-4 --self-blend-p 0; }
arm_onet-gaps() {
  local extra=(--fill-gaps-s 1.0)
  chain onet-gaps --arch mtcnn_onet --weights facenet --input-size 48
}
arm_ft-onet-clip() {
  local extra=(--fill-gaps-s 1.0)
  tuned ft-onet-clip mtcnn_onet 48 --weights facenet --lr 3e-4 --frames 36 --clip-frames 8 \
    --batch-size 128
}
arm_ft-onet-clip-centred() {
  local extra=(--fill-gaps-s 1.0)
  tuned ft-onet-clip-centred mtcnn_onet 48 --weights facenet --lr 3e-4 --frames 36 \
    --clip-frames 8 --clip-centred --batch-size 128
}
for seed in ${seeds[*]}; do
  s=$out/s$seed
  step "seed $seed demo" $py -m training demo --out "$s" --seed "$seed"
  for arm in "${arms[@]}"; do "arm_$arm"; done
done
runs=()
for seed in ${seeds[*]}; do
  runs+=("$out/s$seed/run")
  for arm in "${arms[@]}"; do runs+=("$out/s$seed/run-$arm" "$out/s$seed/run-$arm-centred"); done
done
$py -m training compare "${runs[@]}" --out "$out/report.md" --title "finetune grid" > /dev/null
cat "$out/report.md"
