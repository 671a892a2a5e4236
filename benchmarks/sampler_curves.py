"""Sampler curves (issue #6): accuracy against network calls for MaskGIT, ancestral and confident
decoding, the calls confident decoding needs to match 16-step MaskGIT, and the prefix KV cache's
speed-up for captioning and VQA.

* **t2i**: shapes checker accuracy (GenEval-style ``compositional_accuracy/overall``), or with
  ``--data fashion_mnist`` the class accuracy of a Fashion-MNIST classifier (``--classifier``), of
  ``maskgit`` (Chang et al. 2022), ``ancestral`` (MDLM, Sahoo et al. 2024) and ``confident``
  (Dimple, Yu et al. 2025; Fast-dLLM, Wu et al. 2025) at every step budget of ``--steps``, plus
  ``confident`` at each ``--thresholds`` value with a budget of ``--threshold-budget``, and at the
  values of each ``--confident-rule`` (a joint reveal rule, :mod:`unigen.sampling.reveal_rules`),
  with the sampler options ``--confident-kwargs``; the same guidance everywhere. **VQA**: exact match of the same samplers at ``--vqa-steps``, greedy tokens.
* **Claim (b)**: A = MaskGIT's accuracy at ``--reference-steps``; among confident configurations
  whose accuracy is >= A - ``--tolerance``, the fewest mean calls C; ``calls_ratio`` = MaskGIT's
  calls / C and whether it is >= 2.  Where the points carry FID (``--data fashion_mnist``), a
  confident configuration must also keep FID within ``--fid-tolerance`` (relative) of MaskGIT's:
  greedy decoding can buy accuracy with mode collapse.  VQA likewise against MaskGIT at its
  largest budget.
* **Claim (c)**: captioning and VQA with the prefix KV cache (LaViDa) on and off on the same
  samples and seeds, in ``--caption-steps`` and ``--vqa-cache-steps`` steps: best-of-``--repeats``
  seconds, the speed-up and whether the outputs are identical.

Every configuration is one :func:`unigen.evaluate.sweep_pipeline` point on the same held-out
samples with the same per-sample seeds, so the records, checker verdicts and per-sample
``model_calls`` come from ``unigen.evaluate``; run folders go under ``--work-dir``.  Writes
``benchmarks/results/sampler_curves_<device>.json`` (or ``--out``) and a PNG next to it (accuracy vs
mean network calls, one line per sampler, a t2i and a VQA panel).  Without ``--model`` the network
has random weights of the ``--size`` preset: the timings hold, the accuracies mean nothing (the
JSON says "random weights").

    PYTHONPATH=. python benchmarks/sampler_curves.py --model runs/shapes/pipeline --device cuda
    PYTHONPATH=. python benchmarks/sampler_curves.py --num-samples 8 --steps 2,4 --reference-steps 4
    PYTHONPATH=. python benchmarks/sampler_curves.py --model runs/models/unified_fashion_mnist_cpu \
        --data fashion_mnist --classifier runs/classifiers/fashion_mnist
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root (see benchmarks/sampling.py)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from benchmarks.common import (SIZES, TokenizerDirs, add_common_args, autocast, comma_list,
                               print_table, result_path, save_result, setup)
from benchmarks.flops import synchronize
from benchmarks.sampling import load_or_build
from unigen.evaluate import build_data, sweep_pipeline
from unigen.metrics import Panel, plot_panels
from unigen.pipeline import UnifiedPipeline
from unigen.sampling import build_sampler
from unigen.sampling.reveal_rules import REVEAL_RULES

SAMPLERS = ("maskgit", "ancestral", "confident")  # the default set
KNOWN_SAMPLERS = (*SAMPLERS, "halton")  # --samplers may also name these
GREEDY = {"temperature": 0.0}  # VQA answers: the most likely tokens (reveal order may still draw)


def numbers(text: str, kind: Callable[[str], Any]) -> list[Any]:
    return [kind(v) for v in text.split(",") if v.strip()]


@dataclass(frozen=True)
class CurveData:
    """An evaluation data source and how its text-to-image accuracy is read: ``t2i_metric`` is the
    eval recipe's metric entry (``classifier`` filled in from ``--classifier`` when it has one),
    ``t2i_accuracy`` the result key plotted, ``t2i_extra_metrics`` further metrics to list and
    ``t2i_extra`` the result keys kept per point; ``t2i_fid`` adds FID against the real images of
    the same samples, because an accuracy that a classifier reads off one typical image per class says
    nothing of diversity (greedy decoding can score perfectly while collapsing to modes)."""

    split: str
    t2i_metric: str
    t2i_accuracy: str
    t2i_title: str
    t2i_extra_metrics: tuple[str, ...] = ()
    t2i_extra: tuple[tuple[str, str], ...] = ()  # (point key, result key)
    needs_classifier: bool = False
    t2i_fid: bool = False

    @property
    def point_extras(self) -> tuple[tuple[str, str], ...]:
        """Result keys copied into every t2i point (FID too when the source asks for it)."""
        return self.t2i_extra + ((("fid", "fid"),) if self.t2i_fid else ())


CURVE_DATA = {
    # t2i extras: how often a sampler leaves no object at all (parallel commits of background)
    "shapes": CurveData("heldout", "compositional_accuracy", "compositional_accuracy/overall",
                        "text-to-image (shapes checker)", ("empty_images",),
                        (("sample_accuracy", "compositional_accuracy/sample_accuracy"),
                         ("empty_images", "empty_images"))),
    "fashion_mnist": CurveData("test", "class_accuracy", "class_accuracy",
                               "text-to-image (Fashion-MNIST classifier)",
                               needs_classifier=True, t2i_fid=True),
}
VQA_ACCURACY = "vqa_exact_match"


def accuracy_key(args: argparse.Namespace, task: str) -> str:
    return CURVE_DATA[args.data].t2i_accuracy if task == "t2i" else VQA_ACCURACY


def data_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The eval recipe's ``data:`` block: the same samples for every configuration."""
    return {"source": args.data, "split": args.split, "num_samples": args.num_samples,
            "seed": args.data_seed}


