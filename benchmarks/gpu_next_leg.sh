#!/usr/bin/env bash
# The next leg of issue #5's GPU training, whatever this checkout kept (one command; see
# docs/performance.md, "Next lent GPU").  It looks for, in this order:
#   1. a returned model (runs/gpu_models/model_bf16, from --return-model): the unified model
#      continues from its weights (--init-unified);
#   2. the image tokenizer (TOKENIZER, default the tracked assets/tokenizers/fsq_shapes, trained by
#      recipes/tokenizer_fsq_shapes.yaml on a CPU, 37.9 dB): a first leg from fresh weights with it.
# The git-ignored runs/ folder is not guaranteed to survive between sessions (on 2026-11-27 a
# fresh checkout lost the 12.3-minute model), so the leg never assumes it did.
#
#   MINUTES=8.2 EXTRA_S=50 bash benchmarks/gpu_next_leg.sh        # on the GPU machine
#   DRY_RUN=1 bash benchmarks/gpu_next_leg.sh                     # print the command, run nothing
#
# Extra arguments go to benchmarks/shapes_quality.py (e.g. --compile-modes default,reduce-overhead).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-runs/gpu_models/model_bf16}
TOKENIZER=${TOKENIZER:-assets/tokenizers/fsq_shapes}

recipes=(--unified-recipe recipes/unified_shapes.yaml --unified-recipe recipes/presets/gpu_bf16.yaml
         --unified-recipe recipes/presets/unified_compact.yaml
         --unified-recipe recipes/presets/unified_task_balance.yaml
         --unified-recipe recipes/presets/unified_t2i_weight.yaml
         --unified-recipe recipes/presets/unified_lr_high.yaml
         --unified-recipe recipes/presets/unified_muon.yaml)
if [ -f "$MODEL/training_history.json" ]; then
  start=(--init-unified "$MODEL" --tokenizer-share 0.02 --unified-share 0.86 --eval-share 0.12)
  what="continues $MODEL"
elif [ -f "$TOKENIZER/config.json" ]; then
  start=(--image-tokenizer "$TOKENIZER" --tokenizer-share 0.02 --unified-share 0.86 --eval-share 0.12)
  what="first leg with the tokenizer $TOKENIZER"
else
  echo "gpu_next_leg: no image tokenizer at $TOKENIZER (and no returned model at $MODEL)" >&2
  exit 1
fi
cmd=(bash benchmarks/gpu_quality.sh "${start[@]}" "${recipes[@]}" --eval-batch-size 64
     --return-model --profile-steps 5 "$@")
echo "gpu_next_leg: $what"
echo "gpu_next_leg: ${cmd[*]}"
[ -n "${DRY_RUN:-}" ] && exit 0
exec "${cmd[@]}"
