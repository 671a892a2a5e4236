#!/usr/bin/env bash
# Issue #8's open GPU measurements, in priority order, for the minutes a lent GPU has left
# (about 8 minutes on an H200; BUDGET_S skips the stages that would not fit).  What ran before,
# with its commands and numbers: docs/performance.md, "Training at 219M on one H200".
#   1. activation checkpointing on CUDA: torch.cuda.max_memory_allocated over a step, on and
#      off, at 34M and 219M in bf16 (only the CPU's "kept for backward" is measured so far);
#   2. where the last points of MFU go: 219M with full attention and 8 heads of 128 (MFU 0.519 in
#      session 24, elementwise Triton kernels 26 of 119 ms a step), with and without qk-norm
#      (the issue's reference network has none), profiled;
#   3. the same without qk-norm at the reference's sequence length (284 positions, batch 128);
#   4. Inductor's max-autotune (no CUDA graphs) on that network: autotuned Triton kernels for the
#      elementwise work (slow to compile, hence last).
# JSON lands in benchmarks/results/*_cuda.json (and is copied to $OUT when that is set).
#
#   BUDGET_S=400 bash benchmarks/gpu_mfu.sh   # from the repository root, on the GPU machine
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh  # PY, PYTHONPATH, carried wheels from .whl/, the CUDA check, run
gpu_env_setup gpu_mfu "pytest, jsonargparse, docstring_parser, typeshed_client" || exit 1
started=$(mktemp)  # $OUT takes only this run's JSON: the device tool returns 8 files at most

run activation_memory 80 --device cuda --precision bf16-mixed --cases 34m:64,219m:32 --steps 5 \
  --warmup 2 --repeats 1 --out benchmarks/results/activation_memory_cuda.json
# the 219M network with full attention and 8 heads of 128, as it ran in session 24, then without qk-norm
run train_throughput 100 --size 219m --device cuda --precision bf16-mixed --compile --no-eager --repeats 1 --heads 8 \
  --attention full --steps 15 --warmup 6 --profile-steps 3 \
  --out benchmarks/results/train_throughput_219m_full_heads8_qk_cuda.json
run train_throughput 100 --size 219m --device cuda --precision bf16-mixed --compile --no-eager --repeats 1 --heads 8 \
  --attention full --steps 15 --warmup 6 --no-qk-norm --profile-steps 3 \
  --out benchmarks/results/train_throughput_219m_full_heads8_noqk_cuda.json
run train_throughput 90 --size 219m --device cuda --precision bf16-mixed --compile --no-eager --repeats 1 --heads 8 \
  --attention full --steps 15 --warmup 6 --no-qk-norm --image-size 64 --batch-size 128 \
  --out benchmarks/results/train_throughput_219m_seq284_noqk_cuda.json
run train_throughput 200 --size 219m --device cuda --precision bf16-mixed --compile --no-eager --repeats 1 --heads 8 \
  --attention full --steps 15 --warmup 6 --no-qk-norm --compile-mode max-autotune-no-cudagraphs \
  --out benchmarks/results/train_throughput_219m_autotune_cuda.json

if [ -n "${OUT:-}" ]; then
  find benchmarks/results -maxdepth 1 -name '*_cuda.json' -newer "$started" -exec cp {} "$OUT"/ \;
fi
if [ ${#failed[@]} -gt 0 ]; then echo "gpu_mfu: FAILED: ${failed[*]}"; exit 1; fi
echo "gpu_mfu: done"
