"""Reading and checking a recipe: YAML plus ``key=value`` overrides, validation of task, sampler,
data source and metric names against the registries (so this module sits above data, record
metrics and tasks), and the key paths that overrides and sweep axes set.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from unigen import io
from unigen.evaluate.config import EvalConfig, TaskSettings, _from_mapping
from unigen.evaluate.data import EVAL_DATA, data_options
from unigen.evaluate.record_metrics import BASE_RECORD_FIELDS, RECORD, RECORD_METRICS, owner_task
from unigen.evaluate.segment_tasks import eval_task, eval_task_names, is_eval_task
from unigen.metrics import METRICS
from unigen.metrics.base import metric_entries as parse_metric_entries
from unigen.metrics.base import metric_options
from unigen.registry import PLUGIN_HINT
from unigen.sampling import SAMPLERS, build_guidance
from unigen.sampling.base import check_num_steps


def parse_config(config: Mapping[str, Any] | EvalConfig) -> EvalConfig:
    """Validate a recipe mapping (keys, types, task / sampler / metric names) into an
    :class:`EvalConfig`."""
    if not isinstance(config, EvalConfig) and isinstance(config.get("tasks"), Mapping):
        # a task set to null (``--override tasks.t2i=null``) is left out of the run
        config = {**config, "tasks": {k: v for k, v in config["tasks"].items() if v is not None}}
    cfg = config if isinstance(config, EvalConfig) else _from_mapping(EvalConfig, config, "")
    for key, least in (("batch_size", 1), ("checkpoint_every", 1), ("grid_size", 0), ("seed", 0)):
        if getattr(cfg, key) < least:
            raise ValueError(f"recipe key {key!r} must be >= {least}, got {getattr(cfg, key)}")
    if "source" not in cfg.data:
        raise ValueError("recipe key 'data' needs 'source' (one of "
                         f"{', '.join(EVAL_DATA.names())})")
    if cfg.data["source"] not in EVAL_DATA:
        raise ValueError(f"unknown data source {cfg.data['source']!r}; known: "
                         f"{', '.join(EVAL_DATA.names())} ({PLUGIN_HINT})")
    data_options(cfg.data)
    n = declared_num_samples(cfg.data)
    if n is not None and n < 1:
        raise ValueError(f"data.num_samples must be positive, got {n}")
    if not cfg.tasks:
        raise ValueError("recipe key 'tasks' lists no task; known: "
                         f"{', '.join(eval_task_names())}")
    for name, task in cfg.tasks.items():
        if not is_eval_task(name):
            raise ValueError(f"unknown task 'tasks.{name}'; known: {', '.join(eval_task_names())}")
        if task.sampler is not None and task.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {task.sampler!r} in tasks.{name}.sampler; known: "
                             f"{', '.join(SAMPLERS.names())}")
        if task.num_steps is not None:
            check_num_steps(task.num_steps, f"tasks.{name}.num_steps")
        build_guidance(task.guidance_scale, task.guidance_kwargs, option=f"tasks.{name}.guidance_kwargs")
        if task.fid and name != "t2i":
            raise ValueError(f"tasks.{name}.fid: FID compares generated images, only t2i makes any")
        if name != "t2i" and (task.candidates, task.verify_masks) != (
                TaskSettings.candidates, TaskSettings.verify_masks):
            raise ValueError(f"tasks.{name}.candidates: only t2i draws several candidates to "
                             f"choose from")
        if task.fill_words and name != "fill":
            raise ValueError(f"tasks.{name}.fill_words: only the fill task blanks words")
        if task.candidates < 1 or task.verify_masks < 1:
            raise ValueError(f"tasks.{name}.candidates and verify_masks must be >= 1, got "
                             f"{task.candidates} and {task.verify_masks}")
        if not task.metrics and not task.fid:
            raise ValueError(f"tasks.{name} lists no metrics")
        for metric, _ in metric_entries(task):
            metric_kind(metric, name)  # raises for unknown names and task mismatches
    check_metric_options(cfg, declared_num_samples(cfg.data))
    return cfg


# constructor arguments a run fills from ``resources:`` when a metric entry does not give them
_SHARED_ARGUMENTS = ("extractor", "clip")


def declared_num_samples(data: Mapping[str, Any]) -> int | None:
    """The number of samples a recipe's ``data:`` block asks for (given or the source's default);
    None when only building the data tells (``num_samples: null``: all of a folder)."""
    cls, options = data_options(data)
    if "num_samples" in options:
        n = options["num_samples"]
    else:
        param = inspect.signature(cls.__init__).parameters.get("num_samples")
        n = None if param is None or param.default is param.empty else param.default
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def check_metric_options(cfg: EvalConfig, num_samples: int | None) -> None:
    """Every metric entry's options: known to its constructor, required ones given, and values the
    metric can work with on ``num_samples`` samples (None: not known yet, checked again once the
    data is built), all before any network loads or any image is generated."""
    for task, settings in cfg.tasks.items():
        for metric, options in metric_entries(settings):
            where = f"tasks.{task}.fid" if metric == "fid" else f"tasks.{task}.metrics"
            cls = RECORD_METRICS.get(metric) if metric in RECORD_METRICS else METRICS.get(metric)
            accepted, required = metric_options(cls)
            for key in options:
                if key not in accepted:
                    raise ValueError(f"{where}: unknown option {key!r} for metric {metric!r}; "
                                     f"known: {', '.join(accepted) or 'none'}")
            for key in required:
                if key in options:
                    continue
                if key == "clip" and cfg.resources.clip is None:
                    raise ValueError(f"{where}: metric {metric!r} needs resources.clip (a local "
                                     "CLIP directory) or the option 'clip'")
                if key not in _SHARED_ARGUMENTS:
                    raise ValueError(f"{where}: metric {metric!r} needs the option {key!r}")
            check = getattr(cls, "check_options", None)
            if check is not None:
                try:
                    check(options, num_samples)
                except ValueError as err:
                    raise ValueError(f"{where}: {err}"
                                     + (f" (data.num_samples: {num_samples})"
                                        if num_samples is not None else "")) from None


def metric_entries(task: TaskSettings) -> list[tuple[str, dict[str, Any]]]:
    """``(name, kwargs)`` of a task's metrics, FID (the separate ``fid`` key) last."""
    out = parse_metric_entries(task.metrics)
    if "fid" in (n for n, _ in out):
        raise ValueError("list FID with the recipe key 't2i.fid: true', not under metrics")
    return out + ([("fid", {})] if task.fid else [])


