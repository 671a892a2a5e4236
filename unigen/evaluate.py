"""``unigen eval``: generate with a trained pipeline, score what it made, write a report.

An evaluation recipe (plain YAML, :class:`EvalConfig`) names the data, the tasks (``t2i``,
``caption``, ``vqa``) with their sampler settings, and each task's metrics (names from
:data:`unigen.metrics.METRICS` or :data:`RECORD_METRICS`). :func:`evaluate_pipeline` then

1. streams the data in batches; every sample ``i`` is generated with its own seed ``seed + i``
   (batch-size invariant, as the pipeline guarantees per-sample generators);
2. writes one JSON record per sample and task to ``records.jsonl`` as it goes (checker verdicts,
   generated captions and answers), and keeps only running state for image metrics (FID moments,
   KID features), checkpointed to ``metric_state.safetensors``: memory stays flat and a killed
   run continues with ``resume=True`` where it stopped;
3. computes the text/checker metrics from the records, the image metrics from their state, and
   writes ``results.json``, ``report.md``, the per-category plot and sample grids
   (:func:`unigen.metrics.write_report`).

Text-to-image prompts of the shapes world are scored GenEval-style (Ghosh et al., 2023) by the
pixel checker (:mod:`unigen.data.checker`); FID (Heusel et al., 2017) compares generated images with
the data's real images on a local feature extractor. :func:`sweep_pipeline` runs a grid of settings
(e.g. guidance scale x steps, as in the MaskGIT / Show-o trade-off plots) and plots each metric
against each numeric parameter.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import itertools
import json
import os
import re
import time
import types
import typing
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import yaml
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from unigen import io
from unigen.data.checker import caption_attribute_recall, caption_fact_precision, check
from unigen.data.shapes import Scene, ShapesWorld, captions, render_array, render_tensor
from unigen.metrics import (CAPTION, COMPOSITIONAL, DISTRIBUTION, METRICS, TEXT_IMAGE, VQA,
                            ClipEncoder, Sweep, build_feature_extractor, build_metric,
                            flatten_results, write_report)
from unigen.metrics.report import REPORT_NAME, RESULTS_NAME
from unigen.registry import Registry
from unigen.sampling import SAMPLERS
from unigen.tokenizers.base import pil_to_tensor
from unigen.visual import captioned_grid, save_png, to_pil

RECORDS_NAME, STATE_NAME, RUN_NAME = "records.jsonl", "metric_state.safetensors", "run.json"
SAMPLES_DIR, POINTS_DIR = "samples", "points"
GRID_TILE_PIXELS = 128  # sample grids upscale images (nearest) to about this width
_RECORD_CHUNK = 256  # records fed to a metric at once when the report is computed


# =================================================================================================
# Recipe schema: dataclasses checked by type hints (unknown key or wrong type -> one clear error)
# =================================================================================================
@dataclass
class TaskSettings:
    """One task of a recipe: how to decode (see :class:`unigen.pipeline.SamplingConfig`) and what to
    compute."""

    sampler: str = "maskgit"
    num_steps: int | None = None  # None: the pipeline's default for the task
    guidance_scale: float = 1.0
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    guidance_kwargs: dict[str, Any] = field(default_factory=dict)
    use_cache: bool = True
    metrics: list[str | dict[str, Any]] = field(default_factory=list)
    fid: bool = False  # t2i only: FID of generated vs real images on resources.extractor features


@dataclass
class Resources:
    """Networks loaded once and shared by every metric that takes them."""

    extractor: str | dict[str, Any] = field(
        default_factory=lambda: {"name": "inception_v3", "weights": "auto"})
    clip: str | None = None  # local CLIP directory (clip_score)


@dataclass
class EvalConfig:
    """A whole eval recipe (docs/evaluation.md lists every key)."""

    data: dict[str, Any]  # {source: shapes | folder | fashion_mnist, ...that source's options}
    tasks: dict[str, TaskSettings]
    seed: int = 0
    batch_size: int = 16
    grid_size: int = 16  # samples shown in each PNG grid
    checkpoint_every: int = 256  # samples between saves of image-metric state (resume points)
    resources: Resources = field(default_factory=Resources)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    out_dir: str | None = None


# keys that change how fast a run goes but not its numbers: a run may resume with other values
_RUN_ONLY_KEYS = ("batch_size", "checkpoint_every", "out_dir", "sweep")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against type hint ``tp``; ints pass as floats, never bools as numbers."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, where)
            except ValueError:
                continue
    elif tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        return _from_mapping(tp, value, where)
    elif origin is list:
        if isinstance(value, list):
            item = typing.get_args(tp)[0]
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            item = typing.get_args(tp)[1]
            return {k: _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ValueError(f"recipe key {where!r} must be {_type_name(tp)}, got {value!r}")


def _from_mapping(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a recipe mapping found at key path ``where`` ("" = the root)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"recipe key {where!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            full = f"{where}.{key}" if where else key
            raise ValueError(f"unknown recipe key {full!r}; known keys here: {', '.join(known)}")
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in data:
            full = f"{where}.{f.name}" if where else f.name
            raise ValueError(f"the recipe lacks the required key {full!r}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}" if where else k)
                  for k, v in data.items()})


def parse_config(config: Mapping[str, Any] | EvalConfig) -> EvalConfig:
    """Validate a recipe mapping (keys, types, task / sampler / metric names) into an
    :class:`EvalConfig`."""
    cfg = config if isinstance(config, EvalConfig) else _from_mapping(EvalConfig, config, "")
    for key, least in (("batch_size", 1), ("checkpoint_every", 1), ("grid_size", 0), ("seed", 0)):
        if getattr(cfg, key) < least:
            raise ValueError(f"recipe key {key!r} must be >= {least}, got {getattr(cfg, key)}")
    if "source" not in cfg.data:
        raise ValueError("recipe key 'data' needs 'source' (one of "
                         f"{', '.join(EVAL_DATA.names())})")
    if cfg.data["source"] not in EVAL_DATA:
        raise ValueError(f"unknown data source {cfg.data['source']!r}; known: "
                         f"{', '.join(EVAL_DATA.names())}")
    data_options(cfg.data)
    if not cfg.tasks:
        raise ValueError("recipe key 'tasks' lists no task; known: "
                         f"{', '.join(EVAL_TASKS.names())}")
    for name, task in cfg.tasks.items():
        if name not in EVAL_TASKS:
            raise ValueError(f"unknown task 'tasks.{name}'; known: {', '.join(EVAL_TASKS.names())}")
        if task.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {task.sampler!r} in tasks.{name}.sampler; known: "
                             f"{', '.join(SAMPLERS.names())}")
        if task.num_steps is not None and task.num_steps < 1:
            raise ValueError(f"tasks.{name}.num_steps must be positive, got {task.num_steps}")
        if task.fid and name != "t2i":
            raise ValueError(f"tasks.{name}.fid: FID compares generated images, only t2i makes any")
        if not task.metrics and not task.fid:
            raise ValueError(f"tasks.{name} lists no metrics")
        for metric, _ in metric_entries(task):
            metric_kind(metric, name)  # raises for unknown names and task mismatches
    return cfg


def metric_entries(task: TaskSettings) -> list[tuple[str, dict[str, Any]]]:
    """``(name, kwargs)`` of a task's metrics, FID (the separate ``fid`` key) last."""
    out: list[tuple[str, dict[str, Any]]] = []
    for entry in task.metrics:
        if isinstance(entry, str):
            out.append((entry, {}))
        elif isinstance(entry.get("name"), str):
            kwargs = dict(entry)
            out.append((kwargs.pop("name"), kwargs))
        else:
            raise ValueError(f"a metric entry must be a name or a mapping with 'name', got "
                             f"{entry!r}")
    names = [n for n, _ in out]
    if "fid" in names:
        raise ValueError("list FID with the recipe key 't2i.fid: true', not under metrics")
    if len(set(names)) != len(names):
        raise ValueError(f"a metric is listed twice in {names}")
    return out + ([("fid", {})] if task.fid else [])


