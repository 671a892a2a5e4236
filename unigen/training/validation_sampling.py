"""Sample grids and generation metrics logged at the end of a validation epoch.

For text-to-image: generate from the first val batch's captions, save a captioned grid (PNG in the
log directory, and to TensorBoard when that is the logger) and, where the data carries shapes
scenes, the checker's accuracy.  For VQA: exact match.  For captioning: the checker's caption
attribute precision.  Options come from the recipe's ``val_sampling:`` block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def log_validation_samples(module, batch: dict[str, Any], num_samples: int = 8, num_steps: int = 12,
                           guidance_scale: float = 1.0, sampler: str = "maskgit",
                           text_steps: int | None = None, seed: int = 0) -> dict[str, float]:
    """Generate with the module's current weights and log grids + metrics; returns the metrics."""
    pipe = module.to_pipeline()
    tasks = set(module.mixture.names)
    n = min(num_samples, len(batch["caption"]))
    metrics: dict[str, float] = {}
    was_training = module.net.training
    module.net.eval()
    try:
        scenes = batch.get("scene")
        if tasks & {"t2i", "joint", "inpaint"}:
            captions = list(batch["caption"][:n])
            images = pipe.text_to_image(captions, num_steps=num_steps, guidance_scale=guidance_scale,
                                        sampler=sampler, seed=seed, output="tensor")
            grid = captioned_grid(images.cpu(), captions)
            save_png(grid, _log_dir(module) / "samples" / f"t2i_step{module.global_step:07d}.png")
            _log_image(module, "val/t2i_samples", grid)
            if scenes is not None and scenes[0]:
                from unigen.data.checker import check, parse_caption

                ok = [check(img, parse_caption(c)).correct for img, c in zip(images.cpu(), captions)]
                metrics["val/t2i_checker_accuracy"] = sum(ok) / len(ok)
        images_in = batch["image"][:n]
        if "vqa" in tasks and batch.get("question") and batch["question"][0]:
            answers = pipe.answer(images_in, list(batch["question"][:n]), num_steps=text_steps,
                                  seed=seed)
            truth = list(batch["answer"][:n])
            metrics["val/vqa_exact_match"] = sum(a == b for a, b in zip(answers, truth)) / n
        if "caption" in tasks:
            generated = pipe.caption(images_in, num_steps=text_steps, seed=seed)
            if scenes is not None and scenes[0]:
                from unigen.data.checker import caption_attribute_recall
                from unigen.data.shapes import Scene

                recall = [caption_attribute_recall(c, Scene.from_json(s))
                          for c, s in zip(generated, scenes[:n])]
                metrics["val/caption_attribute_recall"] = sum(recall) / len(recall)
            grid = captioned_grid(images_in.cpu(), generated)
            save_png(grid, _log_dir(module) / "samples" / f"caption_step{module.global_step:07d}.png")
            _log_image(module, "val/captions", grid)
    finally:
        module.net.train(was_training)
    for key, value in metrics.items():
        module.log(key, torch.tensor(value), sync_dist=True)
    return metrics
