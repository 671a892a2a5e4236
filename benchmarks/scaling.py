"""Scaling table: cost of one training step as the sequence (image resolution) and the model grow.

Image resolutions 32 / 64 / 128 give 8x8 / 16x16 / 32x32 token grids with the 4x tokenizer, so the
sequence grows from 92 to 284 to 1052 positions (24 text + 4 structure tokens).  Each cell trains the
``UnifiedModule`` with the plain loop of ``train_throughput.py`` (t2i task, same batch size
everywhere) and reports ms/step, tokens/s and MFU; the ``x`` columns give the cost relative to the
smallest resolution, measured and predicted by the FLOP count (attention makes it superlinear).

    python benchmarks/scaling.py --sizes tiny,small --device cpu
    python benchmarks/scaling.py --sizes 34m,219m --device cuda --precision bf16-mixed --batch-size 16
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself (a module
    # there named like a package, e.g. benchmarks/tokenizer_throughput.py, would shadow it)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.common import (
    PRECISIONS, SIZES, PretokenizedSamples, TokenizerDirs, add_common_args, build_module,
    params_millions, print_table, save_result, setup,
)
from benchmarks.flops import TransformerShape, forward_flops, measure_matmul_peak, mfu
from benchmarks.train_throughput import run_plain


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--sizes", default="tiny,small", help="size presets, comma-separated")
    parser.add_argument("--resolutions", default="32,64,128", help="image sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    args = parser.parse_args(argv)
    device = setup(args)
    sizes = [s.strip() for s in args.sizes.split(",")]
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        raise SystemExit(f"unknown --sizes {unknown}; choose from {sorted(SIZES)}")
    try:  # ascending: the x columns are relative to each model's smallest resolution
        resolutions = sorted({int(r) for r in args.resolutions.split(",")})
    except ValueError:
        raise SystemExit(f"--resolutions expects comma-separated integers, got {args.resolutions!r}") from None
    if resolutions[0] < 1:
        raise SystemExit(f"--resolutions must be positive, got {args.resolutions!r}")
    peak = measure_matmul_peak(device, PRECISIONS[args.precision] or torch.float32)
    mode = "compile" if args.compile else "eager"

    rows = []
    for name in sizes:
        size = SIZES[name]
        dirs = TokenizerDirs(size.fsq_levels)
        for resolution in resolutions:
            module = build_module("masked", dirs, size, resolution, args.seed, tasks={"t2i": 1.0},
                                  compile=args.compile)
            shape = TransformerShape.of(module.net)
            data = PretokenizedSamples(args.batch_size * (args.warmup + args.steps), module.space.sequence.grid,
                                       module.space.vocab.image_size, args.seed)
            loader = DataLoader(data, batch_size=args.batch_size, drop_last=True)
            result = run_plain(module, loader, device, args.precision, args.steps, args.warmup, mode)
            step_s = result.seconds / result.steps
            flops = 3 * forward_flops(shape, args.batch_size, result.head_positions / result.steps)
            rows.append({"size": name, "parameters_millions": params_millions(module.net),
                         "resolution": resolution, "grid": "x".join(map(str, module.space.sequence.grid)),
                         "sequence": shape.seq_len, "step_ms": 1e3 * step_s,
                         "tokens_per_s": args.batch_size * shape.seq_len / step_s,
                         "model_tflops_per_step": flops / 1e12, "mfu_vs_measured_matmul": mfu(flops, step_s, peak),
                         "peak_memory_mb": result.peak_memory_mb})
            print(f"  {name} @ {resolution}px: {rows[-1]['step_ms']:.4g} ms/step")
            del module, loader
    for row in rows:  # cost relative to the same model at the smallest resolution (listed first)
        base = next(r for r in rows if r["size"] == row["size"])
        row["time_x"] = row["step_ms"] / base["step_ms"]
        row["flops_x"] = row["model_tflops_per_step"] / base["model_tflops_per_step"]
    print_table(rows, ["size", "parameters_millions", "resolution", "sequence", "step_ms", "time_x", "flops_x",
                       "tokens_per_s", "mfu_vs_measured_matmul", "peak_memory_mb"])
    payload = {"settings": {"sizes": sizes, "resolutions": resolutions, "batch_size": args.batch_size,
                            "steps": args.steps, "warmup": args.warmup, "precision": args.precision,
                            "mode": mode, "task": "t2i"},
               "measured_matmul_peak_tflops": peak / 1e12, "table": rows}
    save_result("scaling", device, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