def load_eval_config(path: str | os.PathLike, overrides: Sequence[str] = ()
                     ) -> dict[str, Any]:
    """Read a YAML recipe and apply ``key=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"eval recipe {path} is not valid YAML: "
                         f"{' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"eval recipe {path} must be a mapping of keys, got {type(data).__name__}")
    for item in overrides:
        key, value = _split_assignment(item, "--override")
        data = with_setting(data, key, yaml.safe_load(value))
    return data


def _split_assignment(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
    return key.strip(), value


def setting_paths(config: Mapping[str, Any], key: str) -> list[tuple[str, ...]]:
    """Where ``key`` points in a recipe: a dotted path (``data.num_samples``,
    ``tasks.t2i.num_steps`` or its shorthand ``t2i.num_steps``), or a bare task setting
    (``num_steps``), which means that setting of every task in the recipe."""
    parts = tuple(key.split("."))
    if parts[0] in EVAL_TASKS:
        return [("tasks", *parts)]
    task_keys = {f.name for f in dataclasses.fields(TaskSettings)}
    if len(parts) == 1 and parts[0] in task_keys:
        tasks = config.get("tasks") or {}
        if not tasks:
            raise ValueError(f"setting {key!r} applies to every task, but the recipe has none")
        return [("tasks", t, key) for t in tasks]
    return [parts]


def with_setting(config: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``config`` with ``key`` (see :func:`setting_paths`) set to ``value``; the
    result is validated later, so a misspelt key still gives the unknown-key error."""
    out = copy.deepcopy(dict(config))
    for path in setting_paths(out, key):
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"cannot set {key!r}: {part!r} is not a mapping in the recipe")
            node = child
        node[path[-1]] = copy.deepcopy(value)
    return out


# =================================================================================================
# Data: every source yields EvalSamples (image + the texts each task needs)
# =================================================================================================
@dataclass
class EvalSample:
    """One evaluation item: what each task feeds the model and scores against."""

    index: int
    image: Tensor  # [3, H, W] in [0, 1]: the real image (FID reference, caption / VQA input)
    prompt: str  # t2i prompt
    references: list[str]  # reference captions (BLEU-4 / CIDEr-D)
    question: str = ""
    answer: str = ""
    question_kind: str = ""
    scene: Any = None  # a shapes Scene when the source has one (checker caption metrics)


class EvalData(ABC):
    """A fixed, ordered evaluation set; sample ``i`` is a pure function of the source options."""

    has_scenes: bool = False

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def sample(self, index: int) -> EvalSample: ...


EVAL_DATA: Registry[type[EvalData]] = Registry("eval data source")


@EVAL_DATA.register("shapes")
class ShapesEvalData(EvalData):
    """The shapes world (``heldout`` = compositions never seen in training); all caption templates
    that apply to a scene are its references."""

    has_scenes = True

    def __init__(self, image_size: int, split: str = "heldout", num_samples: int = 64,
                 seed: int = 0) -> None:
        if num_samples < 1:
            raise ValueError(f"data.num_samples must be positive, got {num_samples}")
        self.world = ShapesWorld(split, seed)
        self.num_samples, self.image_size = num_samples, image_size
        render_array(Scene(), image_size)  # validates the size

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, index: int) -> EvalSample:
        scene = self.world.scene(index)
        qa = self.world.qa(index, scene)
        return EvalSample(index, render_tensor(scene, self.image_size),
                          self.world.caption(index, scene),
                          captions(scene, self.world.rng(index, 1)), qa.question, qa.answer,
                          qa.kind, scene)