def task_metrics(args: argparse.Namespace, task: str) -> list[Any]:
    if task != "t2i":
        return [VQA_ACCURACY, "model_calls"]
    source = CURVE_DATA[args.data]
    accuracy = ({"name": source.t2i_metric, "classifier": args.classifier}
                if source.needs_classifier else source.t2i_metric)
    return [accuracy, "model_calls", *source.t2i_extra_metrics]


def eval_config(args: argparse.Namespace, task: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One-task eval recipe on the held-out samples: accuracy and network calls."""
    fid = {"fid": True} if task == "t2i" and CURVE_DATA[args.data].t2i_fid else {}
    return {"data": data_spec(args), "seed": args.seed, "batch_size": args.batch_size,
            "grid_size": args.grid_size,
            "tasks": {task: {**settings, **fid, "metrics": task_metrics(args, task)}}}


def run_grid(pipe: UnifiedPipeline, args: argparse.Namespace, task: str, name: str,
             settings: dict[str, Any], axes: dict[str, list[Any]], series: Callable[[dict], str]
             ) -> list[dict[str, Any]]:
    """Evaluate the grid ``axes`` over ``settings`` of ``task`` into ``--work-dir/name``; one point
    per configuration, labelled for the plot by ``series(task settings)``."""
    out = Path(args.work_dir) / name
    with autocast(pipe.device, args.precision):
        result = sweep_pipeline(pipe, eval_config(args, task, settings), out, axes,
                                progress=args.progress, resume=args.resume)
    points = []
    for run, metrics in zip(result["points"], result["metrics"]):
        meta = json.loads((out / run["dir"] / "results.json").read_text())["metadata"]
        used = meta["tasks"][task]
        threshold = rule = None
        if used["sampler"] == "confident":
            sampler = build_sampler("confident", **used["sampler_kwargs"])
            threshold, rule = sampler.threshold, sampler.rule
        points.append({
            "task": task, "series": series(used), "sampler": used["sampler"],
            "num_steps": used["num_steps"], "threshold": threshold, "rule": rule,
            "guidance_scale": used["guidance_scale"], "accuracy": metrics[accuracy_key(args, task)],
            "model_calls": metrics[f"model_calls/{task}"],
            **({k: metrics[v] for k, v in CURVE_DATA[args.data].point_extras}
               if task == "t2i" else {}),
            "seconds": meta["timings"][task]["seconds"], "run_dir": str(out / run["dir"])})
    return points


def t2i_points(pipe: UnifiedPipeline, args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = {"guidance_scale": args.guidance}
    points = run_grid(pipe, args, "t2i", "t2i_steps", settings,
                      {"t2i.sampler": args.samplers, "t2i.num_steps": args.steps},
                      lambda used: used["sampler"])
    if "confident" not in args.samplers:
        return points
    for rule, values in args.confident_rules.items():
        # the threshold rule keeps its historical folder name so --resume finds older runs
        name = "t2i_thresholds" if rule == "threshold" else f"t2i_rule_{rule}"
        label = f"confident ({rule}, {args.threshold_budget} steps max)"
        kwargs = {**args.confident_kwargs, "rule": rule}
        points += run_grid(pipe, args, "t2i", name,
                           {**settings, "sampler": "confident", "num_steps": args.threshold_budget,
                            "sampler_kwargs": kwargs},
                           {"t2i.sampler_kwargs.threshold": values}, lambda used, label=label: label)
    return points


def vqa_points(pipe: UnifiedPipeline, args: argparse.Namespace) -> list[dict[str, Any]]:
    return run_grid(pipe, args, "vqa", "vqa_steps", {"sampler_kwargs": GREEDY},
                    {"vqa.sampler": args.samplers, "vqa.num_steps": args.vqa_steps},
                    lambda used: used["sampler"])


def _brief(point: dict[str, Any]) -> dict[str, Any]:
    keys = ("sampler", "num_steps", "rule", "threshold", "accuracy", "model_calls", "fid")
    return {k: point.get(k) for k in keys if k in point}


def calls_claim(points: Sequence[dict[str, Any]], reference_steps: int, tolerance: float,
                fid_tolerance: float = 0.1) -> dict[str, Any]:
    """Issue #6 (b): does confident decoding reach MaskGIT-``reference_steps`` accuracy (within
    ``tolerance``) with at least 2x fewer mean network calls?  ``calls_ratio`` is MaskGIT's mean
    calls over the fewest of any confident configuration that reaches the accuracy and, when the
    points carry ``fid``, keeps FID at most ``1 + fid_tolerance`` times MaskGIT's."""
    reference = next((p for p in points
                      if p["sampler"] == "maskgit" and p["num_steps"] == reference_steps), None)
    if reference is None:
        return {"measured": False, "reason": f"no maskgit point at {reference_steps} steps"}
    target = reference["accuracy"] - tolerance
    fid_limit = reference["fid"] * (1 + fid_tolerance) if "fid" in reference else None
    reaching = [p for p in points if p["sampler"] == "confident" and p["accuracy"] >= target
                and (fid_limit is None or p["fid"] <= fid_limit)]
    best = min(reaching, key=lambda p: (p["model_calls"], -p["accuracy"]), default=None)
    ratio = reference["model_calls"] / best["model_calls"] if best else None
    return {"measured": True, "reference": _brief(reference), "tolerance": tolerance,
            "target_accuracy": target,
            **({"fid_tolerance": fid_tolerance, "fid_limit": fid_limit}
               if fid_limit is not None else {}),
            "best_confident": _brief(best) if best else None,
            "calls_ratio": ratio, "at_least_2x": ratio is not None and ratio >= 2.0}


