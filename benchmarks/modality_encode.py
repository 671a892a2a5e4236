"""What a further modality's ``encode`` costs the training step, on the main process vs in the loader.

The layout modality parses each sample's scene JSON into codes (``ShapesLayout.encode``).  Done in
the training step (``UnifiedModule.task_inputs`` on a plain batch) that is host time every step,
during which a fast GPU waits; with a data module that takes the model's batch transform
(:mod:`unigen.data.batch_transforms`) the loader's workers make the codes and the step only picks
them out of the batch.  This times, per batch size, the step's segment codes both ways with the
step's own code (:func:`~unigen.data.batch_transforms.segment_codes`, then the copy to the device),
their ratio, and what the workers' collate spends instead (beside ``default_collate``).

    PYTHONPATH=. python benchmarks/modality_encode.py --threads 1
    PYTHONPATH=. python benchmarks/modality_encode.py --batch-sizes 64,256,1024 --steps 50
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_device_args, comma_list, median, print_table, save_result, setup,
)
from unigen.data.batch_transforms import (  # noqa: E402
    EncodeModalities, TransformCollate, codes_key, segment_codes,
)
from unigen.data.shapes import ShapesWorld  # noqa: E402
from unigen.modalities import ShapesLayout  # noqa: E402
from unigen.transfer import to_device  # noqa: E402

SEGMENT = "layout"


def ms_per_call(fn: Callable[[], Any], steps: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean wall milliseconds of ``steps`` calls (one warm-up call)."""
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        runs.append((time.perf_counter() - start) * 1e3 / steps)
    return median(runs)


def measure(batch_size: int, steps: int, repeats: int, device: torch.device, seed: int
            ) -> dict[str, Any]:
    world, layout = ShapesWorld("train", seed), ShapesLayout()
    scenes = [world.scene(i).to_json() for i in range(batch_size)]  # the data modules' ``scene``
    raw = {"scene": scenes}
    made = {"scene": scenes, codes_key(SEGMENT): to_device(layout.encode(scenes), device)}

    def step(batch: dict[str, Any]) -> Callable[[], Any]:
        # what UnifiedModule.task_inputs does per modality (the batch is already on the device)
        return lambda: to_device(segment_codes(batch, SEGMENT, layout), device)

    host_ms = ms_per_call(step(raw), steps, repeats)
    precomputed_ms = ms_per_call(step(made), steps, repeats)
    items = [{"scene": s, "index": i} for i, s in enumerate(scenes)]
    collate = TransformCollate((EncodeModalities({SEGMENT: layout}),))
    worker_ms = (ms_per_call(lambda: collate(items), steps, repeats)
                 - ms_per_call(lambda: default_collate(items), steps, repeats))
    return {"batch": batch_size, "objects": sum(len(world.scene(i).objects) for i in range(batch_size)),
            "host_encode_ms_per_step": host_ms, "precomputed_ms_per_step": precomputed_ms,
            "host_over_precomputed": host_ms / precomputed_ms,
            "worker_collate_extra_ms_per_batch": worker_ms}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=lambda text: [int(b) for b in comma_list(text)],
                        default=[64, 256],
                        help="comma-separated batch sizes (layouts per step)")
    parser.add_argument("--steps", type=int, default=20, help="calls per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is kept")
    add_device_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    rows = [measure(b, args.steps, args.repeats, device, args.seed) for b in args.batch_sizes]
    print_table(rows, ["batch", "objects", "host_encode_ms_per_step", "precomputed_ms_per_step",
                       "host_over_precomputed", "worker_collate_extra_ms_per_batch"])
    payload = {"settings": vars(args), "rows": rows,
               "note": "wall ms of the training step's segment codes for the shapes layout: parsed "
                       "on the main process (plain batch) vs taken from the batch the loader's "
                       "workers encoded (unigen.data.batch_transforms); the workers' collate pays "
                       "worker_collate_extra_ms_per_batch instead, off the step's critical path"}
    save_result("modality_encode", device, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
