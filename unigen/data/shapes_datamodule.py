"""LightningDataModule over the shapes world (:mod:`unigen.data.shapes`): raw samples; the models
tokenize.

Batches are the default collate of :class:`~unigen.data.shapes.ShapesDataset` items: ``image``
float ``[B, 3, H, W]`` in [0, 1], ``caption`` / ``description`` / ``question`` / ``answer`` /
``scene`` lists of str, ``index`` long ``[B]``; plus what the model's batch transforms add in the
workers (e.g. ``layout_codes``, :mod:`unigen.data.batch_transforms`).

The training order is a pure function of ``(seed, epoch)``
(:func:`~unigen.data.resumable.shuffled_loader`; Lightning calls the sampler's ``set_epoch``),
split across ranks under DDP (each rank a disjoint share of the epoch, a new one every epoch;
Lightning does not re-wrap the sampler), and after resuming from a mid-epoch checkpoint the
sampler skips the batches that epoch already consumed, so an interrupted and resumed run sees
exactly the batches of an uninterrupted one (:mod:`unigen.data.resumable`).
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from unigen.data.batch_transforms import BatchTransforms
from unigen.data.loaders import data_loader
from unigen.data.resumable import shuffled_loader
from unigen.data.shapes import SPLITS, TASK_TEXTS, ShapesDataset


class ShapesDataModule(BatchTransforms, L.LightningDataModule):
    """Shapes-world splits: train (``num_train``, shuffled, last partial batch dropped), val
    (``num_val`` of the ``val`` split) and test/predict (``num_test`` of ``test_split``, by default
    the held-out compositions)."""

    def __init__(self, image_size: int = 64, batch_size: int = 32, num_train: int = 10000,
                 num_val: int = 256, num_test: int = 256, test_split: str = "heldout",
                 seed: int = 0, num_workers: int = 0, task_text: str = "all") -> None:
        super().__init__()
        if test_split not in SPLITS:
            raise ValueError(f"unknown test_split {test_split!r}; expected one of {list(SPLITS)}")
        if task_text not in TASK_TEXTS:
            raise ValueError(f"unknown task_text {task_text!r}; expected one of {list(TASK_TEXTS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_train < batch_size:
            raise ValueError(f"num_train ({num_train}) must be at least batch_size ({batch_size}): "
                             "the train loader drops the last partial batch")
        self.save_hyperparameters()
        self.image_size, self.batch_size, self.seed = image_size, batch_size, seed
        self.num_workers = num_workers
        self.datasets: dict[str, ShapesDataset] = {}

    def _dataset(self, split: str, num_samples: int) -> ShapesDataset:
        return ShapesDataset(split, num_samples, self.image_size, self.seed,
                             self.hparams.task_text)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:  # cheap: samples are rendered on demand
            hp = self.hparams
            self.datasets = {"train": self._dataset("train", hp.num_train),
                             "val": self._dataset("val", hp.num_val),
                             "test": self._dataset(hp.test_split, hp.num_test)}

    def _loader(self, name: str) -> DataLoader:
        self.setup()
        return data_loader(self.datasets[name], batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=self.worker_collate())

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return shuffled_loader(self, self.datasets["train"], self.seed, self.batch_size,
                               self.num_workers, collate_fn=self.worker_collate())

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


__all__ = ["ShapesDataModule"]
