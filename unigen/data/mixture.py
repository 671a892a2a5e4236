"""Several data sets mixed by ratio into one training stream (multi-corpus pre-training, as in the
data mixtures of Show-o / MMaDA or the sampling weights of litdata's ``CombinedStreamingDataset``).

Every epoch of ``samples_per_epoch`` samples holds exactly ``round(ratio_k * samples_per_epoch)``
samples of source ``k`` (largest remainders, so the counts add up), at seeded random positions.  Each
source is walked through its own seeded permutations, pass after pass, so within a pass no sample
repeats: a small source at a high ratio cycles, a large one at a low ratio is sampled without
replacement across epochs.  The whole order is a pure function of ``(seed, epoch)``: runs are
reproducible, resume mid-epoch exactly and split across ranks like
:class:`~unigen.data.shards.ShardDataModule` (N ranks with batch B see the batches of one process
with batch N*B).

Sources are data sets returning unigen samples: either all with ``image`` [3, H, W] or all with
pretokenized ``codes`` (:class:`~unigen.data.shards.ShardDataset`, same tokenizer).  Items keep
``image``/``codes``, ``caption``, ``description``, ``question``, ``answer``, ``scene``, plus
``index`` (unique across the mixture) and ``source`` (the source's position in ``ratios``).
"""

from __future__ import annotations

import bisect
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from unigen.data.batch_transforms import BatchTransforms
from unigen.data.loaders import data_loader
from unigen.data.resumable import epoch_loader, seeded_permutation
from unigen.data.shards import TEXT_FIELDS

DatasetFactory = Callable[[], Dataset]
_SLOTS, _PASS = 0, 1  # first key of the two kinds of permutation: they never share a seed


def mixture_counts(ratios: list[float], total: int) -> list[int]:
    """Samples per source in ``total``: proportional to ``ratios``, largest remainders rounding."""
    if not ratios or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"mixture ratios must be >= 0 and not all 0, got {ratios}")
    exact = np.asarray(ratios, dtype=np.float64) / sum(ratios) * total
    counts = np.floor(exact).astype(np.int64)
    # ties go to the earlier source: the counts are a pure function of the ratios
    order = sorted(range(len(ratios)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: total - int(counts.sum())]:
        counts[k] += 1
    return counts.tolist()


def source_draws(length: int, start: int, count: int, seed: int, source: int) -> Tensor:
    """Draws ``start .. start + count`` of a source's endless stream: its permutations for pass 0,
    1, 2, ... (seeded by ``(seed, source, pass)``) one after the other."""
    draws = torch.arange(start, start + count)
    passes, positions = draws // length, draws % length
    out = torch.empty(count, dtype=torch.long)
    for p in passes.unique().tolist():
        rows = passes == p
        out[rows] = seeded_permutation(length, seed, _PASS, source, p)[positions[rows]]
    return out


def mixture_order(lengths: list[int], counts: list[int], seed: int, epoch: int) -> Tensor:
    """Global indices (source offset + local index) of one epoch, a pure function of its arguments."""
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
    slots = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    slots = slots[seeded_permutation(len(slots), seed, _SLOTS, epoch)]
    order = torch.empty(len(slots), dtype=torch.long)
    for k, (length, count) in enumerate(zip(lengths, counts)):
        if count:
            order[slots == k] = offsets[k] + source_draws(length, epoch * count, count, seed, k)
    return order


class MixedDataset(Dataset):
    """The sources side by side: global index ``offset_k + i`` is item ``i`` of source ``k``."""

    def __init__(self, sources: list[Dataset]) -> None:
        if not sources:
            raise ValueError("a mixture needs at least one source")
        self.sources = sources
        self.lengths = [len(s) for s in sources]
        empty = [k for k, n in enumerate(self.lengths) if n == 0]
        if empty:
            raise ValueError(f"mixture sources {empty} are empty")
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).tolist()
        self.key = "codes" if "codes" in sources[0][0] else "image"

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a mixture of {len(self)} samples")
        k = bisect.bisect_right(self.offsets, index) - 1
        item = self.sources[k][index - self.offsets[k]]
        return {self.key: item[self.key], **{f: item.get(f, "") for f in TEXT_FIELDS},
                "index": index, "source": k}


