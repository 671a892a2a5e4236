"""Captioning and VQA with the text vocabulary only vs the whole vocabulary, in one run.

Text positions may only emit text ids, yet a unified head scores every image code too: with the
shapes FSQ tokenizer's 15,360 codes and ~100 words, 99% of a text step's head projection and sampler
work lands on ids the legal bias then sets to -inf.  ``UnifiedPipeline`` now asks the head for the
text range alone when a task decodes only text (``vocab_limit``); this benchmark times captioning and
VQA both ways on the same pipeline, seeds and images, and checks that the outputs are identical.

    PYTHONPATH=. python benchmarks/text_decoding.py --threads 1                      # random tiny model
    PYTHONPATH=. python benchmarks/text_decoding.py --model runs/models/understand_shapes_cpu
    PYTHONPATH=. python benchmarks/text_decoding.py --device cuda --size 34m --batch-size 256
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

from benchmarks.common import (SIZES, TokenizerDirs, add_common_args, build_module, median,  # noqa: E402
                               print_table, save_result, setup)
from unigen.data.shapes import ShapesDataset  # noqa: E402
from unigen.pipeline import UnifiedPipeline  # noqa: E402

# 8*8*8*6*5 = 15,360 codes: the codebook of recipes/tokenizer_fsq_shapes.yaml
DEFAULT_FSQ_LEVELS = "8,8,8,6,5"


def load_pipeline(args: argparse.Namespace, device: torch.device
                  ) -> tuple[UnifiedPipeline, dict[str, Any], TokenizerDirs | None]:
    """The pipeline, what it is, and (random weights) the temporary tokenizer files behind it."""
    if args.model:
        pipe = UnifiedPipeline.from_pretrained(args.model).to(device)
        return pipe, {"model": args.model, "weights": "trained"}, None
    dirs = TokenizerDirs([int(v) for v in args.fsq_levels.split(",")])
    module = build_module("masked", dirs, SIZES[args.size], args.image_size, args.seed,
                          tasks={"caption": 1.0, "vqa": 1.0}, prefix_attention=True)
    pipe = module.to_pipeline().to(device)
    return pipe, {"model": f"random {args.size}", "weights": "random", "fsq_levels": args.fsq_levels}, dirs


def timed_pair(run: Callable[[], Any], pipe: UnifiedPipeline, repeats: int, device: torch.device
               ) -> tuple[float, float, Any, Any]:
    """Median seconds of ``run`` with the text vocabulary only and with every id, the two runs
    interleaved (so drifts in machine load hit both), plus one output of each to compare."""
    def full_vocabulary() -> Any:
        pipe.vocab_limit = lambda target: None  # the whole vocabulary, as before
        try:
            return run()
        finally:
            del pipe.vocab_limit

    outputs = (run(), full_vocabulary())  # warm-up, and the outputs to compare
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((run, times[0]), (full_vocabulary, times[1])):
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            bucket.append(time.perf_counter() - start)
    return median(times[0]), median(times[1]), *outputs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--model", default=None, help="a saved pipeline (default: random weights of --size)")
    parser.add_argument("--fsq-levels", default=DEFAULT_FSQ_LEVELS, help="random model's image codebook")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--caption-steps", type=int, default=12)
    parser.add_argument("--vqa-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = setup(args)
    pipe, model_info, _tokenizer_files = load_pipeline(args, device)  # the files live until main returns
    ds = ShapesDataset("val", args.batch_size, pipe.image_size, seed=args.seed)
    images = torch.stack([ds[i]["image"] for i in range(args.batch_size)])
    questions = [ds[i]["question"] for i in range(args.batch_size)]
    tasks = {
        "caption": lambda: pipe.caption(images, num_steps=args.caption_steps, seed=list(range(args.batch_size))),
        "vqa": lambda: pipe.answer(images, questions, num_steps=args.vqa_steps, seed=list(range(args.batch_size)),
                                   sampler_kwargs={"temperature": 0.0}),
    }
    vocab = pipe.transformer.vocab
    rows = []
    for name, run in tasks.items():
        limited_s, full_s, limited, full = timed_pair(run, pipe, args.repeats, device)
        rows.append({"task": name, "scored_ids_limited": vocab.text_size, "scored_ids_full": vocab.total_size,
                     "seconds_limited": limited_s, "seconds_full": full_s, "speedup": full_s / limited_s,
                     "identical": limited == full})
    print_table(rows, ["task", "scored_ids_limited", "scored_ids_full", "seconds_limited", "seconds_full",
                       "speedup", "identical"])
    payload = {"settings": {**vars(args), **model_info}, "rows": rows,
               "note": "end-to-end pipe.caption / pipe.answer (image encoding included), prefix cache on"}
    save_result("text_decoding", device, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
