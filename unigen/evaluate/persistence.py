"""Persistence of a run: the folder's file names, records (JSONL), image-metric state
(safetensors), and the run identity (recipe and model fingerprints) that a resume must match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from unigen import io
from unigen.evaluate.config import _RUN_ONLY_KEYS, _RUN_ONLY_TASK_KEYS, EvalConfig

RECORDS_NAME, STATE_NAME, RUN_NAME = "records.jsonl", "metric_state.safetensors", "run.json"
SAMPLES_DIR, POINTS_DIR = "samples", "points"


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
        io.write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
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


def identity_recipe(cfg: EvalConfig) -> dict[str, Any]:
    """The recipe keys that decide a run's numbers: not the run-only keys, nor a task's
    ``cuda_graphs`` (graph replays give the eager tokens), so a run resumes across them."""
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUN_ONLY_KEYS}
    recipe["tasks"] = {name: {k: v for k, v in task.items() if k not in _RUN_ONLY_TASK_KEYS}
                       for name, task in recipe["tasks"].items()}
    return recipe


def _run_identity(cfg: EvalConfig, pipe) -> dict[str, Any]:
    recipe = identity_recipe(cfg)
    return {"recipe": recipe, "recipe_sha1": _fingerprint(recipe),
            "model_sha1": model_fingerprint(pipe)}


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    return where or "value"