class _DatasetEvalData(EvalData):
    """A unigen dataset (items: image, caption, question, answer) limited to ``num_samples``."""

    def __init__(self, dataset: Any, num_samples: int | None, what: str) -> None:
        if num_samples is not None and not 1 <= num_samples <= len(dataset):
            raise ValueError(f"data.num_samples must lie in [1, {len(dataset)}] for {what}, got "
                             f"{num_samples}")
        self.dataset = dataset
        self.num_samples = len(dataset) if num_samples is None else num_samples

    def __len__(self) -> int:
        return self.num_samples

    def references(self, index: int, item: dict[str, Any]) -> list[str]:
        return [item["caption"]]

    def sample(self, index: int) -> EvalSample:
        item = self.dataset[index]
        return EvalSample(index, item["image"], item["caption"], self.references(index, item),
                          item["question"], item["answer"])


@EVAL_DATA.register("folder")
class FolderEvalData(_DatasetEvalData):
    """An image folder with ``metadata.jsonl`` (:mod:`unigen.data.imagefolder`); the first
    ``num_samples`` rows (all when null)."""

    def __init__(self, image_size: int, root: str, num_samples: int | None = None,
                 resize: str = "center_crop") -> None:
        from unigen.data.imagefolder import ImageFolderDataset

        super().__init__(ImageFolderDataset(root, image_size, resize), num_samples, str(root))


@EVAL_DATA.register("fashion_mnist")
class FashionMNISTEvalData(_DatasetEvalData):
    """Fashion-MNIST (local files); every caption template of a sample's class is a reference."""

    def __init__(self, image_size: int, split: str = "test", num_samples: int | None = None,
                 seed: int = 0, root: str | None = None) -> None:
        from unigen.data.fashion_mnist import FashionMNISTDataset

        super().__init__(FashionMNISTDataset(root, split, image_size, num_samples, seed), None,
                         "Fashion-MNIST")

    def references(self, index: int, item: dict[str, Any]) -> list[str]:
        from unigen.data.fashion_mnist import CAPTION_TEMPLATES, caption_for

        return [caption_for(item["label"], t) for t in range(len(CAPTION_TEMPLATES))]


def data_options(spec: Mapping[str, Any]) -> tuple[type[EvalData], dict[str, Any]]:
    """The source class named by a recipe's ``data:`` block and its checked options (every key but
    ``source`` and ``image_size``)."""
    options = {k: v for k, v in spec.items() if k not in ("source", "image_size")}
    cls = EVAL_DATA.get(spec["source"])
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    hints = typing.get_type_hints(cls.__init__)
    for key, value in options.items():
        if key not in params or key == "image_size":
            known = ["source", "image_size", *(p for p in params if p != "image_size")]
            raise ValueError(f"unknown recipe key 'data.{key}' for source {spec['source']!r}; "
                             f"known: {', '.join(known)}")
        options[key] = _coerce(value, hints[key], f"data.{key}")
    if spec.get("image_size") is not None:
        _coerce(spec["image_size"], int, "data.image_size")
    return cls, options


def build_data(spec: Mapping[str, Any], model_image_size: int) -> EvalData:
    """The recipe's ``data:`` block -> :class:`EvalData`; its ``image_size`` (optional) must be the
    model's."""
    cls, options = data_options(spec)
    size = spec.get("image_size")
    if size is not None and size != model_image_size:
        raise ValueError(f"data.image_size is {size} but the model makes {model_image_size}x"
                         f"{model_image_size} images")
    return cls(image_size=model_image_size, **options)


# =================================================================================================
# Metrics fed from per-sample records
# =================================================================================================
RECORD_METRICS: Registry[type] = Registry("record metric")
RECORD = "record"  # kind of the metrics in RECORD_METRICS: update(records: list[dict])


class RecordMean:
    """Mean of one per-sample score a task stores in its records (``field``).  ``task`` names the
    one task whose records hold the field; ``None`` means every task's records do (e.g. the network
    calls), and the result is then reported per task, as ``<metric>/<task>``."""

    kind = RECORD
    task: str | None = None
    field: str = ""
    needs_scenes: bool = False
    higher_is_better = True

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, records: Sequence[Mapping[str, Any]]) -> None:
        for r in records:
            self.total += float(r[self.field])
            self.count += 1

    def compute(self) -> Tensor:
        if not self.count:
            raise RuntimeError(f"{self.field}: compute() called before any update()")
        return torch.tensor(self.total / self.count, dtype=torch.float64)


@RECORD_METRICS.register("caption_fact_precision")
class CaptionFactPrecision(RecordMean):
    """Fraction of a generated caption's facts true of the scene
    (:func:`unigen.data.checker.caption_fact_precision`; 0 for a caption outside the grammar)."""

    task, field, needs_scenes = "caption", "fact_precision", True


@RECORD_METRICS.register("caption_attribute_recall")
class CaptionAttributeRecall(RecordMean):
    """Fraction of the scene's attributes the caption states correctly
    (:func:`unigen.data.checker.caption_attribute_recall`)."""

    task, field, needs_scenes = "caption", "attribute_recall", True


