"""The output head's projection with its output width padded to a multiple of 64 vs as it is.

A unified vocabulary is rarely a round number: 15,360 FSQ codes plus the shapes world's 79 text
ids is 15,439.  A bf16 matmul whose output rows are not 16-byte aligned loses cuBLAS's fast
kernels; an H200 profile of the 219M training step (``train_throughput_cuda.json``) showed
``cutlass_75_tensorop_bf16`` kernels, 9 ms a step, for this one projection.  The shared head
therefore computes with zero rows padded onto its weight (``unigen.modules.heads.aligned_linear``,
on CUDA only) and slices them off.  This script times forward + backward of the projection both
ways, in one run, on shapes of the training steps it serves (masked rows x model width x vocabulary):

    PYTHONPATH=. python benchmarks/head_alignment.py --device cuda --precision bf16-mixed
    PYTHONPATH=. python benchmarks/head_alignment.py --shapes 1001x64x1543   # CPU: no cliff expected
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    PRECISIONS, add_device_args, autocast, median, parse_shapes, print_table, save_result, setup,
)
from unigen.modules.heads import CUDA_OUTPUT_MULTIPLE, aligned_linear  # noqa: E402

# masked rows a step x width x vocabulary: the 219M benchmark step (batch 32 x 1,052 positions,
# d1024: 10,051 head rows a step in train_throughput_cuda.json) and the compact GPU leg's (batch
# 256 with complementary copies, d384; about 40k rows); odd row counts, as a step's are
DEFAULT_SHAPES = "10051x1024x15439,40001x384x15439"


def measure(shape: tuple[int, int, int], device: torch.device, precision: str, steps: int,
            repeats: int, seed: int) -> dict[str, Any]:
    rows, dim, vocab = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=gen).to(device).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=gen) * 0.02).to(device).requires_grad_()
    grad = torch.randn(rows, vocab, generator=gen).to(device)

    def step(multiple: int) -> None:
        with autocast(device, precision):
            out = aligned_linear(x, weight, multiple)
        out.backward(grad.to(out.dtype))

    def timed(multiple: int) -> float:
        for _ in range(2):  # warm-up: kernel selection, allocator
            step(multiple)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                step(multiple)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) / steps)
        return 1000 * median(times)

    ms = {m: timed(m) for m in (1, CUDA_OUTPUT_MULTIPLE, 1, CUDA_OUTPUT_MULTIPLE)}  # alternate
    flop = 3 * 2 * rows * dim * vocab  # forward + the two backward matmuls
    plain, padded = ms[1], ms[CUDA_OUTPUT_MULTIPLE]
    return {"rows": rows, "dim": dim, "vocab": vocab, "ms_plain": plain, "ms_padded": padded,
            "speedup": plain / padded, "tflops_plain": flop / plain / 1e9,
            "tflops_padded": flop / padded / 1e9}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated ROWSxDIMxVOCAB")
    parser.add_argument("--precision", default="32-true", choices=sorted(PRECISIONS))
    parser.add_argument("--steps", type=int, default=10, help="forward + backward passes per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    add_device_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    rows = [measure(s, device, args.precision, args.steps, args.repeats, args.seed)
            for s in parse_shapes(args.shapes, "ROWSxDIMxVOCAB")]
    print_table(rows, ["rows", "dim", "vocab", "ms_plain", "ms_padded", "speedup", "tflops_plain",
                       "tflops_padded"])
    payload = {"settings": vars(args), "rows": rows,
               "note": f"forward + backward of the head projection, output width as is vs padded to "
                       f"a multiple of {CUDA_OUTPUT_MULTIPLE}; wall ms, median of repeats, the two "
                       f"alternated twice (the later run of each is kept)"}
    save_result("head_alignment", device, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
