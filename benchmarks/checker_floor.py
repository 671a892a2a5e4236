"""How the shapes checker's shape-score floor moves a model's text-to-image numbers.

The checker names an object by the best-fitting shape model when its soft IoU reaches
``MIN_SHAPE_SCORE`` (0.5); below, the object is ``unknown``.  Clean renders score 0.86 or more and
tokenizer round trips 0.80 or more, while blobs (merged circles, ellipses, smears) score 0.58-0.76
and can pass as circles or diamonds.  This script redraws an earlier ``unigen eval`` run's
text-to-image samples (same prompts and seeds, so the verdicts at the default floor must equal the
recorded ones, which it checks) and scores them at each floor, GenEval-style and exact (nothing but
the named objects).

    PYTHONPATH=. python benchmarks/checker_floor.py --model runs/models/t2i_shapes_8x8_cpu_muon \\
        --eval runs/eval/t2i_8x8_cpu_muon_1000 --num-samples 300 --floors 0.5,0.6,0.7,0.78
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.common import save_result  # noqa: E402
from unigen.data.checker import (  # noqa: E402
    MIN_SHAPE_SCORE, _summarise, detect, evaluate_query, named_objects, parse_caption,
)


def verdicts(image: torch.Tensor, prompt: str, floor: float) -> tuple[bool, bool]:
    """(GenEval-style correct, exact) of one image at shape-score ``floor``."""
    query = parse_caption(prompt)
    found = detect(image, min_shape_score=floor)
    result = _summarise(evaluate_query(query, found), query.category, found, named_objects(query))
    return result.correct, result.exact


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the pipeline the eval run scored")
    parser.add_argument("--eval", required=True, help="that run's output directory (records.jsonl)")
    parser.add_argument("--num-samples", type=int, default=300)
    parser.add_argument("--floors", default="0.5,0.6,0.7,0.78")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from unigen.pipeline import UnifiedPipeline

    floors = [float(f) for f in args.floors.split(",")]
    run = json.loads((Path(args.eval) / "results.json").read_text())
    t2i = run["metadata"]["tasks"]["t2i"]
    records = [json.loads(line) for line in (Path(args.eval) / "records.jsonl").read_text().splitlines()]
    records = [r for r in records if r["task"] == "t2i"][:args.num_samples]
    pipe = UnifiedPipeline.from_pretrained(args.model)
    images = []
    for i in range(0, len(records), args.batch_size):
        chunk = records[i:i + args.batch_size]
        images.append(pipe.text_to_image([r["prompt"] for r in chunk], num_steps=t2i["num_steps"],
                                         guidance_scale=t2i["guidance_scale"], sampler=t2i["sampler"],
                                         sampler_kwargs=t2i.get("sampler_kwargs") or {},
                                         guidance_kwargs=t2i.get("guidance_kwargs") or {},
                                         seed=[r["seed"] for r in chunk], output="tensor").float().clamp(0, 1))
    images = torch.cat(images)
    n = len(records)
    table = []
    for floor in floors:
        scored = [verdicts(img, r["prompt"], floor) for r, img in zip(records, images)]
        row = {"floor": floor, "accuracy": sum(c for c, _ in scored) / n, "exact_accuracy": sum(e for _, e in scored) / n}
        if floor == MIN_SHAPE_SCORE:
            row["agrees_with_records"] = sum(c == r["correct"] for (c, _), r in zip(scored, records))
        table.append(row)
        print(f"floor {floor:.2f}: accuracy {row['accuracy']:.3f}, exact {row['exact_accuracy']:.3f}", flush=True)
    payload = {"settings": {"model": args.model, "eval": args.eval, "num_samples": n, "t2i": t2i},
               "default_floor": MIN_SHAPE_SCORE, "table": table}
    save_result("checker_floor", torch.device("cpu"), payload, args.out)
    return payload


if __name__ == "__main__":
    main()
