#!/usr/bin/env bash
# Issue #8's last sampling claim on one GPU: masked decoding >= 8x the autoregressive baseline's
# images/s *at equal or better checker accuracy*, with both models trained the same way.  The
# twins are recipes/t2i_shapes.yaml and recipes/ar_shapes.yaml (the same network, data, batch,
# optimizer and condition dropout; a test keeps their shared keys equal) at the compact GPU width
# (recipes/presets/unified_compact.yaml) in bf16 with compiled blocks (recipes/presets/gpu_bf16.yaml),
# each trained STEPS steps over the tracked 16x16 tokenizer; then benchmarks/sampling.py times and
# scores both on held-out prompts: batch 64 (the issue's speed setting) and batch 512 (accuracy on
# more prompts).  About 8 minutes on an H200 with the defaults:
#
#   bash benchmarks/gpu_twins.sh                   # -> $OUT (or benchmarks/results)/sampling_twins_*_cuda.json
#   STEPS=3000 MINUTES=4 bash benchmarks/gpu_twins.sh
#   SMOKE=1 PYTHON=.venv/bin/python bash benchmarks/gpu_twins.sh   # the same commands on the CPU,
#                                                   # tiny, into a temporary folder (a test runs it)
#
# STEPS is the same for both twins (equal training); MINUTES caps each fit (trainer.max_time) so a
# slow step cannot overrun the device command, and a fit it stops is an error (unequal twins).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
if [ -n "${SMOKE:-}" ]; then
  WORK=${WORK:-$(mktemp -d)}; DEST=${OUT:-$WORK}
  STEPS=${STEPS:-4}; MINUTES=${MINUTES:-2}; DEVICE=cpu; PRECISION=32-true; SUFFIX=smoke_cpu
  SAMPLE_BATCHES=(8); TEXT_SAMPLES=500
  overrides=(--trainer.accelerator cpu --trainer.precision 32-true --model.init_args.dim 32
             --model.init_args.depth 1 --model.init_args.heads 2
             --model.init_args.image_tokenizer assets/tokenizers/fsq_shapes_8x8
             --data.init_args.batch_size 4 --data.init_args.num_workers 0)
  presets=()
else
  WORK=${WORK:-runs/gpu_twins}; DEST=${OUT:-benchmarks/results}
  gpu_env_setup gpu_twins "jsonargparse, docstring_parser, typeshed_client" || exit 1
  STEPS=${STEPS:-2000}; MINUTES=${MINUTES:-3.0}; DEVICE=cuda; PRECISION=bf16-mixed; SUFFIX=cuda
  SAMPLE_BATCHES=(64 512); TEXT_SAMPLES=20000
  overrides=(--data.init_args.num_workers 8)
  presets=(--config recipes/presets/gpu_bf16.yaml --config recipes/presets/unified_compact.yaml)
fi
mkdir -p "$WORK" "$DEST"
rc=0

echo "=== text tokenizer"
$PY -m unigen text-tokenizer --data shapes --num-samples "$TEXT_SAMPLES" --out "$WORK/text_tokenizer" || exit 1

seconds=$(awk "BEGIN {printf \"%d\", $MINUTES * 60}")
max_time=$(printf '00:%02d:%02d:%02d' $((seconds / 3600)) $((seconds % 3600 / 60)) $((seconds % 60)))
for twin in t2i ar; do
  echo "=== fit $twin ($STEPS steps, at most $max_time)"
  $PY -m unigen fit --config "recipes/${twin}_shapes.yaml" "${presets[@]}" "${overrides[@]}" \
    --model.init_args.text_tokenizer "$WORK/text_tokenizer" \
    --trainer.max_steps "$STEPS" --model.init_args.warmup_steps $((STEPS / 10 + 1)) \
    --trainer.max_time "$max_time" --trainer.limit_val_batches 0 --trainer.num_sanity_val_steps 0 \
    --trainer.default_root_dir "$WORK/$twin" --export_dir "$WORK/${twin}_pipeline" 2>&1 \
    | tee "$WORK/$twin.log" || { echo "gpu_twins: fit $twin failed"; exit 1; }
  # equal training or no comparison: max_time must not have stopped a twin early (and if it did,
  # the second fit would spend device minutes on nothing)
  grep -q "max_steps=$STEPS\` reached" "$WORK/$twin.log" \
    || { echo "gpu_twins: fit $twin stopped before $STEPS steps (max_time): lower STEPS"; exit 1; }
done

for batch in "${SAMPLE_BATCHES[@]}"; do
  echo "=== sampling, batch $batch"
  $PY benchmarks/sampling.py --device "$DEVICE" --precision "$PRECISION" --prompts shapes --split heldout \
    --masked-model "$WORK/t2i_pipeline" --ar-model "$WORK/ar_pipeline" --steps 16 --samplers maskgit,confident \
    --grid full --guidance 2 --batch-size "$batch" --repeats 2 --warmup 1 --no-ar-uncached \
    --out "$DEST/sampling_twins_b${batch}_${SUFFIX}.json" || rc=1
done
exit $rc