@RECORD_METRICS.register("model_calls")
class ModelCalls(RecordMean):
    """Mean network calls per sample (``decode``'s per-row count: what the sample costs decoded
    alone, so adaptive samplers such as confident decoding (Dimple, Yu et al. 2025) are credited
    for finishing easy samples early).  Lower is better; any task may list it."""

    task, field = None, "model_calls"
    higher_is_better = False


def result_name(metric: str, task: str) -> str:
    """The key of ``metric``'s value in the results: metrics any task may list carry the task."""
    if metric in RECORD_METRICS and RECORD_METRICS.get(metric).task is None:
        return f"{metric}/{task}"
    return metric


@dataclass(frozen=True)
class _Verdict:
    correct: bool
    category: str


def _feed_records(metric: Any, kind: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Call ``update`` of a record-fed metric with what its kind expects."""
    if kind == COMPOSITIONAL:
        metric.update([_Verdict(r["correct"], r["category"]) for r in records])
    elif kind == CAPTION:
        metric.update([r["caption"] for r in records], [r["references"] for r in records])
    elif kind == VQA:
        metric.update([r["prediction"] for r in records], [r["answer"] for r in records])
    elif kind == RECORD:
        metric.update(records)
    else:
        raise ValueError(f"metric kind {kind!r} is not fed from records")


def _feed_images(metric: Any, kind: str, real: Tensor, generated: Tensor,
                 prompts: Sequence[str]) -> None:
    """Call ``update`` of an image-fed metric (state kept in the metric, checkpointed)."""
    if kind == DISTRIBUTION:
        metric.update(real, real=True)
        metric.update(generated, real=False)
    elif kind == TEXT_IMAGE:
        metric.update(generated, list(prompts))
    else:
        raise ValueError(f"metric kind {kind!r} is not fed from images")


def metric_kind(name: str, task: str) -> str:
    """The kind of metric ``name``, checked against what ``task`` can feed."""
    spec = EVAL_TASKS.get(task)
    if name in RECORD_METRICS:
        owner = RECORD_METRICS.get(name).task
        if owner is not None and owner != task:
            raise ValueError(f"metric {name!r} scores task {owner!r}, not tasks.{task}")
        if RECORD not in spec.record_kinds:
            raise ValueError(f"metric {name!r} (a record metric) cannot score tasks.{task}; it "
                             f"takes {', '.join(spec.record_kinds + spec.image_kinds)} metrics")
        return RECORD
    if name not in METRICS:
        known = sorted({*METRICS.names(), *RECORD_METRICS.names()})
        raise ValueError(f"unknown metric {name!r} in tasks.{task}.metrics; known: "
                         f"{', '.join(known)}")
    kind = METRICS.get(name).kind
    if kind not in spec.record_kinds + spec.image_kinds:
        raise ValueError(f"metric {name!r} ({kind} metric) cannot score tasks.{task}; it takes "
                         f"{', '.join(spec.record_kinds + spec.image_kinds)} metrics")
    return kind


# =================================================================================================
# Tasks: generate a batch, turn it into records (and images for the image metrics)
# =================================================================================================
@dataclass
class BatchOutput:
    records: list[dict[str, Any]]
    images: Tensor | None = None  # generated images (t2i), [B, 3, H, W] in [0, 1], on the device


@dataclass(frozen=True)
class TaskSpec:
    """How an evaluation task runs: ``generate(pipe, settings, samples, seeds, checks)`` makes a
    batch (``checks``: the costly per-sample checks asked for, e.g. ``"compositional"``); the
    metric kinds it feeds from records and from images; how its sample grid is captioned."""

    generate: Callable[..., BatchOutput]
    record_kinds: tuple[str, ...]
    image_kinds: tuple[str, ...] = ()
    grid_text: Callable[[Mapping[str, Any]], str] = lambda r: ""
    grid_from_generated: bool = False  # grid shows generated images (else the data's images)


EVAL_TASKS: Registry[TaskSpec] = Registry("eval task")


def sampling_kwargs(settings: TaskSettings) -> dict[str, Any]:
    """Pipeline keyword arguments of a task's sampler settings (num_steps only when set)."""
    out = dict(sampler=settings.sampler, guidance_scale=settings.guidance_scale,
               sampler_kwargs=dict(settings.sampler_kwargs),
               guidance_kwargs=dict(settings.guidance_kwargs), use_cache=settings.use_cache)
    if settings.num_steps is not None:
        out["num_steps"] = settings.num_steps
    return out


def _base_record(task: str, sample: EvalSample, seed: int, calls: int) -> dict[str, Any]:
    """What every record holds: which sample, its seed and the network calls it cost."""
    return {"task": task, "index": sample.index, "seed": seed, "model_calls": int(calls)}


def _generate_t2i(pipe, settings: TaskSettings, samples: Sequence[EvalSample], seeds: list[int],
                  checks: set[str]) -> BatchOutput:
    prompts = [s.prompt for s in samples]
    images, calls = pipe.text_to_image(prompts, seed=seeds, output="tensor", return_calls=True,
                                       **sampling_kwargs(settings))
    images = images.float().clamp(0, 1)
    records = []
    for sample, seed, image, n in zip(samples, seeds, images, calls):
        record = {**_base_record("t2i", sample, seed, n), "prompt": sample.prompt}
        if "compositional" in checks:
            try:
                result = check(image.cpu(), sample.prompt)
            except ValueError as err:
                raise ValueError(f"compositional_accuracy needs prompts of the shapes grammar; "
                                 f"sample {sample.index}: {err}") from None
            record.update(correct=result.correct, category=result.category,
                          attributes=result.attributes)
        records.append(record)
    return BatchOutput(records, images)


def _generate_caption(pipe, settings: TaskSettings, samples: Sequence[EvalSample], seeds: list[int],
                      checks: set[str]) -> BatchOutput:
    images = torch.stack([s.image for s in samples])
    captions, calls = pipe.caption(images, seed=seeds, return_calls=True,
                                   **sampling_kwargs(settings))
    records = []
    for sample, seed, text, n in zip(samples, seeds, captions, calls):
        record = {**_base_record("caption", sample, seed, n), "caption": text,
                  "references": list(sample.references)}
        if sample.scene is not None:
            record.update(fact_precision=caption_fact_precision(text, sample.scene),
                          attribute_recall=caption_attribute_recall(text, sample.scene))
        records.append(record)
    return BatchOutput(records)


def _generate_vqa(pipe, settings: TaskSettings, samples: Sequence[EvalSample], seeds: list[int],
                  checks: set[str]) -> BatchOutput:
    missing = [s.index for s in samples if not s.question or not s.answer]
    if missing:
        raise ValueError(f"tasks.vqa needs a question and an answer for every sample; sample "
                         f"{missing[0]} has none")
    images = torch.stack([s.image for s in samples])
    answers, calls = pipe.answer(images, [s.question for s in samples], seed=seeds,
                                 return_calls=True, **sampling_kwargs(settings))
    return BatchOutput([{**_base_record("vqa", s, seed, n), "question": s.question,
                         "prediction": a, "answer": s.answer, "kind": s.question_kind}
                        for s, seed, a, n in zip(samples, seeds, answers, calls)])


def _t2i_grid_text(record: Mapping[str, Any]) -> str:
    if "correct" not in record:
        return record["prompt"]
    return f"{'OK' if record['correct'] else 'NO'} {record['prompt']}"


EVAL_TASKS.register("t2i")(TaskSpec(_generate_t2i, (COMPOSITIONAL, RECORD),
                                    (DISTRIBUTION, TEXT_IMAGE), _t2i_grid_text,
                                    grid_from_generated=True))
EVAL_TASKS.register("caption")(TaskSpec(_generate_caption, (CAPTION, RECORD),
                                        grid_text=lambda r: r["caption"]))
EVAL_TASKS.register("vqa")(TaskSpec(
    _generate_vqa, (VQA, RECORD),
    # the verdict first: the grid cuts long texts after three lines
    grid_text=lambda r: f"{r['prediction'] or '-'} (truth: {r['answer']}) {r['question']}"))


# =================================================================================================
# Persistence of a run: records (JSONL), image-metric state (safetensors), run identity
# =================================================================================================
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


def _run_identity(cfg: EvalConfig, pipe) -> dict[str, Any]:
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUN_ONLY_KEYS}
    return {"recipe": recipe, "recipe_sha1": _fingerprint(recipe),
            "model_sha1": model_fingerprint(pipe)}


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    return where or "value"


