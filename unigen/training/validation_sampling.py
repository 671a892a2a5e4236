"""Sample grids and generation metrics logged at the end of a validation epoch.

For text-to-image: generate from the first val batch's captions, save a captioned grid (PNG in the
log directory, and to TensorBoard when that is the logger) and, where the data carries shapes
scenes, the checker's accuracy.  For VQA: exact match.  For captioning: the checker's caption
attribute recall.  Options come from the recipe's ``val_sampling:`` block; its ``metrics:`` list
adds any metric of the registry (``unigen.metrics``, the names ``unigen eval`` recipes use), fed by
its kind, with ``metric_resources`` (``extractor``, ``clip``) shared by them.  ``unigen test`` logs
the same under ``test/`` (grids named ``test_*``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from unigen.visual import captioned_grid, save_png


def _log_image(module, tag: str, image) -> None:
    import numpy as np

    logger = module.logger
    exp = getattr(logger, "experiment", None) if logger is not None else None
    if exp is not None and hasattr(exp, "add_image"):
        exp.add_image(tag, np.asarray(image), module.global_step, dataformats="HWC")


def _log_dir(module) -> Path:
    logger = module.logger
    root = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(root or module.trainer.default_root_dir)


def _option_names(fn: Callable) -> list[str]:
    """The recipe options of a sample-logging function: its arguments after (module, batch),
    keyword-only ones (``stage``, set by the module) excluded."""
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    return [p.name for p in params[2:]]


def sampling_defaults(fn: Callable) -> dict[str, Any]:
    """The recipe options of ``fn`` with their defaults."""
    params = inspect.signature(fn).parameters
    return {name: params[name].default for name in _option_names(fn)}


def check_sampling_options(options: dict[str, Any] | None, fn: Callable,
                           name: str = "val_sampling") -> None:
    """Refuse unknown keys of a recipe's ``val_sampling`` block when the module is built (else a
    typo surfaces as a TypeError at the first validation, after training)."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise ValueError(f"{name} must be a mapping of options, got {options!r}")
    known = _option_names(fn)
    for key in options:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{name}: unknown option {key!r}{hint}; known: {', '.join(known)}")


def build_recipe_metrics(spec, resources: dict[str, Any] | None) -> dict[str, Any]:
    """Registry metrics named by a recipe, with shared resources built once."""
    from unigen.metrics import RECONSTRUCTION, build_feature_extractor, build_metrics

    shared = dict(resources or {})
    if "extractor" in shared:
        shared["extractor"] = build_feature_extractor(shared["extractor"])
    built = build_metrics(spec, shared)
    for name, metric in built.items():
        if metric.kind == RECONSTRUCTION:
            raise ValueError(f"metric {name!r} scores tokenizers; the unified model's validation "
                             "cannot compute it (use it in a tokenizer recipe)")
    return built


_METRIC_CACHE = "_val_sampling_metrics"  # a plain attribute: never a submodule, never checkpointed


def validation_metrics(module, metrics: list | dict | None,
                       resources: dict[str, Any] | None) -> dict[str, Any]:
    """The recipe metrics of ``module``'s sample logging, built once per module and reset for
    each use: their networks (a domain classifier, Inception) load once, not at every validation,
    and a missing one is found when :meth:`setup` first asks, before any training step."""
    if not metrics:
        return {}
    key = repr((metrics, resources))
    cached = module.__dict__.get(_METRIC_CACHE)
    if cached is None or cached[0] != key:
        # object.__setattr__: an nn.Module attribute would register torchmetrics objects as
        # submodules, and their states would land in every checkpoint
        from torchmetrics import Metric

        from unigen.metrics.base import gather_on_collective_device

        built = build_recipe_metrics(metrics, resources)
        for metric in built.values():
            if isinstance(metric, Metric):  # its state stays on the host, also under NCCL
                metric.dist_sync_fn = gather_on_collective_device
        object.__setattr__(module, _METRIC_CACHE, (key, built))
    built = module.__dict__[_METRIC_CACHE][1]
    for metric in built.values():
        metric.reset()
    return built


