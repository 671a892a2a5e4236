"""The recipe schema: dataclasses checked by type hints (an unknown key or a wrong type is one
clear error naming the key path).  Nothing here knows the registries; checking names against them
is :mod:`unigen.evaluate.recipe`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class TaskSettings:
    """One task of a recipe: how to decode (see :class:`unigen.pipeline.SamplingConfig`) and what to
    compute."""

    sampler: str | None = None  # None: the pipeline's default (maskgit for t2i, confident for text)
    num_steps: int | None = None  # None: the pipeline's default for the task
    guidance_scale: float = 1.0
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    guidance_kwargs: dict[str, Any] = field(default_factory=dict)
    use_cache: bool = True
    cuda_graphs: bool = False  # replay each decoding step as a CUDA graph (GPU only)
    metrics: list[str | dict[str, Any]] = field(default_factory=list)
    fid: bool = False  # t2i only: FID of generated vs real images on resources.extractor features
    candidates: int = 1  # t2i only: best of this many images a prompt, by the model's own reading
    verify_masks: int = 4  # t2i only: masks of that reading's ELBO (unigen.verification)
    # fill only: the words blanked in each caption (empty: the shapes world's colours)
    fill_words: list[str] = field(default_factory=list)


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
_RUN_ONLY_TASK_KEYS = ("cuda_graphs",)  # the same, inside each task's settings


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
