"""LightningDataModule over the shapes world (:mod:`unigen.data.shapes`): raw samples; the models
tokenize.

Batches are the default collate of :class:`~unigen.data.shapes.ShapesDataset` items: ``image``
float ``[B, 3, H, W]`` in [0, 1], ``caption`` / ``question`` / ``answer`` / ``scene`` lists of str,
``index`` long ``[B]``.

The training order is a pure function of ``(seed, epoch)`` (:class:`EpochShuffleSampler`; Lightning
calls ``set_epoch``), and after resuming from a mid-epoch checkpoint the sampler skips the batches
that epoch already consumed, so an interrupted and resumed run sees exactly the batches of an
uninterrupted one (tested for single-process training; under DDP Lightning wraps the sampler and
the replay is not verified).
"""

from __future__ import annotations

from typing import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from unigen.data.shapes import SPLITS, TASK_TEXTS, ShapesDataset


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(num_samples)`` drawn by a ``torch.Generator`` seeded from
    ``(seed, epoch)``; ``skip_once(n)`` drops the first ``n`` indices of the next pass (resume)."""

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples, self.seed = num_samples, seed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_once(self, num_indices: int) -> None:
        if num_indices < 0:
            raise ValueError(f"cannot skip a negative number of samples ({num_indices})")
        self._skip = num_indices

    def permutation(self, epoch: int) -> torch.Tensor:
        # SeedSequence decorrelates neighbouring (seed, epoch) pairs
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return iter(self.permutation(self.epoch)[skip:].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning treats as resumable (``state_dict``/``load_state_dict``).

    The checkpointed state is the data configuration (seed, sample count, batch size); restoring
    it into a differently configured loader raises, since the replayed order would silently
    differ.  The position inside the epoch is not stored here: the fetcher prefetches, so a count
    kept by the loader runs one batch ahead of training; :class:`ShapesDataModule` instead skips
    the batches that Lightning's restored progress counter says were trained on."""

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.dataset.world.seed, "num_samples": len(self.dataset),
                "batch_size": self.batch_size}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        current = self.state_dict()
        if state_dict != current:
            raise ValueError(f"cannot resume: the checkpoint's training data was {state_dict}, "
                             f"this data module gives {current}")


class ShapesDataModule(L.LightningDataModule):
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

    def _loader(self, name: str, sampler: Sampler[int] | None = None, drop_last: bool = False
                ) -> DataLoader:
        self.setup()
        cls = ResumableDataLoader if name == "train" else DataLoader
        return cls(self.datasets[name], batch_size=self.batch_size, sampler=sampler, shuffle=False,
                   drop_last=drop_last, num_workers=self.num_workers,
                   persistent_workers=self.num_workers > 0)

    def _batches_done_this_epoch(self) -> int:
        """Batches of the current epoch a restored checkpoint has already trained on (0 if not
        resuming).  After a restart Lightning's batch counter resumes from ``processed``."""
        trainer = self.trainer
        if trainer is None or not trainer.fit_loop.restarting:
            return 0
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done if done < len(self.datasets["train"]) // self.batch_size else 0

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = EpochShuffleSampler(len(self.datasets["train"]), self.seed)
        sampler.skip_once(self._batches_done_this_epoch() * self.batch_size)
        return self._loader("train", sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