def shared_arguments(task: TaskSettings) -> set[str]:
    """The networks of ``resources:`` (``extractor``, ``clip``) that a task's metrics are given by
    the run: those their constructors take and their entries do not set themselves."""
    wanted: set[str] = set()
    for metric, kwargs in metric_entries(task):
        if metric in METRICS:
            params = inspect.signature(METRICS.get(metric).__init__).parameters
            wanted |= {k for k in _SHARED_ARGUMENTS if k in params and k not in kwargs}
    return wanted


def load_eval_config(path: str | os.PathLike, overrides: Sequence[str] = ()
                     ) -> dict[str, Any]:
    """Read a YAML recipe and apply ``key=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval recipe not found: {path}")
    try:
        data = yaml.safe_load(io.read_utf8(path, "eval recipe"))
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
    if is_eval_task(parts[0]):
        return [("tasks", *parts)]
    task_keys = {f.name for f in dataclasses.fields(TaskSettings)}
    if len(parts) == 1 and parts[0] in task_keys:
        tasks = config.get("tasks") or {}
        if not tasks:
            raise ValueError(f"setting {key!r} applies to every task, but the recipe has none")
        return [("tasks", t, key) for t, settings in tasks.items() if settings is not None]
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


def metric_kind(name: str, task: str) -> str:
    """The kind of metric ``name``, checked against what ``task`` can feed."""
    spec = eval_task(task)
    if name in RECORD_METRICS:
        owner = owner_task(name)  # raises for a record metric that never set its task
        if owner is not None and owner != task:
            raise ValueError(f"metric {name!r} scores task {owner!r}, not tasks.{task}")
        field = RECORD_METRICS.get(name).field
        if owner is None and field not in (*BASE_RECORD_FIELDS, *spec.record_fields):
            raise ValueError(f"metric {name!r} reads the records' {field!r}, which tasks.{task} "
                             f"does not write")
        if RECORD not in spec.record_kinds:
            raise ValueError(f"metric {name!r} (a record metric) cannot score tasks.{task}; it "
                             f"takes {', '.join(spec.record_kinds + spec.image_kinds)} metrics")
        return RECORD
    if name not in METRICS:
        known = sorted({*METRICS.names(), *RECORD_METRICS.names()})
        raise ValueError(f"unknown metric {name!r} in tasks.{task}.metrics; known: "
                         f"{', '.join(known)} ({PLUGIN_HINT})")
    kind = METRICS.get(name).kind
    if kind not in spec.record_kinds + spec.image_kinds:
        raise ValueError(f"metric {name!r} ({kind} metric) cannot score tasks.{task}; it takes "
                         f"{', '.join(spec.record_kinds + spec.image_kinds)} metrics")
    return kind