# =================================================================================================
# The evaluation loop
# =================================================================================================
@dataclass
class _TaskRun:
    name: str
    settings: TaskSettings
    spec: TaskSpec
    record_metrics: list[tuple[str, str, dict[str, Any]]]  # (name, kind, kwargs), built at the end
    image_metrics: dict[str, tuple[str, Any]]  # name -> (kind, live metric)
    done: int = 0
    generated_now: int = 0
    seconds: float = 0.0

    def live_metrics(self) -> dict[str, Any]:
        return {name: metric for name, (_, metric) in self.image_metrics.items()}

    @property
    def checks(self) -> set[str]:
        wanted = any(kind == COMPOSITIONAL for _, kind, _ in self.record_metrics)
        return {"compositional"} if wanted else set()


def _shared_resources(cfg: EvalConfig, wanted: set[str]) -> dict[str, Any]:
    shared: dict[str, Any] = {}
    if "extractor" in wanted:
        shared["extractor"] = build_feature_extractor(cfg.resources.extractor)
    if "clip" in wanted:
        if cfg.resources.clip is None:
            raise ValueError("clip_score needs resources.clip: a local CLIP directory")
        shared["clip"] = ClipEncoder.from_pretrained(cfg.resources.clip)
    return shared


def _plan_tasks(cfg: EvalConfig, data: EvalData, device: torch.device
                ) -> tuple[list[_TaskRun], dict[str, Any]]:
    """Build every task's live (image-fed) metrics, sharing one extractor / CLIP between them."""
    plans, wanted = [], set()
    for name, settings in cfg.tasks.items():
        for metric, kwargs in metric_entries(settings):
            if metric in METRICS:
                params = inspect.signature(METRICS.get(metric).__init__).parameters
                wanted |= {k for k in ("extractor", "clip") if k in params and k not in kwargs}
    shared = _shared_resources(cfg, wanted)
    for name, settings in cfg.tasks.items():
        spec = EVAL_TASKS.get(name)
        record, image = [], {}
        for metric, kwargs in metric_entries(settings):
            kind = metric_kind(metric, name)
            if kind == RECORD and RECORD_METRICS.get(metric).needs_scenes and not data.has_scenes:
                raise ValueError(f"metric {metric!r} needs scene annotations; data source "
                                 f"{cfg.data['source']!r} has none")
            if kind in spec.image_kinds:
                image[metric] = (kind, build_metric(metric, shared, **kwargs).to(device))
            else:
                record.append((metric, kind, kwargs))
        plans.append(_TaskRun(name, settings, spec, record, image))
    return plans, shared