def rows_with(values: Sequence[Any] | None, n: int) -> list[int]:
    """Which of the first ``n`` rows carry a (non-empty) ``values`` entry: a mixture's batch holds
    shapes-world rows (scene, question) beside other sources' rows, whose fields are empty."""
    return [] if values is None else [i for i in range(min(n, len(values))) if values[i]]


def caption_references(batch: dict[str, Any], n: int) -> list[list[str]]:
    """The first ``n`` samples' reference captions: the caption and, where the batch carries one
    (shapes world), the scene's description (as ``unigen eval`` scores captions)."""
    descriptions = batch.get("description") or [""] * n
    return [[c, *([d] if d and d != c else [])] for c, d in zip(batch["caption"][:n], descriptions)]


def sample_segment_tasks(module, pipe, batch: dict[str, Any], n: int, num_steps: int,
                         text_steps: int | None, sampler: str, seed: int, stage: str
                         ) -> dict[str, float]:
    """The recipe's tasks stated by segments (:class:`~unigen.diffusion.tasks.SegmentTask`, e.g.
    a further modality's): each one decoded on the first ``n`` samples; a predicted modality
    segment is scored by ``<stage>/<task>_code_accuracy`` (codes equal to the data's), a
    predicted image is saved as a grid under its given modality's description."""
    from unigen.data.batch_transforms import codes_key
    from unigen.diffusion.tasks import TASKS, SegmentTask

    metrics: dict[str, float] = {}
    modalities = pipe.modalities
    prefix = "" if stage == "val" else f"{stage}_"
    for name in module.mixture.names:
        task = TASKS.get(name)
        if not (isinstance(task, type) and issubclass(task, SegmentTask)):
            continue
        inputs: dict[str, Any] = {}
        for seg in task.given:
            if seg == "text":
                inputs[seg] = list(batch["caption"][:n])
            elif seg == "image":
                inputs[seg] = batch["image"][:n]
            else:
                inputs[seg] = batch[modalities[seg].field][:n]
        image_out = "image" in task.predicted
        # a task's own sampler (a reading decodes greedily), else the recipe's
        out = pipe.run_task(name, inputs, num_steps=num_steps if image_out else (text_steps or num_steps),
                            sampler=task.sampler or sampler, seed=seed, output="tensor")
        for seg in task.predicted:
            if seg in modalities:
                # the loader's workers may have encoded the field already (batch_transforms)
                made = batch.get(codes_key(seg))
                truth = (made[:n].cpu() if made is not None
                         else modalities[seg].encode(batch[modalities[seg].field][:n]))
                codes = out[f"{seg}_codes"].cpu()
                metrics[f"{stage}/{name}_code_accuracy"] = float((codes == truth).float().mean())
        if image_out:
            given = [g for g in task.given if g in modalities]
            labels = (modalities[given[0]].describe(inputs[given[0]]) if given
                      else list(inputs.get("text", [name] * n)))
            grid = captioned_grid(out["image"].cpu(), labels)
            save_png(grid, _log_dir(module) / "samples" / f"{prefix}{name}_step{module.global_step:07d}.png")
            _log_image(module, f"{stage}/{name}_samples", grid)
    return metrics


