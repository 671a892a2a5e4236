"""The host's share of a unified training step, beside a data loader that renders scenes, per
intra-op thread count (issue #8; ``unigen.training.host_threads.HostThreads``).

On a GPU the host builds each step's task batch, masks and noise (CPU tensors of a few hundred rows
by a few hundred positions; ``UnifiedModule``'s ``mixture.build`` and ``plan_masks``) and then
launches the network.  That host share is what is timed here, with the module's own code (the
image codes stay on the CPU, as random ids: on a GPU they and the clean tokens live there), while
a ``ShapesDataModule`` loader renders the next batches in ``--workers`` processes, as in a GPU leg
(``shapes_quality.py`` runs ``min(8, cpus // 2)``).  An H200 profile found these ops at 2-3 ms
each beside 8 rendering workers and 16 intra-op threads (docs/performance.md, "Where the compact
model's step goes").  Run it with ``OMP_WAIT_POLICY=PASSIVE`` in the environment to see the cause:
without OpenMP's spinning pool threads the extra threads cost nothing.
Each thread count is timed over the same number of steps; the JSON gives mean, median, p90 and
max milliseconds a step and each count's mean over the last one's (``--threads all,1``: PyTorch's
default against one thread).

    python benchmarks/host_threads.py                              # this machine's defaults
    python benchmarks/host_threads.py --threads 16,1 --workers 8   # a 16-core GPU host
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import math
import os
import statistics
import time
from typing import Any

import torch

from benchmarks.common import SIZES, TokenizerDirs, build_module, comma_list, print_table, save_result
from benchmarks.train_throughput import DEFAULT_TASKS, parse_tasks

# the GPU legs' loss settings (recipes/presets/unified_task_balance.yaml), which add host work
LEG_SETTINGS = {"complementary_masking": True, "cond_dropout": 0.1, "loss_reduction": "tasks",
                "task_loss_weights": {"t2i": 4.0, "caption": 1.0, "vqa": 1.5}, "answer_len": 3}


def thread_counts(items: list[str]) -> list[int]:
    """``["all", "1"]`` -> ``[torch's default count, 1]``."""
    default = torch.get_num_threads()
    counts = [default if item == "all" else int(item) for item in items]
    if not counts or min(counts) < 1:
        raise ValueError(f"--threads takes counts >= 1 or 'all', got {items}")
    return counts


def host_step(module, batch: dict[str, Any], codes: torch.Tensor, step: int) -> None:
    """One training step's host work: the module's task batch and masking plan."""
    inputs = module.task_inputs({**{k: v for k, v in batch.items() if k != "image"}, "codes": codes})
    gen = torch.Generator().manual_seed(step)
    tb, _ = module.mixture.build(inputs, module.space, gen)
    module.plan_masks(tb, gen)


def time_steps(module, batches, steps: int, warmup: int) -> list[float]:
    """Milliseconds of host work per step; the loader's workers render the next batches meanwhile."""
    times = []
    for step in range(warmup + steps):
        batch = next(batches)
        codes = torch.randint(0, module.image_tokenizer.codebook_size,
                              (len(batch["caption"]), *module.space.sequence.grid))
        start = time.perf_counter()
        host_step(module, batch, codes, step)
        if step >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def summarize(threads: int, times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {"threads": threads, "steps": len(times), "mean_ms": statistics.fmean(times),
            "median_ms": statistics.median(times),
            "p90_ms": ordered[math.ceil(0.9 * len(ordered)) - 1],  # nearest rank
            "max_ms": ordered[-1]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="compact", choices=sorted(SIZES),
                        help="model size preset (its sequence layout and batch; the network is not run)")
    parser.add_argument("--threads", type=comma_list, default=["all", "1"],
                        help="intra-op thread counts to time, 'all' = torch's default (default all,1)")
    parser.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) // 2)),
                        help="loader processes rendering scenes meanwhile (default min(8, cpus // 2))")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the size's batch")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help="task mixture, name=ratio,...")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/host_threads_cpu.json)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        counts = thread_counts(args.threads)
    except ValueError as err:
        parser.error(str(err))
    size = SIZES[args.size]
    batch_size = args.batch_size or size.batch_size
    from unigen.data.shapes_datamodule import ShapesDataModule

    dirs = TokenizerDirs(size.fsq_levels)
    module = build_module("masked", dirs, size, size.image_size, args.seed,
                          tasks=parse_tasks(args.tasks), **LEG_SETTINGS)
    data = ShapesDataModule(image_size=size.image_size, batch_size=batch_size,
                            num_workers=args.workers, num_train=batch_size * 10_000, seed=args.seed)
    data.setup("fit")
    batches = iter(data.train_dataloader())
    rows = []
    for n in counts:
        torch.set_num_threads(n)
        rows.append(summarize(n, time_steps(module, batches, args.steps, args.warmup)))
        print(f"threads {n}: {rows[-1]['mean_ms']:.1f} ms a step (median {rows[-1]['median_ms']:.1f}, "
              f"max {rows[-1]['max_ms']:.1f})", flush=True)
    for row in rows:
        row["mean_over_last"] = row["mean_ms"] / rows[-1]["mean_ms"]
    print_table(rows, ["threads", "steps", "mean_ms", "median_ms", "p90_ms", "max_ms", "mean_over_last"])
    payload = {"settings": {"size": args.size, "batch_size": batch_size, "image_size": size.image_size,
                            "workers": args.workers, "tasks": parse_tasks(args.tasks),
                            "steps": args.steps, "warmup": args.warmup, **LEG_SETTINGS,
                            "timed": "task batch + masking plan (host work of one step)"},
               "results": rows}
    save_result("host_threads", torch.device("cpu"), payload, args.out)
    return payload


if __name__ == "__main__":
    main()