def _resume(plans: list[_TaskRun], log: RecordLog, state_path: Path) -> list[dict[str, Any]]:
    """Set each task's ``done`` count from the records (and, for tasks with image metrics, the
    checkpointed state, which may lag the records); returns the records kept."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in log:
        rows = by_task.setdefault(record.get("task"), [])
        if record.get("index") != len(rows):
            raise ValueError(f"{log.path} is out of order: {record.get('task')} record "
                             f"{record.get('index')} after {len(rows)} records")
        rows.append(record)
    state = io.load_safetensors(state_path) if state_path.is_file() else {}
    kept = []
    for plan in plans:
        rows = by_task.get(plan.name, [])
        plan.done = len(rows)
        if plan.image_metrics:
            plan.done = min(plan.done, int(state.get(f"done/{plan.name}", torch.tensor(0))))
            if plan.done:
                _restore_state({plan.name: plan.live_metrics()}, state)
        kept += rows[:plan.done]
    return kept


def _save_png(image: Tensor, path: Path) -> None:
    save_png(to_pil(image.cpu()), path)


def _load_png(path: Path) -> Tensor:
    with Image.open(path) as img:
        return pil_to_tensor(img.convert("RGB"))


def _run_task(pipe, plan: _TaskRun, cfg: EvalConfig, data: EvalData, log: RecordLog, out: Path,
              save_state: Callable[[], None], progress: bool) -> None:
    n = len(data)
    start = time.perf_counter()
    since_save = 0
    with tqdm(total=n, initial=plan.done, desc=f"eval {plan.name}", unit="sample",
              disable=not progress) as bar:
        for lo in range(plan.done, n, cfg.batch_size):
            samples = [data.sample(i) for i in range(lo, min(lo + cfg.batch_size, n))]
            seeds = [cfg.seed + s.index for s in samples]
            with torch.no_grad():
                batch = plan.spec.generate(pipe, plan.settings, samples, seeds, plan.checks)
            if batch.images is not None:
                real = torch.stack([s.image for s in samples]).to(batch.images.device)
                for kind, metric in plan.image_metrics.values():
                    _feed_images(metric, kind, real, batch.images, [s.prompt for s in samples])
                for s, image in zip(samples, batch.images):
                    if s.index < cfg.grid_size:  # the grid reads these back, also after a resume
                        _save_png(image, out / SAMPLES_DIR / plan.name / f"{s.index:06d}.png")
            log.append(batch.records)
            plan.done += len(samples)
            plan.generated_now += len(samples)
            since_save += len(samples)
            if plan.image_metrics and (since_save >= cfg.checkpoint_every or plan.done == n):
                save_state()
                since_save = 0
            bar.update(len(samples))
    plan.seconds = time.perf_counter() - start


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _compute(plans: list[_TaskRun], log: RecordLog) -> tuple[dict[str, Any], dict[str, float]]:
    """Every metric's value; record-fed metrics stream the JSONL in chunks."""
    results: dict[str, Any] = {}
    per_category: dict[str, float] = {}
    for plan in plans:
        metrics = [(name, kind, RECORD_METRICS.get(name)(**kwargs) if kind == RECORD
                    else build_metric(name, None, **kwargs))
                   for name, kind, kwargs in plan.record_metrics]
        for chunk in _chunks((r for r in log if r["task"] == plan.name), _RECORD_CHUNK):
            for _, kind, metric in metrics:
                _feed_records(metric, kind, chunk)
        for name, kind, metric in metrics:
            results[result_name(name, plan.name)] = metric.compute()
            if kind == COMPOSITIONAL:
                per_category = metric.per_category()
        for name, (_, metric) in plan.image_metrics.items():
            with warnings.catch_warnings():
                # all of a resumed run's images may come from restored state: no update() call
                warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                results[name] = metric.compute()
    return results, per_category