Batch = tuple[torch.Tensor, list[str], list[int]]  # images on the device, questions, seeds


def _generate(pipe: UnifiedPipeline, task: str, batches: Sequence[Batch], use_cache: bool,
              num_steps: int, cuda_graphs: bool = False) -> tuple[list[str], list[int]]:
    """Captions or greedy answers for ``batches`` in ``num_steps`` steps, and each sample's
    network calls."""
    texts, calls = [], []
    options = {"use_cache": use_cache, "cuda_graphs": cuda_graphs, "return_calls": True}
    for images, questions, seeds in batches:
        if task == "caption":
            out, n = pipe.caption(images, num_steps=num_steps, seed=seeds, **options)
        else:
            out, n = pipe.answer(images, questions, num_steps=num_steps, seed=seeds,
                                 sampler_kwargs=GREEDY, **options)
        texts += out
        calls += n
    return texts, calls


def time_prefix_cache(pipe: UnifiedPipeline, args: argparse.Namespace) -> dict[str, Any]:
    """Issue #6 (c): captioning and VQA with the prefix KV cache (LaViDa) on and off, best of
    ``--repeats`` (alternating, so drift hits both alike), outputs compared sample by sample.
    Sample ``i`` uses seed ``seed + i`` as in ``unigen.evaluate``; the inputs are prepared on the
    device before the clock starts, so only generation is timed.  With ``--cuda-graphs`` both
    sides replay their steps as CUDA graphs (captured in the warm-up)."""
    data = build_data(data_spec(args), pipe.image_size)
    batches: list[Batch] = []
    for lo in range(0, len(data), args.batch_size):
        samples = [data.sample(i) for i in range(lo, min(lo + args.batch_size, len(data)))]
        batches.append((torch.stack([s.image for s in samples]).to(pipe.device),
                        [s.question for s in samples], [args.seed + s.index for s in samples]))
    out: dict[str, Any] = {}
    steps = {"caption": args.caption_steps, "vqa": args.vqa_cache_steps}
    for task in ("caption", "vqa"):
        best = {True: math.inf, False: math.inf}
        texts: dict[bool, list[str]] = {}
        with torch.inference_mode(), autocast(pipe.device, args.precision):
            for use_cache in (True, False):  # warm-up: kernels, allocator, lazy initialisation
                _generate(pipe, task, batches[:1], use_cache, steps[task], args.cuda_graphs)
            for _ in range(args.repeats):
                for use_cache in (True, False):
                    synchronize(pipe.device)
                    start = time.perf_counter()
                    texts[use_cache], calls = _generate(pipe, task, batches, use_cache,
                                                         steps[task], args.cuda_graphs)
                    synchronize(pipe.device)
                    best[use_cache] = min(best[use_cache], time.perf_counter() - start)
            if args.cuda_graphs:  # the replays must give what eager decoding gives
                eager, _ = _generate(pipe, task, batches, True, steps[task])
        same = [a == b for a, b in zip(texts[True], texts[False])]
        out[task] = {"samples": len(data), "seconds_cached": best[True],
                     "seconds_uncached": best[False], "speedup": best[False] / best[True],
                     "identical": all(same), "identical_fraction": sum(same) / len(same),
                     "mean_calls": sum(calls) / len(calls), "num_steps": steps[task],
                     "cuda_graphs": args.cuda_graphs}
        if args.cuda_graphs:
            out[task]["identical_to_eager"] = eager == texts[True]
    out["at_least_1_8x"] = all(out[t]["speedup"] >= 1.8 for t in ("caption", "vqa"))
    return out


