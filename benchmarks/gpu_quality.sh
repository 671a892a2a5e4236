#!/usr/bin/env bash
# Issue #5's quality run on one GPU, in one command (< 10 minutes on an H100/H200): text tokenizer,
# FSQ image tokenizer (recipes/tokenizer_fsq_shapes.yaml), unified model (recipes/unified_shapes.yaml
# + recipes/presets/gpu_bf16.yaml) and evaluation on held-out compositions (checker accuracy, VQA
# exact match, caption attribute recall / fact precision), each stage under its share of MINUTES
# (default 9).  See benchmarks/shapes_quality.py and docs/performance.md ("Quality run on one GPU").
#
#   bash benchmarks/gpu_quality.sh                  # from the repository root, on the GPU machine
#   MINUTES=8 EXTRA_S=75 bash benchmarks/gpu_quality.sh --curves   # arguments go to shapes_quality.py
#
# Needs a python3 with CUDA torch and lightning (PYTHON=... to pick another); unigen's other imports
# and LightningCLI's jsonargparse come from carried wheels in .whl/ when missing
# (benchmarks/gpu_wheels.txt).  Writes benchmarks/results/shapes_quality_cuda.json (after every
# stage) and copies it, the log, the t2i sample grid and the eval report to $OUT when that is set.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh  # PY, PYTHONPATH, carried wheels from .whl/, the CUDA check
gpu_env_setup gpu_quality "jsonargparse, docstring_parser, typeshed_client" || exit 1
$PY -c "from lightning.pytorch.cli import _JSONARGPARSE_SIGNATURES_AVAILABLE as ok; assert ok, str(ok)" \
  || { echo "gpu_quality: LightningCLI cannot run (jsonargparse[signatures])"; exit 1; }

MINUTES=${MINUTES:-9}
EXTRA_S=${EXTRA_S:-0}  # seconds for what the budget does not cover (--curves)
LIMIT=$(awk -v m="$MINUTES" -v e="$EXTRA_S" 'BEGIN { print int(m * 60 + 45 + e) }')  # + start-up
LOG=${OUT:-runs}/shapes_quality.log
mkdir -p "$(dirname "$LOG")"
echo "=== shapes_quality --device cuda --minutes $MINUTES $* (hard limit ${LIMIT} s, log $LOG)"
timeout -k 20 "$LIMIT" "$PY" benchmarks/shapes_quality.py --device cuda --minutes "$MINUTES" "$@" 2>&1 | tee "$LOG"
rc=$?
if [ -n "${OUT:-}" ]; then cp benchmarks/results/shapes_quality_cuda.json "$OUT"/ 2>/dev/null || true; fi
[ $rc -eq 0 ] && echo "gpu_quality: done" || echo "gpu_quality: FAILED or timed out (rc $rc); the JSON holds the stages that finished"
exit $rc