def _write_grids(plans: list[_TaskRun], cfg: EvalConfig, data: EvalData, log: RecordLog,
                 out: Path) -> list[Path]:
    count = min(cfg.grid_size, len(data))
    if not count:
        return []
    wanted = {p.name: [] for p in plans}
    for record in log:
        if record["index"] < count:
            wanted[record["task"]].append(record)
    paths = []
    for plan in plans:
        records = wanted[plan.name]
        if plan.spec.grid_from_generated:
            images = torch.cat([_load_png(out / SAMPLES_DIR / plan.name / f"{r['index']:06d}.png")
                                for r in records])
        else:
            images = torch.stack([data.sample(r["index"]).image for r in records])
        texts = [plan.spec.grid_text(r) for r in records]
        scale = max(1, GRID_TILE_PIXELS // images.shape[-1])  # room for texts under small images
        paths.append(save_png(captioned_grid(images, texts, scale=scale),
                              out / f"samples_{plan.name}.png"))
    return paths


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def evaluate_pipeline(pipe, config: Mapping[str, Any] | EvalConfig, out_dir: str | os.PathLike,
                      progress: bool = True, resume: bool = False,
                      metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``pipe`` (a :class:`unigen.pipeline.UnifiedPipeline`) as ``config`` (an eval recipe
    mapping, see :class:`EvalConfig`) says, writing everything into ``out_dir``.

    ``resume=True`` continues a run killed in ``out_dir`` (same recipe and model, else an error);
    otherwise an earlier run there is replaced. ``metadata`` is added to results.json (e.g. the
    model directory). Returns ``{"metrics": flat metric values, "per_category": {...},
    "metadata": {...}, "paths": {name: path}}``.

    Example (the demo's quick check)::

        evaluate_pipeline(pipe, {"data": {"source": "shapes", "split": "heldout",
                                          "num_samples": 16},
                                 "tasks": {"t2i": {"num_steps": 16, "guidance_scale": 2.0,
                                                   "metrics": ["compositional_accuracy"]},
                                           "caption": {"metrics": ["caption_fact_precision"]},
                                           "vqa": {"metrics": ["vqa_exact_match"]}}}, "runs/eval")
    """
    cfg = parse_config(config)
    if cfg.sweep:
        raise ValueError("this recipe has a sweep: block; run it with sweep_pipeline "
                         "(or `unigen eval`), or remove the block")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = build_data(cfg.data, pipe.image_size)
    plans, shared = _plan_tasks(cfg, data, pipe.device)
    log, state_path, run_path = RecordLog(out / RECORDS_NAME), out / STATE_NAME, out / RUN_NAME
    identity = _run_identity(cfg, pipe)
    kept: list[dict[str, Any]] = []
    if resume and run_path.is_file():
        saved = io.read_json(run_path, "eval run")
        if saved.get("model_sha1") != identity["model_sha1"]:
            raise ValueError(f"cannot resume {out}: it was evaluated with other model weights")
        if saved.get("recipe_sha1") != identity["recipe_sha1"]:
            where = _first_difference(saved.get("recipe"), identity["recipe"])
            raise ValueError(f"cannot resume {out}: the recipe differs from the earlier run at "
                             f"{where!r}")
        kept = _resume(plans, log, state_path)
    elif state_path.exists():
        state_path.unlink()
    for stale in (REPORT_NAME, RESULTS_NAME):  # a run in progress has no results yet
        (out / stale).unlink(missing_ok=True)
    io.write_json(run_path, identity)
    log.rewrite(kept)  # drops a torn line and records beyond the checkpointed state
    restored = {p.name: p.done for p in plans}

    def save_state() -> None:
        live = {p.name: p.live_metrics() for p in plans if p.image_metrics}
        io.save_safetensors(_state_tensors(live, {p.name: p.done for p in plans}), state_path)

    for plan in plans:
        _run_task(pipe, plan, cfg, data, log, out, save_state, progress)
    results, per_category = _compute(plans, log)
    meta = {
        **(metadata or {}),
        "data": dict(cfg.data, image_size=pipe.image_size, num_samples=len(data)),
        "tasks": {p.name: dataclasses.asdict(p.settings) for p in plans},
        "seed": cfg.seed, "batch_size": cfg.batch_size, "device": _device_name(pipe.device),
        "model_sha1": identity["model_sha1"],
        "resources": {k: v.describe() if hasattr(v, "describe") else getattr(v, "source", str(v))
                      for k, v in shared.items()},
        "resumed_samples": {k: v for k, v in restored.items() if v},
        "timings": {p.name: {"seconds": round(p.seconds, 3), "generated": p.generated_now,
                             "samples_per_second": round(p.generated_now / p.seconds, 3)
                             if p.seconds > 0 and p.generated_now else None}
                    for p in plans},
    }
    paths = write_report(out, results, meta, per_category)
    grids = _write_grids(plans, cfg, data, log, out)
    if grids:
        report = paths["report"]
        links = "".join(f"![{p.stem}]({p.name})\n" for p in grids)
        io.write_text(report, report.read_text() + f"\n## Samples\n\n{links}")
        paths.update({p.stem: p for p in grids})
    saved = io.read_json(paths["results"], "results")
    return {"metrics": flatten_results(results), "per_category": per_category,  # recipe order
            "metadata": saved["metadata"], "paths": {k: str(v) for k, v in paths.items()}}


# =================================================================================================
# Sweeps: a grid of settings, one evaluation per point, metric-vs-parameter curves
# =================================================================================================
def parse_sweep(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["guidance_scale=1,2,3", "t2i.num_steps=4,8"]`` -> ``{key: [values]}`` (YAML scalars)."""
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, values = _split_assignment(item, "--sweep")
        parsed = [yaml.safe_load(v) for v in values.split(",") if v.strip()]
        if not parsed:
            raise ValueError(f"--sweep {key} lists no values")
        if key in axes:
            raise ValueError(f"--sweep {key} is given twice")
        axes[key] = parsed
    return axes


def _is_headline(name: str) -> bool:
    """Metrics worth a curve: not per-category entries, spreads or secondary aggregates (an
    ``/overall`` aggregate or a per-task ``<metric>/<task>`` value is a headline)."""
    qualified = name.rpartition("/")[2] in ("overall", *EVAL_TASKS.names())
    return (not name.endswith("_std") and "/category/" not in name
            and name.count("/") <= (1 if qualified else 0))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def _point_label(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def sweep_curves(axes: Mapping[str, Sequence[Any]], points: Sequence[Mapping[str, Any]],
                 metrics: Sequence[Mapping[str, float]],
                 affects: Callable[[str, str], bool] = lambda axis, metric: True) -> list[Sweep]:
    """One :class:`unigen.metrics.Sweep` per (headline metric, numeric axis that ``affects`` it):
    the metric against that axis, one line per combination of the other axes' values (e.g. one
    per sampler)."""
    numeric = [k for k, vs in axes.items()
               if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs)]
    names = [m for m in metrics[0] if _is_headline(m)] if metrics else []
    sweeps = []
    for axis in numeric:
        xs = sorted(set(axes[axis]))
        for metric in (m for m in names if affects(axis, m)):
            series: dict[str, list[float]] = {}
            for point, values in zip(points, metrics):
                # axes that cannot change this metric would only draw identical lines
                rest = {k: v for k, v in point.items() if k != axis and affects(k, metric)}
                label = _point_label(rest) or metric
                series.setdefault(label, [float("nan")] * len(xs))[xs.index(point[axis])] = \
                    values[metric]
            sweeps.append(Sweep(_safe(f"{metric}_vs_{axis}"), axis, metric, xs, series))
    return sweeps


def _affects(config: Mapping[str, Any]) -> Callable[[str, str], bool]:
    """Whether sweep axis ``key`` can change metric ``flat_name``: a setting of one task only
    changes that task's metrics."""
    cfg = parse_config(config)
    task_of = {result_name(name, task): task for task, settings in cfg.tasks.items()
               for name, _ in metric_entries(settings)}

    def owner(flat_name: str) -> str | None:
        # a flat name is a result name or extends one: "compositional_accuracy/overall"
        return next((task for key, task in task_of.items()
                     if flat_name == key or flat_name.startswith(f"{key}/")), None)

    def affects(key: str, flat_name: str) -> bool:
        paths = setting_paths(config, key)
        if not all(p[0] == "tasks" and len(p) > 1 for p in paths):
            return True
        return owner(flat_name) in {p[1] for p in paths}

    return affects


def check_sweep(config: Mapping[str, Any], axes: Mapping[str, Sequence[Any]]) -> None:
    """Fail before anything runs if an axis is empty, repeats a value or makes a bad recipe."""
    if not axes:
        raise ValueError("a sweep needs at least one axis (--sweep KEY=V1,V2 or a sweep: block)")
    base = {k: v for k, v in config.items() if k != "sweep"}
    for key, values in axes.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"sweep axis {key!r} must list values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"sweep axis {key!r} repeats a value: {list(values)}")
        for value in values:
            parse_config(with_setting(base, key, value))


def sweep_pipeline(pipe, config: Mapping[str, Any], out_dir: str | os.PathLike,
                   axes: Mapping[str, Sequence[Any]] | None = None, progress: bool = True,
                   resume: bool = False, metadata: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Evaluate every point of the grid ``axes`` (default: the recipe's ``sweep:`` block; keys as in
    :func:`setting_paths`) into ``out_dir/points/<point>``; ``out_dir`` gets the summary:
    results.json, report.md and one ``sweep_<metric>_vs_<parameter>.png`` per numeric axis."""
    base = dict(config)
    recipe_axes = base.pop("sweep", None) or {}
    axes = dict(recipe_axes if axes is None else axes)
    check_sweep(base, axes)
    out = Path(out_dir)
    points, results, runs = [], [], []
    for number, values in enumerate(itertools.product(*axes.values())):
        point = dict(zip(axes, values))
        point_config = base
        for key, value in point.items():
            point_config = with_setting(point_config, key, value)
        label = _safe(f"{number:03d}_" + "_".join(f"{k}-{v}" for k, v in point.items()))
        run = evaluate_pipeline(pipe, point_config, out / POINTS_DIR / label, progress, resume,
                                metadata)
        points.append(point)
        results.append(run["metrics"])
        runs.append({"point": point, "dir": f"{POINTS_DIR}/{label}"})
    sweeps = sweep_curves(axes, points, results, _affects(base))
    summary = {f"[{_point_label(p)}] {name}": value for p, r in zip(points, results)
               for name, value in r.items() if _is_headline(name)}
    meta = {**(metadata or {}), "sweep_axes": {k: list(v) for k, v in axes.items()},
            "points": runs}
    paths = write_report(out, summary, meta, sweeps=sweeps)
    return {"points": runs, "metrics": results, "sweeps": sweeps,
            "paths": {k: str(v) for k, v in paths.items()}}


# =================================================================================================
# Command line entry point
# =================================================================================================
def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def evaluate_model(model_dir: str | os.PathLike, recipe: str | os.PathLike,
                   out_dir: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                   sweeps: Sequence[str] = (), resume: bool = False, device: str = "auto",
                   progress: bool = True) -> dict[str, Any]:
    """``unigen eval``: load the pipeline in ``model_dir`` and run the recipe (a sweep when it has a
    ``sweep:`` block or ``sweeps`` are given)."""
    from unigen.pipeline import UnifiedPipeline

    config = load_eval_config(recipe, overrides)
    parsed = parse_config(config)  # fail on a bad recipe before loading anything
    out = out_dir if out_dir is not None else parsed.out_dir
    if out is None:
        raise ValueError(f"no output directory: pass --out or set out_dir in {recipe}")
    axes = {**parsed.sweep, **parse_sweep(sweeps)}
    if axes:
        check_sweep(config, axes)  # fail on a bad sweep value before loading the model
    pipe = UnifiedPipeline.from_pretrained(model_dir, device=_resolve_device(device))
    metadata = {"model": str(model_dir), "recipe": str(recipe), "overrides": list(overrides)}
    if axes:
        return sweep_pipeline(pipe, config, out, axes, progress, resume, metadata)
    return evaluate_pipeline(pipe, config, out, progress, resume, metadata)


def print_summary(result: Mapping[str, Any]) -> None:
    """The headline numbers and where the report went (what ``unigen eval`` prints)."""
    if "points" in result:
        for run, metrics in zip(result["points"], result["metrics"]):
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if _is_headline(k))
            print(f"[{_point_label(run['point'])}] {shown}")
    else:
        for name, value in result["metrics"].items():
            print(f"{name:<40} {value:.4f}")
    print(f"wrote {result['paths']['report']} and {result['paths']['results']}")


__all__ = [
    "EVAL_DATA", "EVAL_TASKS", "RECORD_METRICS", "EvalConfig", "EvalData", "EvalSample",
    "ModelCalls", "RecordMean", "Resources", "TaskSettings", "TaskSpec", "build_data",
    "evaluate_model", "evaluate_pipeline", "load_eval_config", "parse_config", "parse_sweep",
    "print_summary", "result_name",
    "check_sweep", "sweep_curves", "sweep_pipeline", "with_setting",
]
