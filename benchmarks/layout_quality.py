"""Text to image in one stage or two (caption -> layout -> image), on the held-out compositions.

A model trained with the layout modality (``recipes/layout_shapes_cpu.yaml``) draws each held-out
caption twice with the same seed:

- **direct**: ``text_to_image`` (MaskGIT, CFG);
- **two-stage**: ``run_task("t2layout")`` plans a layout (MaskGIT: confident decoding commits
  every slot to its likeliest value, an empty cell, and plans empty scenes), then
  ``run_task("layout2i")`` draws it (the same image sampler and guidance).

Both images are scored by the pixel checker against the caption's facts (what ``unigen eval``'s
t2i compositional accuracy counts), and the two-stage gain is reported per sample with its paired
standard error.  Also measured, on the same scenes: the plan itself (the planned layout rendered
exactly by the shapes renderer, checked against the caption), the drawing of a layout (the
checker's exhaustive scene check of ``layout2i`` on the true layout, and on the plan) and scene
parsing (``i2layout`` on the true images, confident decoding: cell accuracy, object recall,
exact match).

Writes ``benchmarks/results/layout_quality_<device>.json`` (or ``--out``) and a grid of the first
samples (caption, plan, direct and two-stage drawings with the checker's verdicts) beside it.

    PYTHONPATH=. python benchmarks/layout_quality.py --model runs/models/layout_shapes_cpu
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.common import result_path, save_result  # noqa: E402
from unigen.data.checker import check, check_scene, parse_caption  # noqa: E402
from unigen.data.shapes import ShapesWorld, render_tensor  # noqa: E402
from unigen.modalities import layout_scores  # noqa: E402
from unigen.pipeline import UnifiedPipeline  # noqa: E402
from unigen.visual import captioned_grid, save_png  # noqa: E402


def mean_and_error(values: Sequence[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "standard_error": math.sqrt(var / n)}


def held_out(num: int, size: int, seed: int = 0) -> dict[str, list]:
    """The first ``num`` held-out scenes: captions (the world's caption draw), scenes, images."""
    world = ShapesWorld("heldout", seed)
    scenes = [world.scene(i) for i in range(num)]
    return {"caption": [world.caption(i, s) for i, s in enumerate(scenes)], "scene": scenes,
            "image": torch.stack([render_tensor(s, size) for s in scenes])}


def run(pipe: UnifiedPipeline, data: dict[str, list], batch_size: int, image_steps: int,
        layout_steps: int, guidance: float, seed: int, progress: bool = True,
        plan_sampler: str = "maskgit") -> dict[str, Any]:
    """Per-sample scores of every measurement, and the first batch's images for the grid."""
    rows: dict[str, list[float]] = {k: [] for k in (
        "direct", "two_stage", "plan", "two_stage_follows_plan", "layout2i_true_scene")}
    parsed, truth, first = [], [], None
    image = {"num_steps": image_steps, "guidance_scale": guidance, "output": "tensor"}
    n = len(data["caption"])
    for start in tqdm(range(0, n, batch_size), desc="layout quality", disable=not progress):
        sl = slice(start, start + batch_size)
        captions, scenes = data["caption"][sl], data["scene"][sl]
        seeds = range(seed + start, seed + start + len(captions))
        queries = [parse_caption(c) for c in captions]
        direct = pipe.text_to_image(captions, seed=seeds, **image)
        plan = pipe.run_task("t2layout", {"text": captions}, num_steps=layout_steps,
                             sampler=plan_sampler, seed=seeds)
        drawn = pipe.run_task("layout2i", {"layout": plan["layout"]}, seed=seeds, **image)["image"]
        from_truth = pipe.run_task("layout2i", {"layout": scenes}, seed=seeds, **image)["image"]
        parse = pipe.run_task("i2layout", {"image": data["image"][sl]}, num_steps=layout_steps,
                              seed=seeds)  # the task's own sampler: confident
        size = pipe.image_size
        for i, q in enumerate(queries):
            rows["direct"].append(float(check(direct[i].cpu(), q).correct))
            rows["two_stage"].append(float(check(drawn[i].cpu(), q).correct))
            rows["plan"].append(float(check(render_tensor(plan["layout"][i], size), q).correct))
            rows["two_stage_follows_plan"].append(float(check_scene(drawn[i].cpu(),
                                                                    plan["layout"][i]).correct))
            rows["layout2i_true_scene"].append(float(check_scene(from_truth[i].cpu(),
                                                                 scenes[i]).correct))
        parsed.append(parse["layout_codes"].cpu())
        truth.append(pipe.modalities["layout"].encode(scenes))
        if first is None:
            first = {"captions": captions, "plans": plan["layout"], "direct": direct.cpu(),
                     "two_stage": drawn.cpu(), "rows": {k: v[:len(captions)] for k, v in rows.items()}}
    diffs = [a - b for a, b in zip(rows["two_stage"], rows["direct"])]
    return {"scores": {k: mean_and_error(v) for k, v in rows.items()},
            "two_stage_minus_direct": mean_and_error(diffs),
            "i2layout": layout_scores(torch.cat(parsed), torch.cat(truth)),
            "first": first}


def save_grid(first: dict[str, Any], path: Path, count: int = 8) -> None:
    """Caption, then the direct drawing and the two-stage drawing with the checker's verdicts."""
    ok = {True: "OK", False: "NO"}
    images, labels = [], []
    for i in range(min(count, len(first["captions"]))):
        images += [first["direct"][i], first["two_stage"][i]]
        labels += [f"direct {ok[bool(first['rows']['direct'][i])]}: {first['captions'][i]}",
                   f"via layout {ok[bool(first['rows']['two_stage'][i])]}: "
                   f"{first['captions'][i]}"]
    save_png(captioned_grid(torch.stack(images), labels, ncol=4), path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="pipeline directory of a layout model")
    parser.add_argument("--num-samples", type=int, default=500, help="held-out scenes")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--image-steps", type=int, default=16, help="MaskGIT steps of an image")
    parser.add_argument("--layout-steps", type=int, default=9, help="confident steps of a layout")
    parser.add_argument("--guidance", type=float, default=2.0, help="CFG scale of the images")
    parser.add_argument("--plan-sampler", default="maskgit",
                        help="sampler of the caption -> layout plan (confident plans empty scenes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.num_samples < 2 or args.batch_size < 1:
        raise SystemExit("need --num-samples >= 2 and --batch-size >= 1")
    pipe = UnifiedPipeline.from_pretrained(args.model)
    missing = [t for t in ("t2layout", "layout2i", "i2layout")
               if f"<{t}>" not in pipe.space.vocab.specials]
    if "layout" not in pipe.modalities or missing:
        raise SystemExit(f"{args.model} is not a layout model (it needs the layout modality and "
                         f"the tasks t2layout, layout2i, i2layout; recipes/layout_shapes_cpu.yaml)")
    data = held_out(args.num_samples, pipe.image_size)
    started = time.perf_counter()
    result = run(pipe, data, args.batch_size, args.image_steps, args.layout_steps, args.guidance,
                 args.seed, plan_sampler=args.plan_sampler)
    seconds = time.perf_counter() - started
    device = torch.device("cpu")
    grid = result_path("layout_quality", device, args.out).with_suffix(".png")
    save_grid(result.pop("first"), grid)
    payload = {"model": str(args.model), "split": "heldout", "settings": vars(args),
               "seconds": round(seconds, 1), "grid": grid.name, **result}
    save_result("layout_quality", device, payload, args.out)
    s = result["scores"]
    print(f"held-out t2i checker accuracy: direct {s['direct']['mean']:.3f}, via a layout "
          f"{s['two_stage']['mean']:.3f} (difference {result['two_stage_minus_direct']['mean']:+.3f}"
          f" +- {result['two_stage_minus_direct']['standard_error']:.3f}); plan {s['plan']['mean']:.3f}, "
          f"layout2i on true layouts {s['layout2i_true_scene']['mean']:.3f}, i2layout cells "
          f"{result['i2layout']['cell_accuracy']:.3f}")
    return payload


if __name__ == "__main__":
    main()
