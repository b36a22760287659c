#!/usr/bin/env bash
# Train candidate default models on a GPU machine that has JAX but no TensorFlow, within a fixed
# wall-clock budget, several candidates at once on one GPU. Each candidate first runs a short probe
# (2 epochs on 640 images) to time a training step; its real run then gets as many epochs as fit
# in the budget, so the cosine schedule decays to zero (--time-limit only as a safety net).
#
#   python -m training pack --data ../shared/data/imagenette2-train --image-size 128 --splits train \
#       --quality 85 --out packs/imagenette2-train_128px.npz          # here (TensorFlow), 32 MiB
#   BUDGET=300 OUT=out training/scripts/train_on_gpu.sh ["NAME|FLAGS" ...]      # the GPU machine
#   (COLLECT=DIR also copies the checkpoints, split in 15 MiB parts, and a tarball of the logs)
#   python -m training evaluate out/runs/NAME --data ../shared/data/imagenette2-train   # here
#   python -m training export out/runs/NAME --name imagenette
#
# TRAIN_SPLITS=train,validation trains a chosen recipe on both packed splits (pack them both).
# DEADLINE=SECONDS interrupts the runs still going then (each saves its weights so far).
# Needs keras (3.15), jax with CUDA, numpy, pillow, h5py on the GPU machine; KERAS_BACKEND=jax.
set -u
BUDGET=${BUDGET:-300}            # seconds of training per candidate (compilation excluded)
PACK=${PACK:-packs/imagenette2-train_128px.npz}
OUT=${OUT:-gpu_runs}
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_MEM_FRACTION=0.25 PYTHONUNBUFFERED=1
recipe="--data $PACK --image-size 128 --batch-size 128 --optimizer adamw --warmup-epochs 3
        --label-smoothing 0.1 --mixed-precision --patience 0 --workers 4 --name imagenette"
TRAIN_SPLITS=${TRAIN_SPLITS:-train}   # train,validation for a final run of a chosen recipe
recipe="$recipe --train-splits $TRAIN_SPLITS"
# candidates: "name|flags" arguments, or these
candidates=("$@")
[ ${#candidates[@]} -gt 0 ] || candidates=(
  "r18w05_strong|--arch resnet18 --width 0.5 --augment strong --lr 2e-3"
  "r18w05_medium|--arch resnet18 --width 0.5 --augment medium --lr 2e-3"
  "r18w0625_strong|--arch resnet18 --width 0.625 --augment strong --lr 2e-3"
)
steps=$(python3 -c "
import json, numpy as np
meta = json.loads(str(np.load('$PACK')['meta']))
print(sum(meta['sizes'][s] for s in '$TRAIN_SPLITS'.split(',')) // 128)")  # full batches of 128

train() {  # name flags...
  local name=$1; shift
  python3 -m training fit-packed $recipe "$@" --epochs 2 --limit 640 \
      --runs-dir /tmp/probe --run-name "$name" > "$OUT/$name.probe.log" 2>&1 || return 1
  local step
  step=$(python3 -c "import csv; r=list(csv.DictReader(open('/tmp/probe/$name/log.csv'))); print(float(r[-1]['epoch_seconds'])/5)")
  local epochs
  epochs=$(python3 -c "print(max(5, int($BUDGET / ($step * $steps))))")
  echo "$name: $step s/step -> $epochs epochs" | tee -a "$OUT/plan.txt"
  python3 -m training fit-packed $recipe "$@" --epochs "$epochs" --time-limit $(python3 -c "print(($BUDGET * 1.1 + 120) / 60)") \
      --runs-dir "$OUT/runs" --run-name "$name" > "$OUT/$name.log" 2>&1
}

mkdir -p "$OUT"
pids=()
for c in "${candidates[@]}"; do
  train "${c%%|*}" ${c#*|} &
  pids+=($!)
done
if [ -n "${DEADLINE:-}" ]; then  # seconds: then stop every run still going; each saves what it has
  (sleep "$DEADLINE"; pkill -TERM -f "training fit-packed") &
  watchdog=$!
fi
wait "${pids[@]}"
[ -n "${watchdog:-}" ] && kill "$watchdog" 2>/dev/null
for c in "${candidates[@]}"; do tail -n 4 "$OUT/${c%%|*}.log"; done
if [ -n "${COLLECT:-}" ]; then  # at most a few files, each under 15 MiB (a transfer limit)
  mkdir -p "$COLLECT"
  tar -czf "$COLLECT/logs.tgz" -C "$OUT" --exclude='*.keras' .
  for c in "${candidates[@]}"; do
    name=${c%%|*}
    [ -f "$OUT/runs/$name/best.keras" ] && split -b 15M -d "$OUT/runs/$name/best.keras" "$COLLECT/$name.keras.part"
  done
  ls -la "$COLLECT"
fi