def log_validation_samples(module, batch: dict[str, Any], num_samples: int = 8, num_steps: int = 12,
                           guidance_scale: float = 1.0, sampler: str = "maskgit",
                           text_steps: int | None = None, seed: int = 0,
                           metrics: list | dict | None = None,
                           metric_resources: dict[str, Any] | None = None, *,
                           stage: str = "val") -> dict[str, float]:
    """Generate with the module's current weights and log grids + metrics; returns the metrics.
    ``stage`` (``val`` or ``test``) prefixes the metric keys, image tags and grid file names."""
    from unigen.metrics import (CAPTION, COMPOSITIONAL, DISTRIBUTION, TEXT_IMAGE, VQA,
                                flatten_results)

    pipe = module.to_pipeline()
    tasks = set(module.mixture.names)
    n = min(num_samples, len(batch["caption"]))
    recipe_metrics = validation_metrics(module, metrics, metric_resources)
    by_kind: dict[str, list] = {}
    for metric in recipe_metrics.values():
        by_kind.setdefault(metric.kind, []).append(metric)
    metrics: dict[str, float] = {}
    prefix = "" if stage == "val" else f"{stage}_"  # file names: validation's stay as they were
    was_training = module.net.training
    module.net.eval()
    try:
        scenes = batch.get("scene")
        if tasks & {"t2i", "joint", "inpaint"}:
            captions = list(batch["caption"][:n])
            images = pipe.text_to_image(captions, num_steps=num_steps, guidance_scale=guidance_scale,
                                        sampler=sampler, seed=seed, output="tensor")
            grid = captioned_grid(images.cpu(), captions)
            save_png(grid, _log_dir(module) / "samples" / f"{prefix}t2i_step{module.global_step:07d}.png")
            _log_image(module, f"{stage}/t2i_samples", grid)
            scored = rows_with(scenes, n)  # a mixture's batch may hold other sources' samples
            if scored:
                from unigen.data.checker import check, parse_caption

                results = [check(images[i].cpu(), parse_caption(captions[i])) for i in scored]
                metrics[f"{stage}/t2i_checker_accuracy"] = sum(r.correct for r in results) / len(results)
                for metric in by_kind.get(COMPOSITIONAL, []):
                    metric.update(results)
            for metric in by_kind.get(TEXT_IMAGE, []):
                metric.update(images.cpu(), captions)
            for metric in by_kind.get(DISTRIBUTION, []):
                metric.update(batch["image"][:n].cpu(), real=True)
                metric.update(images.cpu(), real=False)
        images_in = batch["image"][:n]
        asked = rows_with(batch.get("question"), n) if "vqa" in tasks else []
        if asked:
            answers = pipe.answer(images_in[asked], [batch["question"][i] for i in asked],
                                  num_steps=text_steps, seed=[seed + i for i in asked])
            truth = [batch["answer"][i] for i in asked]
            metrics[f"{stage}/vqa_exact_match"] = sum(a == b for a, b in zip(answers, truth)) / len(asked)
            for metric in by_kind.get(VQA, []):
                metric.update(answers, truth)
        if "caption" in tasks:
            generated = pipe.caption(images_in, num_steps=text_steps, seed=seed)
            for metric in by_kind.get(CAPTION, []):
                metric.update(generated, caption_references(batch, n))
            scored = rows_with(scenes, n)
            if scored:
                from unigen.data.checker import caption_attribute_recall
                from unigen.data.shapes import Scene

                recall = [caption_attribute_recall(generated[i], Scene.from_json(scenes[i])) for i in scored]
                metrics[f"{stage}/caption_attribute_recall"] = sum(recall) / len(recall)
            grid = captioned_grid(images_in.cpu(), generated)
            save_png(grid, _log_dir(module) / "samples" / f"{prefix}caption_step{module.global_step:07d}.png")
            _log_image(module, f"{stage}/captions", grid)
        metrics.update(sample_segment_tasks(module, pipe, batch, n, num_steps, text_steps, sampler,
                                            seed, stage))
    finally:
        module.net.train(was_training)
    for name, metric in recipe_metrics.items():
        if getattr(metric, "update_count", 1):  # a metric whose task did not run has nothing
            try:
                # the keys eval writes: "class_accuracy", "class_accuracy/<class>", ...
                flat = flatten_results({name: metric.compute()})
                metrics.update({f"{stage}/{key}": value for key, value in flat.items()})
            except RuntimeError as err:  # e.g. compositional accuracy without shapes scenes
                raise ValueError(f"validation metric {name!r} could not be computed: {err}") from None
    for key, value in metrics.items():
        # on the module's device: Lightning syncs a value where it lies, and NCCL takes no host tensors
        module.log(key, torch.tensor(value, device=module.device), sync_dist=True)
    return metrics
