"""Training order shared by the unigen data modules: seeded per epoch, split across ranks, resumable
mid-epoch.

Every training loader of :class:`~unigen.data.shapes_datamodule.ShapesDataModule`,
:class:`~unigen.data.imagefolder.SplitDataModule` (``ImageFolderDataModule``,
``FashionMNISTDataModule``), :class:`~unigen.data.shards.ShardDataModule` and
:class:`~unigen.data.mixture.MixtureDataModule` is built by :func:`epoch_loader`:

* **Order.**  The epoch's order is a pure function of ``(seed, epoch)`` (:func:`seeded_permutation`
  for a plain shuffle, :func:`shuffled_loader`); Lightning calls the sampler's ``set_epoch`` at
  the start of every epoch, so every epoch has a new order and a run never depends on how often the
  global RNGs were used.
* **Ranks.**  :class:`DistributedEpochSampler` gives rank ``r`` of ``N`` the positions ``r, r + N,
  r + 2N, ...`` of the same epoch order (``length // N`` indices each, the ``length % N`` left over
  are dropped), so the ranks' shards are disjoint, change every epoch, and batch ``k`` of every rank
  together is exactly batch ``k`` of one process with an ``N`` times larger batch.  Lightning
  leaves the sampler as it is: it injects its own ``DistributedSampler`` (which would reshuffle
  with its own seed, or wrap a custom sampler in a ``DistributedSamplerWrapper`` whose order
  repeats every epoch) only when the loader's sampler is *not* a ``DistributedSampler``
  (``_requires_distributed_sampler`` in Lightning's data connector), and this one is one.
  ``trainer.use_distributed_sampler`` therefore stays at its default (validation and test loaders
  are still split by Lightning).  World size and rank are read from the trainer when the loader is
  built; without a trainer from an initialised ``torch.distributed``, then the ``WORLD_SIZE`` /
  ``RANK`` environment variables, then 1 and 0 (:func:`world_and_rank`).
* **Resume.**  After restoring a mid-epoch checkpoint the sampler skips the batches Lightning's
  restored progress counter says were trained on (:func:`batches_done_this_epoch`), so an
  interrupted and resumed run sees exactly the batches of an uninterrupted one; an epoch-end
  checkpoint resumes at the start of the next epoch (:func:`settle_epoch_end_restore`).  The
  position is not kept by the loader (the fetcher prefetches: a loader-side count runs a batch
  ahead of training);
  the loader's checkpointed state (:class:`StatefulDataLoader`) is the data configuration, and
  resuming with another configuration (seed, sample count, global batch) raises instead of
  silently changing the order.
"""

from __future__ import annotations

import math
import os
from functools import partial
from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from unigen.data.loaders import worker_kwargs


def seeded_permutation(n: int, seed: int, *key: int) -> Tensor:
    """A permutation of ``range(n)`` that is a pure function of ``(seed, *key)``."""
    from unigen.training.reliability import step_seed

    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, *key)))


class DistributedEpochSampler(DistributedSampler):
    """The epoch's order ``order(epoch)`` (global indices), split across ranks: rank ``r`` takes
    positions ``r, r + N, r + 2N, ...``, so batch ``k`` of every rank together is exactly batch ``k``
    of one process with an N times larger batch.  ``skip_batches(n)`` drops this rank's first ``n``
    batches of the next pass (mid-epoch resume).  Being a ``DistributedSampler``, Lightning uses it
    as is instead of wrapping it in a sampler that reshuffles (module docstring).

    ``drop_last`` says whether the loader drops each rank's last partial batch (it sets
    :attr:`batches_per_epoch`); the ``length % N`` samples that do not split evenly are always left
    out of the epoch."""

    def __init__(self, order: Callable[[int], Tensor], length: int, batch_size: int,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = True) -> None:
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=False,
                         drop_last=True)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if length // num_replicas < (batch_size if drop_last else 1):
            short = f"fewer than one batch of {batch_size}" if drop_last else "no sample"
            raise ValueError(f"{length} samples give each of {num_replicas} ranks {short}")
        self.order, self.length, self.batch_size = order, length, batch_size
        self.drop_last_batch = drop_last
        self._skip = 0

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank's loader yields per epoch."""
        per_rank = len(self)
        return per_rank // self.batch_size if self.drop_last_batch \
            else math.ceil(per_rank / self.batch_size)

    def skip_samples(self, num_indices: int) -> None:
        """Drop the first ``num_indices`` of this rank's next pass (only that pass)."""
        if num_indices < 0:
            raise ValueError(f"cannot skip a negative number of samples ({num_indices})")
        self._skip = num_indices

    def skip_batches(self, num_batches: int) -> None:
        if num_batches < 0:
            raise ValueError(f"cannot skip a negative number of batches ({num_batches})")
        self.skip_samples(num_batches * self.batch_size)

    def __iter__(self):
        order = self.order(self.epoch)
        if len(order) != self.length:
            raise RuntimeError(f"the epoch order has {len(order)} indices, expected {self.length}")
        usable = self.length // self.num_replicas * self.num_replicas
        mine = order[self.rank:usable:self.num_replicas]
        skip, self._skip = self._skip, 0
        return iter(mine[skip:].tolist())

    def __len__(self) -> int:
        return self.length // self.num_replicas


