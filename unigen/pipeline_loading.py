"""Reading pipeline directories (``save_pretrained``): ``pipeline.json``'s format and kind, the
pipeline class a kind names (:func:`load_pipeline`), the transformer's saved weights, and the
device and dtype a pipeline is loaded onto."""

from __future__ import annotations

import importlib
import json
import os
from typing import TYPE_CHECKING, Any

import torch

from unigen import io
from unigen.diffusion.vocab import SequenceLayout, VocabLayout
from unigen.modules.transformer import UnifiedTransformer
from unigen.saved_config import constructor_defaults

if TYPE_CHECKING:  # unigen.pipeline imports this module
    from unigen.pipeline import UnifiedPipeline

FORMAT_VERSION = 1
KIND = "masked"  # pipeline.json "kind": which pipeline class reads the directory
# every kind unigen writes, and the class that reads it (imported when a directory needs it)
PIPELINE_CLASSES = {"masked": ("unigen.pipeline", "UnifiedPipeline"),
                    "autoregressive": ("unigen.training.ar_module", "AutoregressivePipeline")}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``dtype`` as a torch floating-point type the pipeline runs in, or None (leave as is)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                "float": "float32"}.get(name, name)
        if name in DTYPES:
            return DTYPES[name]
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def check_pipeline_device(device: str | torch.device) -> str | torch.device:
    """``device`` unchanged, or one error when this machine has no such device (before loading)."""
    from unigen.command_args import check_device  # the command line's check, worded for `device=`

    check_device(str(device), flag="device")
    return device


# every key a pipeline.json of this format may hold (UnifiedPipeline.save_pretrained writes them)
PIPELINE_KEYS = frozenset({"format_version", "kind", "image_size", "parts", "modules", "modalities",
                           "trained_tasks"})


def read_pipeline_meta(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """The directory and its ``pipeline.json`` (checked: a pipeline directory of this format)."""
    path, meta = io.read_model_dir(path, "pipeline", "train with `unigen fit ... --export_dir "
                                   "DIR` or `unigen export`", "pipeline.json")
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # true == 1 in Python, not here
        raise ValueError(f"{path / 'pipeline.json'} has format version {version!r}; this unigen "
                         f"reads {FORMAT_VERSION} (the integer)")
    unknown = sorted(set(meta) - PIPELINE_KEYS)
    if unknown:  # a hand edit's typo ("trained_task") would otherwise be ignored without a word
        raise ValueError(f"{path / 'pipeline.json'} has unknown keys {unknown}; this unigen reads "
                         f"{', '.join(sorted(PIPELINE_KEYS))}")
    return path, meta


def pipeline_kind(path: str | os.PathLike) -> str:
    """``pipeline.json``'s ``kind`` of the pipeline at ``path`` (``masked``, ``autoregressive``)."""
    _, meta = read_pipeline_meta(path)
    kind = meta.get("kind", KIND)
    if kind not in PIPELINE_CLASSES:
        raise ValueError(f"{path} holds a {kind!r} pipeline; this unigen reads "
                         f"{', '.join(PIPELINE_CLASSES)}")
    return kind


def load_pipeline(path: str | os.PathLike, device: str | torch.device = "cpu",
                  dtype: str | torch.dtype | None = None) -> UnifiedPipeline:
    """Load the pipeline at ``path`` with the class its ``pipeline.json`` kind names."""
    module, name = PIPELINE_CLASSES[pipeline_kind(path)]
    return getattr(importlib.import_module(module), name).from_pretrained(path, device, dtype)


def load_transformer_weights(net: UnifiedTransformer, path: str | os.PathLike) -> UnifiedTransformer:
    """Copy the transformer weights of the pipeline saved at ``path`` into ``net`` (continuing a
    run with a fresh optimizer, e.g. across lent GPU sessions).  The saved architecture must be
    ``net``'s: any difference is one error naming the keys.  ``answer_len`` may differ: it decides
    which positions VQA trains and decodes, not the weights."""
    path, _ = io.read_model_dir(path, "pipeline", "train with `unigen fit ... --export_dir DIR`",
                                "pipeline.json")
    saved = io.read_json(path / "transformer" / "config.json", "transformer config")
    ours = json.loads(json.dumps(net.config))  # tuples -> lists, as the saved JSON holds them
    for cfg in (saved, ours):  # training/decoding choices that no weight depends on
        cfg.get("sequence", {}).pop("answer_len", None)
        cfg.pop("prefix_attention", None)
    diff = io.config_diff(saved, ours)
    if diff:
        raise ValueError(f"the transformer at {path} has another architecture; (saved, recipe): {diff}")
    return load_saved_transformer(net, path)


def load_saved_transformer(net: UnifiedTransformer, path: Any,
                           config: dict[str, Any] | None = None) -> UnifiedTransformer:
    """Load the transformer weights of the pipeline directory ``path`` into ``net``; its
    ``transformer/config.json`` (``config``: its content, read here when None) must be the config
    the weights were saved with (:func:`unigen.saved_config.check_saved_config`).  A key missing on one side
    counts as its default (configs omit ``question_slot``, ``answer_len``, ``extra`` when unset);
    ``answer_len`` may differ, as in :func:`load_transformer_weights`."""
    defaults = {**constructor_defaults(UnifiedTransformer),
                "vocab": constructor_defaults(VocabLayout),
                "sequence": constructor_defaults(SequenceLayout)}
    return io.load_weights(net, path / "transformer" / "model.safetensors",
                           path / "transformer" / "config.json", config, defaults,
                           ignore=("sequence.answer_len", "prefix_attention"))
