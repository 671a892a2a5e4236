#!/usr/bin/env bash
# One-shot GPU check, about 7 minutes on an H100/H200 (under 10 at the time limits, so it fits
# one 600-second device command):
#   1. train_throughput at 219m, bf16-mixed, eager and torch.compile: Lightning vs plain tokens/s,
#      MFU, peak memory, the data-loading check, and a profile of 3 compiled Lightning steps (ms
#      per step by kind of work: matmul, attention, fused elementwise, loss, optimizer, copies);
#   2. sampling at d512 (the 34m preset, 64x64 images = 256 tokens), batch 64, 16 steps: masked
#      samplers vs the KV-cached autoregressive baseline, with and without prefix cache and CFG;
#   3. sampler_overhead: one MaskGIT step's sampling work on 8x8 and 16x16 grids, unigen vs textbook;
#   4. text_decoding: captioning and VQA (batch 256) scoring the text vocabulary only vs all ids;
#   5. train_throughput of the compact shapes model (the #5 legs' 26M, batch 256) compiled with the
#      default mode vs reduce-overhead (CUDA graphs per block): over_first_mode is the speed-up.
# JSON lands in benchmarks/results/*_cuda.json (and is copied to $OUT when that is set).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on the GPU machine
#
# Needs a python3 with CUDA torch and lightning (PYTHON=... to pick another).  unigen's other imports
# (diffusers, vector-quantize-pytorch, ...) are installed from carried wheels in .whl/ when missing:
# see benchmarks/gpu_wheels.txt for the one pip command that fetches them.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh  # PY, PYTHONPATH, carried wheels from .whl/, the CUDA check, run
gpu_env_setup gpu_check || exit 1

run train_throughput 240 --size 219m --device cuda --precision bf16-mixed --compile \
  --steps 15 --warmup 5 --repeats 1 --loader --num-workers 4 --profile-steps 3
run sampling 110 --size 34m --device cuda --precision bf16-mixed --batch-size 64 --steps 16 \
  --repeats 2 --warmup 1
run sampler_overhead 50 --device cuda --shapes 64x64x15488,64x256x15488 --steps 4 --repeats 3
run text_decoding 80 --device cuda --size 34m --batch-size 256 --repeats 3
run train_throughput 100 --size compact --device cuda --precision bf16-mixed --compile --no-eager \
  --compile-mode default,reduce-overhead --steps 30 --warmup 10 --repeats 1 \
  --out benchmarks/results/train_throughput_compact_modes_cuda.json

if [ -n "${OUT:-}" ]; then cp benchmarks/results/*_cuda.json "$OUT"/ 2>/dev/null || true; fi
if [ ${#failed[@]} -gt 0 ]; then echo "gpu_check: FAILED: ${failed[*]}"; exit 1; fi
echo "gpu_check: done"