class EpochShuffleSampler(DistributedEpochSampler):
    """The order of :func:`shuffled_loader` as a sampler on its own: ``seeded_permutation(
    num_samples, seed, epoch)`` split across ranks; ``skip_once(n)`` drops the first ``n`` indices
    of this rank's next pass."""

    def __init__(self, num_samples: int, seed: int = 0, batch_size: int = 1,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = True) -> None:
        super().__init__(partial(seeded_permutation, num_samples, seed), num_samples, batch_size,
                         num_replicas, rank, drop_last)

    skip_once = DistributedEpochSampler.skip_samples


def settle_epoch_end_restore(trainer: L.Trainer | None) -> bool:
    """Turn a restored *epoch-end* checkpoint into the start of the next epoch; True if it did.

    A checkpoint written in ``on_train_epoch_end`` (validation once per epoch, or none: Lightning's
    default) holds epoch ``e`` as processed but not completed.  In a step-limited run Lightning
    restores it as "restarting" and replays the end of epoch ``e`` once more: an extra pass of its
    epoch loop that (without validation) trains one batch of the next epoch's order under epoch
    ``e``, then counts the epoch as processed a second time, so every later epoch reads the order of
    the epoch after it (``set_epoch`` gets ``processed``).  Completing the epoch here, with the
    per-epoch counters Lightning clears at an epoch start, makes the resumed run enter epoch
    ``e + 1`` exactly as the uninterrupted one did.  It must run after Lightning restored its loops
    and before ``fit_loop.reset``: :func:`epoch_loader` calls it (Lightning builds the train loader
    in between, and calls no hook there)."""
    if trainer is None or not trainer.fit_loop.restarting:
        return False
    fit = trainer.fit_loop
    epochs = getattr(fit, "epoch_progress", None)  # stand-ins for a Trainer may have no epochs
    if epochs is None or not all(t.ready == t.started == t.processed == t.completed + 1
                                 for t in (epochs.current, epochs.total)):
        return False
    epochs.current.completed = epochs.current.processed
    epochs.total.completed = epochs.total.processed
    loop = fit.epoch_loop
    # a restarting epoch loop would replay the finished epoch's last step (and validation check),
    # counting one more logged step; a fresh one resets its per-epoch counters itself.  The batch
    # counter is cleared now because the loader reads it next (batches_done_this_epoch).  The fit
    # loop stays restarting, so Lightning still checks the loader's state against the checkpoint.
    loop.restarting = False
    loop.batch_progress.reset_on_run()
    return True


def batches_done_this_epoch(trainer: L.Trainer | None, batches_per_epoch: int) -> int:
    """Batches of the current epoch a restored checkpoint has already trained on (0 if not
    resuming); after a restart Lightning's batch counter resumes from ``processed``.  A step
    checkpoint written at the epoch's last batch (a whole epoch, or ``limit_train_batches`` of it),
    which Lightning then rolls over into the next epoch, skips nothing."""
    if trainer is None or not trainer.fit_loop.restarting:
        return 0
    progress = trainer.fit_loop.epoch_loop.batch_progress
    # the epoch's last batch also ends an epoch cut short by limit_train_batches (5 of 8 batches)
    if getattr(progress, "is_last_batch", False):
        return 0
    done = progress.current.processed
    return done if done < batches_per_epoch else 0


def epoch_to_train(trainer: L.Trainer | None) -> int:
    """The epoch Lightning will pass to the sampler's ``set_epoch`` when training starts: 0 for a
    new run, the restored one after a resume.  Set when the loader is built, because Lightning
    first calls ``iter()`` on it before its epoch loop sets the epoch, and loader workers read the
    sampler at that call (a resumed run is not iterated again): without it they would prefetch
    epoch 0's order in whatever epoch the run resumes."""
    fit = getattr(trainer, "fit_loop", None)
    epochs = getattr(fit, "epoch_progress", None)  # stand-ins for a Trainer may have no epochs
    return 0 if epochs is None else int(epochs.current.processed)


