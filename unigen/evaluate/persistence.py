"""Persistence of a run: the folder's file names, records (JSONL), image-metric state
(safetensors), the run identity (recipe, model and metric-weights fingerprints) that a resume must
match, each task's identity (what a sweep's later point must match to reuse the task from a
finished earlier run, :func:`finished_task`), and which files of a folder an earlier run wrote.
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
from unigen.evaluate.recipe import shared_arguments
from unigen.evaluate.segment_tasks import eval_task, eval_task_names
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


def pipeline_description(pipe, model_sha1: str) -> dict[str, Any]:
    """The model as a task identity names it: its weights' fingerprint (:func:`model_fingerprint`)
    and what else of the pipeline shapes its outputs (class, image size, transformer config, text
    vocabulary size)."""
    text = getattr(pipe, "text_tokenizer", None)
    return {"sha1": model_sha1, "class": f"{type(pipe).__module__}.{type(pipe).__qualname__}",
            "image_size": getattr(pipe, "image_size", None),
            "transformer": json_safe(getattr(pipe.transformer, "config", None)),
            "text_vocab_size": getattr(text, "vocab_size", None)}


def task_identities(cfg: EvalConfig, recipe: Mapping[str, Any], resources: Mapping[str, Any],
                    model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task, everything that decides its records, metric state, sample images and numbers:
    its own settings (with ``cuda_graphs``), every recipe key outside ``tasks:`` that is not a
    run-only key (data, seed, grid_size, ...) plus ``batch_size``, the model
    (:func:`pipeline_description`), the networks its metrics compute with (described, and the
    ``resources:`` entries they are given), and the identities of the tasks it reads
    (``TaskSpec.inputs_from``).  Two runs whose task identities are equal compute that task
    identically, so a sweep reuses its results (speed-only keys count too: a sweep over them
    measures the timings of every task).

    ``recipe`` and ``resources`` are :func:`identity_recipe` and :func:`resource_identity`."""
    common = {k: v for k, v in recipe.items() if k != "tasks"}
    common.update(batch_size=cfg.batch_size, model=dict(model))
    every_resource = json_safe(dataclasses.asdict(cfg.resources))
    out: dict[str, dict[str, Any]] = {}

    def identity(task: str, reading: tuple[str, ...]) -> dict[str, Any] | None:
        if task not in cfg.tasks:
            return None  # a task read but not in the recipe: part of the key as absent
        if task in reading:
            raise ValueError(f"eval tasks read each other's outputs in a cycle: "
                             f"{' -> '.join((*reading, task))}")
        if task not in out:
            settings = cfg.tasks[task]
            own = dict(recipe["tasks"][task])
            own.update({k: getattr(settings, k) for k in _RUN_ONLY_TASK_KEYS})
            inputs = eval_task(task).inputs_from
            out[task] = {
                **common, "task": task, "settings": own,
                "resources": {k: v for k, v in resources.items()
                              if k.split("/", 1)[0] == task},
                "shared_resources": {k: every_resource[k]
                                     for k in sorted(shared_arguments(settings))},
                "inputs": {t: identity(t, (*reading, task)) for t in inputs}}
        return out[task]

    for task in cfg.tasks:
        identity(task, ())
    return {task: out[task] for task in cfg.tasks}


def _run_identity(cfg: EvalConfig, pipe, metrics: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """What a resumed run must share with the earlier one: recipe, model weights and, per image
    metric, the networks it computes with (``metrics``: task -> name -> live metric); and per
    task the fingerprint of :func:`task_identities` (``task_sha1``), which a sweep's later point
    must match to reuse that task's results."""
    resources = resource_identity(metrics or {})
    recipe = identity_recipe(cfg, {tuple(key.split("/", 1)) for key in resources})
    model_sha1 = model_fingerprint(pipe)
    tasks = task_identities(cfg, recipe, resources, pipeline_description(pipe, model_sha1))
    return {"recipe": recipe, "recipe_sha1": _fingerprint(recipe),
            "model_sha1": model_sha1, "resources": resources,
            "resources_sha1": _fingerprint(resources),
            "task_sha1": {task: _fingerprint(value) for task, value in tasks.items()}}


def finished_task(source: Path, task: str, task_sha1: str, num_samples: int,
                  metrics: Mapping[str, Any]
                  ) -> tuple[list[dict[str, Any]], dict[str, Tensor]] | None:
    """The records of ``task`` and its image-metric state (``metrics``: name -> live metric) in
    the finished run ``source``, when that run computed the task exactly as this one would (its
    ``run.json`` holds the same ``task_sha1``) and holds all of it: results written, one record
    per sample in order, the metric state of every sample. None otherwise (the task is then
    generated; an unreadable folder is no error)."""
    try:
        saved = io.read_json(source / RUN_NAME, "eval run")
        if (not isinstance(saved, Mapping) or not isinstance(saved.get("task_sha1"), Mapping)
                or saved["task_sha1"].get(task) != task_sha1
                or not (source / RESULTS_NAME).is_file()):
            return None
        records = [r for r in RecordLog(source / RECORDS_NAME) if r.get("task") == task]
        if [r.get("index") for r in records] != list(range(num_samples)):
            return None
        state: dict[str, Tensor] = {}
        if metrics:
            saved_state = io.load_safetensors(source / STATE_NAME)
            if int(saved_state.get(f"done/{task}", torch.tensor(0))) != num_samples:
                return None
            state = {k: v for k, v in saved_state.items()
                     if k == f"done/{task}" or k.startswith(f"{task}/")}
            for name, metric in metrics.items():
                for key, value in metric.metric_state.items():
                    if not isinstance(value, list) and f"{task}/{name}/{key}" not in state:
                        return None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None
    return records, state


def run_outputs(out: Path) -> list[Path]:
    """The files in ``out`` that ``unigen eval`` writes (fixed names: records, state, run identity,
    results, report, plots, grids, the grids' ``samples/<task>/NNNNNN.png``); whatever else lies
    there is not eval's and is never listed."""
    names = [RECORDS_NAME, STATE_NAME, RUN_NAME, RESULTS_NAME, REPORT_NAME, CATEGORY_PLOT,
             *(f"samples_{task}.png" for task in eval_task_names())]
    found = [out / name for name in names if (out / name).is_file()]
    prefix, suffix = SWEEP_PLOT.split("{name}")
    found += sorted(p for p in out.glob(f"{prefix}*{suffix}") if p.is_file())
    for task in eval_task_names():
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
    for folder in [out / SAMPLES_DIR / t for t in eval_task_names()] + [out / SAMPLES_DIR]:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    return where or "value"