def plot(points: Sequence[dict[str, Any]], path: Path, weights: str, args: argparse.Namespace
         ) -> Path:
    """Accuracy against mean network calls, one line per sampler; a t2i and a VQA panel."""
    panels = []
    mark = "" if weights == "trained" else f" [{weights}]"
    for task, title in (("t2i", f"{CURVE_DATA[args.data].t2i_title}{mark}"),
                        ("vqa", f"VQA (exact match){mark}")):
        series: dict[str, list[dict[str, Any]]] = {}
        for p in points:
            if p["task"] == task:
                series.setdefault(p["series"], []).append(p)
        if series:
            lines = {}
            for label, group in series.items():
                group = sorted(group, key=lambda p: p["model_calls"])
                lines[label] = ([p["model_calls"] for p in group], [p["accuracy"] for p in group])
            panels.append(Panel(title, "mean network calls per sample", accuracy_key(args, task), lines,
                                log_x=True, ylim=(-0.02, 1.02)))
    return plot_panels(panels, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--model", default=None,
                        help="trained UnifiedPipeline directory (default: random weights of --size)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="random-weight model only: default the preset's")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--data", default="shapes", choices=sorted(CURVE_DATA),
                        help="evaluation data: its t2i accuracy is the shapes checker's or, for "
                             "fashion_mnist, the class accuracy of --classifier")
    parser.add_argument("--classifier", default=None,
                        help="domain classifier directory (--data fashion_mnist: "
                             "recipes/classifier_fashion_mnist.yaml exports one)")
    parser.add_argument("--split", default=None,
                        help="data split (default: shapes heldout compositions, fashion_mnist test)")
    parser.add_argument("--data-seed", type=int, default=0, help="which samples of the split")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--steps", default="2,4,8,16,32", help="t2i step budgets")
    parser.add_argument("--thresholds", default="0.5,0.7,0.9,0.95",
                        help="confident thresholds for t2i ('' for none)")
    parser.add_argument("--confident-rule", action="append", default=[], metavar="RULE:V1,V2",
                        help="t2i confident points of another reveal rule (factor, error_budget, ...)"
                             " at these values; repeatable")
    parser.add_argument("--confident-kwargs", type=json.loads, default={}, metavar="JSON",
                        help="ConfidentSampler options of the t2i threshold/rule points, e.g. "
                             "'{\"temperature\": 1, \"choice_temperature\": 4.5, \"schedule\": \"cosine\"}'")
    parser.add_argument("--threshold-budget", type=int, default=32,
                        help="step budget of the t2i confident points (thresholds and rules)")
    parser.add_argument("--vqa-steps", default="1,2,4,8", help="VQA step budgets ('' for no VQA)")
    parser.add_argument("--guidance", type=float, default=2.0, help="t2i guidance scale (all points)")
    parser.add_argument("--reference-steps", type=int, default=16,
                        help="MaskGIT step budget confident decoding must match (t2i)")
    parser.add_argument("--fid-tolerance", type=float, default=0.1,
                        help="points with FID: a confident point counts only with FID at most "
                             "(1 + this) x MaskGIT's")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="accuracy below the MaskGIT reference that still counts as reaching it")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="prefix-cache timings: best of")
    parser.add_argument("--caption-steps", type=int, default=12,
                        help="prefix-cache timings: captioning step budget")
    parser.add_argument("--vqa-cache-steps", type=int, default=4,
                        help="prefix-cache timings: VQA step budget")
    parser.add_argument("--no-cache-timing", action="store_true", help="skip claim (c)")
    parser.add_argument("--cache-only", action="store_true",
                        help="claim (c) alone: no accuracy curves")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="claim (c) with every decoding step a CUDA-graph replay (GPU)")
    parser.add_argument("--grid-size", type=int, default=16, help="sample grid of each run (0: none)")
    parser.add_argument("--work-dir", default=None,
                        help="evaluation runs: records, reports, sample grids (default: next to "
                             "--out as <name>_runs/, else runs/sampler_curves)")
    parser.add_argument("--resume", action="store_true", help="continue runs killed in --work-dir")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    for flag in ("num_samples", "repeats", "caption_steps", "vqa_cache_steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    source = CURVE_DATA[args.data]
    if source.needs_classifier and not args.classifier:
        parser.error(f"--data {args.data} needs --classifier DIR (its t2i accuracy is "
                     f"{source.t2i_metric})")
    args.split = args.split or source.split
    args.samplers = comma_list(args.samplers)
    unknown = sorted(set(args.samplers) - set(KNOWN_SAMPLERS))
    if unknown or not args.samplers:
        parser.error(f"--samplers: choose from {list(KNOWN_SAMPLERS)}, got {args.samplers}")
    args.steps, args.vqa_steps = numbers(args.steps, int), numbers(args.vqa_steps, int)
    args.confident_rules = {"threshold": numbers(args.thresholds, float)}
    for spec in args.confident_rule:
        rule, _, text = spec.partition(":")
        try:
            values = numbers(text, float)
        except ValueError:
            values = []
        if rule.strip() not in REVEAL_RULES or not values:
            parser.error(f"--confident-rule wants RULE:V1,V2 with RULE one of "
                         f"{sorted(REVEAL_RULES.names())}, got {spec!r}")
        args.confident_rules[rule.strip()] = values
    args.confident_rules = {r: v for r, v in args.confident_rules.items() if v}
    try:
        build_sampler("confident", **args.confident_kwargs)
    except (TypeError, ValueError, KeyError) as err:
        parser.error(f"--confident-kwargs: {err}")
    if args.cache_only and args.no_cache_timing:
        parser.error("--cache-only and --no-cache-timing leave nothing to measure")
    if args.cuda_graphs and args.device != "cuda":
        parser.error("--cuda-graphs needs --device cuda")
    if not args.steps and not args.cache_only:
        parser.error("--steps lists no step budget")
    if args.work_dir is None:  # run_all's --results-dir then holds everything a run wrote
        args.work_dir = (str(Path(args.out).with_name(f"{Path(args.out).stem}_runs")) if args.out
                         else "runs/sampler_curves")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = setup(args)
    dirs = None if args.model else TokenizerDirs(SIZES[args.size].fsq_levels)
    pipe, trained = load_or_build("masked", args.model, dirs, args, device)
    weights = "trained" if trained else "random weights"
    if not trained:
        print("random weights: the timings hold, the accuracies mean nothing")
    points = [] if args.cache_only else t2i_points(pipe, args)
    if args.vqa_steps and not args.cache_only:
        points += vqa_points(pipe, args)
    claims = {} if args.cache_only else {
        "t2i": calls_claim([p for p in points if p["task"] == "t2i"], args.reference_steps,
                           args.tolerance, args.fid_tolerance)}
    if args.vqa_steps and not args.cache_only:
        claims["vqa"] = calls_claim([p for p in points if p["task"] == "vqa"],
                                    max(args.vqa_steps), args.tolerance)
    cache = None if args.no_cache_timing else time_prefix_cache(pipe, args)

    if points:
        print_table(points, ["task", "series", "num_steps", "rule", "threshold", "accuracy",
                             "model_calls", *(k for k, _ in CURVE_DATA[args.data].point_extras),
                             "seconds"])
    for task, claim in claims.items():
        if not claim["measured"]:
            print(f"{task}: calls claim not measured ({claim['reason']})")
            continue
        ref, best = claim["reference"], claim["best_confident"]
        reached = (f"confident {best['num_steps']} steps, {best['rule']} {best['threshold']}: "
                   f"{best['model_calls']:.2f} calls" if best else "no confident configuration")
        ratio = "-" if claim["calls_ratio"] is None else f"{claim['calls_ratio']:.2f}x"
        print(f"{task}: maskgit-{ref['num_steps']} accuracy {ref['accuracy']:.4f} with "
              f"{ref['model_calls']:.2f} calls; tolerance {args.tolerance}; {reached}; calls ratio "
              f"{ratio} (>= 2: {claim['at_least_2x']})")
    if cache:
        for task in ("caption", "vqa"):
            c = cache[task]
            print(f"prefix cache, {task}: {c['seconds_uncached']:.3f} s -> {c['seconds_cached']:.3f} s,"
                  f" {c['speedup']:.2f}x, identical outputs: {c['identical']}")

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "progress")}
    seq = pipe.space.sequence
    payload = {"settings": {**settings, "weights": weights, "image_size": pipe.image_size,
                            "num_image_tokens": seq.num_image_tokens,
                            "max_text_len": seq.max_text_len,
                            "accuracy_metrics": {t: accuracy_key(args, t) for t in ("t2i", "vqa")},
                            "vqa_sampler_kwargs": GREEDY},
               "note": ("random weights: timings only, accuracies are meaningless" if not trained
                        else "trained model: accuracy vs network calls"),
               "points": points, "claims": {"calls": claims, "prefix_cache": cache}}
    path = result_path("sampler_curves", device, args.out)
    if points:
        payload["plot"] = str(plot(points, path.with_suffix(".png"), weights, args))
    save_result("sampler_curves", device, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
