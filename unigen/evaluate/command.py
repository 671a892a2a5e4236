"""The ``unigen eval`` entry point: load a pipeline directory, run a recipe (or its sweep), print
the headline numbers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from unigen.evaluate.loop import check_out_dir, evaluate_pipeline
from unigen.evaluate.persistence import POINTS_DIR, RUN_NAME
from unigen.evaluate.recipe import load_eval_config, parse_config
from unigen.evaluate.sweep import (_is_headline, _point_label, check_sweep, parse_sweep,
                                   sweep_pipeline)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def evaluate_model(model_dir: str | os.PathLike, recipe: str | os.PathLike,
                   out_dir: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                   sweeps: Sequence[str] = (), resume: bool = False, device: str = "auto",
                   progress: bool = True, reuse: bool = True) -> dict[str, Any]:
    """``unigen eval``: load the pipeline in ``model_dir`` and run the recipe (a sweep when it has a
    ``sweep:`` block or ``sweeps`` are given; ``reuse``: see :func:`sweep_pipeline`)."""
    from unigen.pipeline import UnifiedPipeline

    config = load_eval_config(recipe, overrides)
    parsed = parse_config(config)  # fail on a bad recipe before loading anything
    out = out_dir if out_dir is not None else parsed.out_dir
    if out is None:
        raise ValueError(f"no output directory: pass --out or set out_dir in {recipe}")
    check_out_dir(out)  # before the model loads
    axes = {**parsed.sweep, **parse_sweep(sweeps)}
    if axes:
        check_sweep(config, axes)  # fail on a bad sweep value before loading the model
    if resume and not _has_earlier_run(Path(out), sweep=bool(axes)):
        # a fresh start is what --resume must do then (a sweep killed before its first point), but
        # a mistyped --out would otherwise redo hours of work without a word
        print(f"note: --resume: no earlier run in {out}; starting a fresh one", file=sys.stderr)
    pipe = UnifiedPipeline.from_pretrained(model_dir, device=_resolve_device(device))
    metadata = {"model": str(model_dir), "recipe": str(recipe), "overrides": list(overrides)}
    if axes:
        return sweep_pipeline(pipe, config, out, axes, progress, resume, metadata, reuse=reuse)
    return evaluate_pipeline(pipe, config, out, progress, resume, metadata)


def _has_earlier_run(out: Path, sweep: bool) -> bool:
    """Whether ``out`` holds a run (or a sweep point) that ``--resume`` would continue."""
    if sweep:
        return any((out / POINTS_DIR).glob(f"*/{RUN_NAME}"))
    return (out / RUN_NAME).is_file()


def print_summary(result: Mapping[str, Any]) -> None:
    """The headline numbers and where the report went (what ``unigen eval`` prints)."""
    if "points" in result:
        for run, metrics in zip(result["points"], result["metrics"]):
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if _is_headline(k))
            reused = {}
            for task, source in run.get("reused", {}).items():
                reused.setdefault(source, []).append(task)
            shown += "".join(f" ({', '.join(tasks)} reused from {source})"
                             for source, tasks in reused.items())
            print(f"[{_point_label(run['point'])}] {shown}")
    else:
        for name, value in result["metrics"].items():
            print(f"{name:<40} {value:.4f}")
        for task, trained in result.get("metadata", {}).get("untrained_tasks", {}).items():
            print(f"note: tasks.{task}: the model was not trained on it (its pipeline.json lists "
                  f"{', '.join(trained)})", file=sys.stderr)
    print(f"wrote {result['paths']['report']} and {result['paths']['results']}")