class StatefulDataLoader(DataLoader):
    """A DataLoader whose checkpointed state is its data configuration: resuming with another
    configuration (seed, sample count, global batch) raises instead of silently changing the order."""

    def __init__(self, *args, resume_key: dict[str, Any], **kwargs) -> None:
        super().__init__(*args, **worker_kwargs(kwargs))  # workers die with this process
        self.resume_key = resume_key

    def state_dict(self) -> dict[str, Any]:
        return dict(self.resume_key)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        found = dict(state_dict)
        if "global_batch" not in found and "batch_size" in found:
            # ShapesDataModule checkpoints written before this module (one process: same order)
            found["global_batch"] = found.pop("batch_size")
        if found != self.resume_key:
            raise ValueError(f"cannot resume: the checkpoint's training data was {dict(state_dict)}, "
                             f"this data module gives {self.resume_key}")


def world_and_rank(trainer: L.Trainer | None) -> tuple[int, int]:
    """World size and global rank of this process: the trainer's; without one (a loader built
    outside ``fit``), an initialised ``torch.distributed`` process group's, then the ``WORLD_SIZE``
    / ``RANK`` environment variables of a launcher (torchrun, Lightning's subprocess launcher), then
    1 and 0.  The sampler is a ``DistributedSampler``, so Lightning never splits it itself: a rank
    that fell back to 1 / 0 would read the whole data set."""
    if trainer is not None:
        return trainer.world_size, trainer.global_rank
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    world, rank = os.environ.get("WORLD_SIZE"), os.environ.get("RANK")
    if world is not None and rank is not None:
        try:
            return int(world), int(rank)
        except ValueError:
            raise ValueError(f"WORLD_SIZE / RANK must be integers, got {world!r} / {rank!r}") \
                from None
    return 1, 0


def pins_memory(trainer: Any) -> bool:
    """Pinned batches when training on CUDA: Lightning's non-blocking copy of a pinned batch does
    not wait for the previous step's GPU work (a copy from pageable memory would)."""
    device = getattr(getattr(trainer, "strategy", None), "root_device", None)  # no trainer: no device
    return device is not None and device.type == "cuda"


def epoch_loader(module: L.LightningDataModule, dataset: Dataset, order: Callable[[int], Tensor],
                 batch_size: int, num_workers: int, resume_key: dict[str, Any],
                 drop_last: bool = True, collate_fn: Callable | None = None) -> StatefulDataLoader:
    """The train loader of a data module: rank-split epoch order, resumable mid-epoch (module
    docstring).  ``batch_size`` is per rank; ``drop_last`` drops each rank's last partial batch;
    ``collate_fn`` (None: torch's default) changes what a batch holds, never which samples."""
    trainer = module.trainer
    settle_epoch_end_restore(trainer)
    world, rank = world_and_rank(trainer)
    sampler = DistributedEpochSampler(order, len(dataset), batch_size, world, rank, drop_last)
    sampler.set_epoch(epoch_to_train(trainer))
    sampler.skip_batches(batches_done_this_epoch(trainer, sampler.batches_per_epoch))
    return StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                              num_workers=num_workers, persistent_workers=num_workers > 0,
                              pin_memory=pins_memory(trainer), collate_fn=collate_fn,
                              resume_key={**resume_key, "global_batch": batch_size * world})


def shuffled_loader(module: L.LightningDataModule, dataset: Dataset, seed: int, batch_size: int,
                    num_workers: int, drop_last: bool = True,
                    collate_fn: Callable | None = None) -> StatefulDataLoader:
    """:func:`epoch_loader` over a plain shuffle: epoch ``e`` reads
    ``seeded_permutation(len(dataset), seed, e)``."""
    n = len(dataset)
    return epoch_loader(module, dataset, partial(seeded_permutation, n, seed), batch_size,
                        num_workers, {"seed": seed, "num_samples": n}, drop_last, collate_fn)


__all__ = ["DistributedEpochSampler", "EpochShuffleSampler", "StatefulDataLoader",
           "batches_done_this_epoch", "epoch_loader", "epoch_to_train", "seeded_permutation",
           "settle_epoch_end_restore", "shuffled_loader", "world_and_rank"]
