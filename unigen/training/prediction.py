"""``unigen predict``: what a trained unified (or autoregressive) model makes of a data module's
predict split, written to files.

``predict_step`` of :class:`~unigen.training.unified_module.UnifiedModule` returns, per batch, the
generated image of each caption, the caption of each image and the answer to each question (those
its tasks train); :class:`PredictionWriter` (installed by the module itself when predicting, unless
the recipe lists a ``BasePredictionWriter`` of its own) writes them:

* ``<dir>/images/<index>_generated.png``: the image generated from sample ``index``'s caption;
* ``<dir>/images/<index>_input.png``: sample ``index``'s image, where it was captioned / asked about;
* ``<dir>/predictions.json``: ``{"settings": ..., "predictions": [{"index", "prompt", "generated",
  "input", "caption", "question", "answer"}, ...]}`` (keys present where computed).

``<dir>`` is ``<trainer.default_root_dir>/predictions`` unless ``output_dir`` is given.  Every file
is written atomically; a new run replaces the files of the same samples.  Under several processes
each rank writes its own samples and ``predictions.rank<N>.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import Tensor

from unigen import io


def batch_indices(batch: dict[str, Any], batch_idx: int) -> list[int]:
    """Each sample's data-set index (the batch's ``index``, else its position in the loader)."""
    index = batch.get("index")
    if index is not None:
        return [int(i) for i in (index.tolist() if isinstance(index, Tensor) else index)]
    first = next(v for v in batch.values() if isinstance(v, (Tensor, list, tuple)))
    n = len(first)
    return list(range(batch_idx * n, batch_idx * n + n))


def to_uint8(images: Tensor) -> Tensor:
    """[B, 3, H, W] floats in [0, 1] -> uint8 on the CPU (small to return and to keep)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _save_png(image: Tensor, path: Path) -> None:
    with io.atomic_path(path) as tmp:
        Image.fromarray(image.permute(1, 2, 0).numpy(), mode="RGB").save(tmp, format="PNG")


class PredictionWriter(BasePredictionWriter):
    """Writes what ``predict_step`` returns: PNGs per sample and one JSON (module docstring).

    Args:
        output_dir: folder to write into (default ``<trainer.default_root_dir>/predictions``).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.rows: list[dict[str, Any]] = []

    def directory(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir) / "predictions"

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           prediction: dict[str, Any], batch_indices: Sequence[int] | None,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        images = self.directory(trainer) / "images"
        for i, index in enumerate(prediction["index"]):
            row: dict[str, Any] = {"index": index}
            if "generated" in prediction:
                name = f"{index:06d}_generated.png"
                _save_png(prediction["generated"][i], images / name)
                row.update(prompt=prediction["prompt"][i], generated=f"images/{name}")
            if "input" in prediction:
                name = f"{index:06d}_input.png"
                _save_png(prediction["input"][i], images / name)
                row["input"] = f"images/{name}"
            for key in ("caption", "question", "answer"):
                if key in prediction:
                    row[key] = prediction[key][i]
            self.rows.append(row)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = self.directory(trainer)
        name = ("predictions.json" if trainer.world_size == 1
                else f"predictions.rank{trainer.global_rank}.json")
        settings = dict(getattr(pl_module, "predict_settings", dict)())
        settings["checkpoint"] = str(trainer.ckpt_path) if trainer.ckpt_path else None
        io.write_json(out / name, {"settings": settings,
                                   "predictions": sorted(self.rows, key=lambda r: r["index"])})
        if trainer.is_global_zero:
            n = len(self.rows)
            print(f"wrote {n} prediction{'s' if n != 1 else ''} to {out}")
        self.rows = []


__all__ = ["PredictionWriter", "batch_indices", "to_uint8"]
