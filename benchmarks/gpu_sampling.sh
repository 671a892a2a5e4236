#!/usr/bin/env bash
# Issue #6's prefix-cache claim on one GPU, in about two minutes: benchmarks/sampler_curves.py
# --cache-only on a trained pipeline (captioning and VQA, cache on/off, same samples and seeds),
# eager and with every decoding step a CUDA-graph replay (--cuda-graphs, which also checks the
# replays against eager decoding), in fp32 (TF32) and bf16 autocast.  One JSON per variant:
#
#   bash benchmarks/gpu_sampling.sh MODEL_DIR      # -> $OUT (or benchmarks/results)/prefix_cache_cuda_*.json
#
# Same environment as benchmarks/gpu_quality.sh (carried wheels from .whl/ when needed).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
gpu_env_setup gpu_sampling || exit 1
MODEL=${1:?usage: bash benchmarks/gpu_sampling.sh MODEL_DIR}
DEST=${OUT:-benchmarks/results}
SAMPLES=${SAMPLES:-512}  # two batches: the second refreshes the captured prefix cache in place
rc=0
for precision in 32-true bf16-mixed; do
  for graphs in "" --cuda-graphs; do
    name=prefix_cache_cuda_${precision%%-*}${graphs:+_graphs}
    echo "=== $name"
    $PY benchmarks/sampler_curves.py --model "$MODEL" --device cuda --cache-only --precision "$precision" \
      --num-samples "$SAMPLES" --batch-size 256 --repeats 3 $graphs --out "$DEST/$name.json" || rc=1
  done
done
exit $rc