def check_sources(names: list[str], sources: list[Dataset], image_size: int) -> None:
    """Every source gives the same kind of sample (images or codes) at ``image_size``."""
    from unigen.data.shards import ShardDataset

    kinds = {}
    for name, dataset in zip(names, sources):
        first = dataset[0]
        kinds[name] = "codes" if "codes" in first else "image" if "image" in first else None
        if kinds[name] is None:
            raise ValueError(f"mixture source {name!r} gives samples with neither image nor codes")
        size = getattr(dataset, "image_size", None) if kinds[name] == "codes" else first["image"].shape[-1]
        if size != image_size:
            raise ValueError(f"mixture source {name!r} gives {size}px images, the mixture is "
                             f"{image_size}px (set its image_size)")
    if len(set(kinds.values())) > 1:
        raise ValueError(f"mixture sources mix raw images and pretokenized codes ({kinds}); "
                         "tokenize every source or none")
    tokenizers = {name: s.manifest["tokenizer"]["fingerprint"] for name, s in zip(names, sources)
                  if isinstance(s, ShardDataset)}
    if len(set(tokenizers.values())) > 1:
        raise ValueError(f"mixture shard sources were made by different image tokenizers: {tokenizers}")


class MixtureDataModule(BatchTransforms, L.LightningDataModule):
    """Training data drawn from several sources by ratio (module docstring).

    Args:
        sources: name -> data set (in a recipe: ``class_path`` + ``init_args``, built in ``setup``).
        ratios: name -> weight (normalised; every source needs one).
        image_size: every source's image size (the CLI links it to the model).
        batch_size: per rank.
        samples_per_epoch: epoch length (default: the sources' total size).
        seed: the mixing order.
        val_sources: name -> validation data set, read one after the other (default: none).
        test_sources: name -> data set for ``unigen test`` / ``unigen predict``, read likewise
            (default: none; those verbs then stop with one line asking for it).
        num_workers: DataLoader workers.
    """

    def __init__(self, sources: dict[str, DatasetFactory], ratios: dict[str, float],
                 image_size: int = 64, batch_size: int = 32, samples_per_epoch: int | None = None,
                 seed: int = 0, val_sources: dict[str, DatasetFactory] | None = None,
                 test_sources: dict[str, DatasetFactory] | None = None, num_workers: int = 0) -> None:
        super().__init__()
        if set(sources) != set(ratios):
            raise ValueError(f"every mixture source needs a ratio and every ratio a source: sources "
                             f"{sorted(sources)}, ratios {sorted(ratios)}")
        self.names = list(ratios)
        mixture_counts([ratios[n] for n in self.names], 1)  # validates the ratios now
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if samples_per_epoch is not None and samples_per_epoch < batch_size:
            raise ValueError(f"samples_per_epoch ({samples_per_epoch}) must be at least batch_size "
                             f"({batch_size})")
        self.save_hyperparameters(ignore=["sources", "val_sources", "test_sources"])
        self.factories, self.val_factories = sources, val_sources or {}
        self.test_factories = test_sources or {}
        self.train_set: MixedDataset | None = None
        self.val_set: MixedDataset | None = None
        self.test_set: MixedDataset | None = None
        self.counts: list[int] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        built = [self.factories[n]() for n in self.names]
        check_sources(self.names, built, hp.image_size)
        self.train_set = MixedDataset(built)
        total = hp.samples_per_epoch or len(self.train_set)
        self.counts = mixture_counts([hp.ratios[n] for n in self.names], total)
        self.val_set = self._sequential(self.val_factories, "val", built)
        self.test_set = self._sequential(self.test_factories, "test", built)

    def _sequential(self, factories: dict[str, DatasetFactory], split: str, built: list[Dataset]
                    ) -> MixedDataset | None:
        """The named data sets one after the other, checked against the training sources."""
        if not factories:
            return None
        names = list(factories)
        sets = [factories[n]() for n in names]
        check_sources([*(f"{split}/{n}" for n in names), *self.names], [*sets, *built],
                      self.hparams.image_size)
        return MixedDataset(sets)

    def epoch_order(self, epoch: int) -> Tensor:
        self.setup()
        return mixture_order(self.train_set.lengths, self.counts, self.hparams.seed, epoch)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        hp = self.hparams
        return epoch_loader(self, _EpochView(self.train_set, sum(self.counts)), self.epoch_order,
                            hp.batch_size, hp.num_workers,
                            {"sources": self.names, "lengths": self.train_set.lengths,
                             "counts": self.counts, "seed": hp.seed},
                            collate_fn=self.worker_collate())

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_set is None:
            return []
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        if self.test_set is None:
            raise ValueError("MixtureDataModule has no test set: name its data sets under "
                             "data.init_args.test_sources")
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        """``unigen predict`` reads the test sources, as the other data modules read their test set."""
        return self.test_dataloader()

    def _loader(self, dataset: Dataset) -> DataLoader:
        return data_loader(dataset, batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers, collate_fn=self.worker_collate())


class _EpochView(Dataset):
    """The mixed data set seen through an epoch of ``length`` draws: the sampler yields global
    indices of :class:`MixedDataset`, so only the length differs."""

    def __init__(self, mixed: MixedDataset, length: int) -> None:
        self.mixed, self.length = mixed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.mixed[index]


__all__ = ["MixedDataset", "MixtureDataModule", "check_sources", "mixture_counts",
           "mixture_order", "source_draws"]
