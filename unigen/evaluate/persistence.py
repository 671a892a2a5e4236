"""Persistence of a run: the folder's file names, records (JSONL), image-metric state
(safetensors), the run identity (recipe, model and metric-weights fingerprints) that a resume must
match, and which files of a folder an earlier run wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from unigen import io
from unigen.evaluate.config import _RUN_ONLY_KEYS, _RUN_ONLY_TASK_KEYS, EvalConfig
from unigen.evaluate.tasks import EVAL_TASKS
from unigen.metrics.features import without_locations
from unigen.metrics.report import (CATEGORY_PLOT, REPORT_NAME, RESULTS_NAME, SWEEP_PLOT, json_line,
                                   json_safe)

RECORDS_NAME, STATE_NAME, RUN_NAME = "records.jsonl", "metric_state.safetensors", "run.json"
SAMPLES_DIR, POINTS_DIR = "samples", "points"
# metric options that name a network's weights: the run identity holds the metric's describe()
# (with the weights' sha1) instead, so the same weights read from another path still resume
RESOURCE_OPTIONS = ("extractor", "clip", "classifier")
_SAMPLE_PNG = re.compile(r"\d{6}\.png")  # samples/<task>/NNNNNN.png, kept for the grids


class RecordLog:
    """Append-only JSONL of per-sample records. Appends are flushed and fsynced, so after a kill
    only the last line can be torn (it lacks its newline); iterating skips such a line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    if not line.endswith("\n"):  # only the last line can lack it
                        return
                    raise ValueError(f"{self.path} line {n} is not a JSON record") from None

    def rewrite(self, records: Sequence[Mapping[str, Any]]) -> None:
        io.write_text(self.path, "".join(json_line(r) + "\n" for r in records))

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json_line(r) + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())


def _state_tensors(metrics: Mapping[str, Mapping[str, Any]], done: Mapping[str, int]
                   ) -> dict[str, Tensor]:
    out = {f"done/{task}": torch.tensor(n) for task, n in done.items()}
    for task, by_name in metrics.items():
        for name, metric in by_name.items():
            for key, value in metric.metric_state.items():
                if isinstance(value, list):  # e.g. KID features: cat-reduced lists of [n, d]
                    if not value:
                        continue
                    value = torch.cat(value)
                out[f"{task}/{name}/{key}"] = value
    return out


def _restore_state(metrics: Mapping[str, Mapping[str, Any]], state: Mapping[str, Tensor]) -> None:
    for task, by_name in metrics.items():
        for name, metric in by_name.items():
            incoming = {}
            for key, value in metric.metric_state.items():
                saved = state.get(f"{task}/{name}/{key}")
                if isinstance(value, list):
                    incoming[key] = [] if saved is None else [saved.to(metric.device)]
                elif saved is None:
                    raise ValueError(f"{STATE_NAME} lacks state {key!r} of {task}/{name}; run "
                                     "without --resume to start over")
                else:
                    incoming[key] = saved.to(value)
            metric.merge_state(incoming)  # a fresh metric plus the saved state = the saved state


def _fingerprint(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(pipe) -> str:
    """sha1 of the transformer and image tokenizer weights (a resumed run must use the same
    model)."""
    digest = hashlib.sha1()
    for part in (pipe.transformer, pipe.image_tokenizer):
        for key, value in sorted(part.state_dict().items()):
            digest.update(key.encode())
            raw = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def identity_recipe(cfg: EvalConfig, described: Collection[tuple[str, str]] = ()
                    ) -> dict[str, Any]:
    """The recipe keys that decide a run's numbers: not the run-only keys, nor a task's
    ``cuda_graphs`` (graph replays give the eager tokens), so a run resumes across them. The
    paths of networks are not either: ``resources:`` and the weights options
    (:data:`RESOURCE_OPTIONS`) of the metrics in ``described`` (``(task, metric)`` pairs) are
    identified by what the networks are (:func:`resource_identity`), not where they lie."""
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in _RUN_ONLY_KEYS and k != "resources"}
    recipe["tasks"] = {name: {k: v for k, v in task.items() if k not in _RUN_ONLY_TASK_KEYS}
                       for name, task in recipe["tasks"].items()}
    for name, task in recipe["tasks"].items():
        task["metrics"] = [
            {k: v for k, v in entry.items() if k not in RESOURCE_OPTIONS}
            if isinstance(entry, Mapping) and (name, entry.get("name")) in described else entry
            for entry in task["metrics"]]
    return json_safe(recipe)


def resource_identity(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"<task>/<metric>": describe() less paths}`` of every live metric that describes its
    networks (feature extractor, CLIP, classifier: with the sha1 of their weights)."""
    return {f"{task}/{name}": without_locations(metric.describe())
            for task, by_name in metrics.items() for name, metric in by_name.items()
            if callable(getattr(metric, "describe", None))}


def _run_identity(cfg: EvalConfig, pipe, metrics: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """What a resumed run must share with the earlier one: recipe, model weights and, per image
    metric, the networks it computes with (``metrics``: task -> name -> live metric)."""
    resources = resource_identity(metrics or {})
    recipe = identity_recipe(cfg, {tuple(key.split("/", 1)) for key in resources})
    return {"recipe": recipe, "recipe_sha1": _fingerprint(recipe),
            "model_sha1": model_fingerprint(pipe), "resources": resources,
            "resources_sha1": _fingerprint(resources)}


def run_outputs(out: Path) -> list[Path]:
    """The files in ``out`` that ``unigen eval`` writes (fixed names: records, state, run identity,
    results, report, plots, grids, the grids' ``samples/<task>/NNNNNN.png``); whatever else lies
    there is not eval's and is never listed."""
    names = [RECORDS_NAME, STATE_NAME, RUN_NAME, RESULTS_NAME, REPORT_NAME, CATEGORY_PLOT,
             *(f"samples_{task}.png" for task in EVAL_TASKS.names())]
    found = [out / name for name in names if (out / name).is_file()]
    prefix, suffix = SWEEP_PLOT.split("{name}")
    found += sorted(p for p in out.glob(f"{prefix}*{suffix}") if p.is_file())
    for task in EVAL_TASKS.names():
        folder = out / SAMPLES_DIR / task
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir()
                            if p.is_file() and _SAMPLE_PNG.fullmatch(p.name))
    return found


def remove_run_outputs(out: Path, resuming: bool = False) -> None:
    """Delete :func:`run_outputs`, then the sample folders left empty; ``resuming`` keeps what a
    resumed run continues from (records, metric state, the grids' sample images)."""
    kept = {out / RECORDS_NAME, out / STATE_NAME} if resuming else set()
    for path in run_outputs(out):
        if path not in kept and not (resuming and path.parent.parent == out / SAMPLES_DIR):
            path.unlink()
    for folder in [out / SAMPLES_DIR / t for t in EVAL_TASKS.names()] + [out / SAMPLES_DIR]:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    return where or "value"
