"""Batch transforms that run in the DataLoader workers, handed to a data module by the model.

A further modality's ``encode`` is host work (the layout parses a JSON scene per sample): done in
the training step it holds every step on the main process, however fast the GPU.  Instead the model
gives the data module a transform in its ``setup`` hook (:meth:`BatchTransforms.set_batch_transform`,
through ``trainer.datamodule``), the data module's loaders collate with it
(:class:`TransformCollate`), and the codes arrive in the batch beside the raw field:
``batch["<segment>_codes"]`` (:func:`codes_key`).  The model reads them there, or encodes on the
host when they are missing (:func:`segment_codes`: a data module without the hook, or a plain dict
batch), with the same result.  Transforms are plain picklable objects (workers may spawn) and live
on the data module, never in global state.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor
from torch.utils.data import default_collate

BatchTransform = Callable[[dict[str, Any]], dict[str, Any]]


def codes_key(segment: str) -> str:
    """The batch key of a further modality's precomputed codes (``layout`` -> ``layout_codes``)."""
    return f"{segment}_codes"


class EncodeModalities:
    """Batch transform: each modality's codes ``[B, *shape]`` (long, CPU) under :func:`codes_key`,
    for every modality whose field the batch has; the raw field stays (validation sampling
    describes and decodes from it)."""

    def __init__(self, modalities: dict[str, Any]) -> None:
        self.modalities = dict(modalities)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        for name, modality in self.modalities.items():
            if modality.field in batch:
                batch[codes_key(name)] = modality.encode(batch[modality.field])
        return batch

    def __repr__(self) -> str:
        return f"EncodeModalities({list(self.modalities)})"


def segment_codes(batch: dict[str, Any], segment: str, modality: Any) -> Tensor | None:
    """A segment's codes: the ones the loader's workers made, else the modality's ``encode`` of the
    raw field here (same codes either way), else None (the batch lacks the field)."""
    codes = batch.get(codes_key(segment))
    if codes is not None:
        return codes
    if modality.field in batch:
        return modality.encode(batch[modality.field])
    return None


class TransformCollate:
    """``default_collate`` followed by the transforms, in order: a picklable ``collate_fn``."""

    def __init__(self, transforms: tuple[BatchTransform, ...]) -> None:
        self.transforms = tuple(transforms)

    def __call__(self, items: list[Any]) -> Any:
        batch = default_collate(items)
        for transform in self.transforms:
            batch = transform(batch)
        return batch

    def __repr__(self) -> str:
        return f"TransformCollate({list(self.transforms)})"


class BatchTransforms:
    """Data-module mixin: named batch transforms, applied in the loaders' collate (workers).

    A model sets them in its ``setup`` and removes them in ``teardown``
    (:meth:`~unigen.training.unified_module.UnifiedModule.setup`); loaders built meanwhile pass
    :meth:`worker_collate` as their ``collate_fn``."""

    def set_batch_transform(self, name: str, transform: BatchTransform | None) -> None:
        """Apply ``transform`` to every batch of the loaders built from now on (None removes it)."""
        transforms = self.__dict__.setdefault("_batch_transforms", {})
        if transform is None:
            transforms.pop(name, None)
        else:
            transforms[name] = transform

    @property
    def batch_transforms(self) -> dict[str, BatchTransform]:
        return dict(self.__dict__.get("_batch_transforms", {}))

    def worker_collate(self) -> Callable[[list[Any]], Any] | None:
        """The loaders' ``collate_fn``: None (torch's default) without transforms."""
        transforms = tuple(self.batch_transforms.values())
        return TransformCollate(transforms) if transforms else None


def hand_off_batch_transform(module: Any, name: str, transform: BatchTransform | None) -> bool:
    """Set (or, with None, remove) ``transform`` on the module's ``trainer.datamodule`` when that
    supports batch transforms; True if it does (otherwise the model does the work itself)."""
    trainer = getattr(module, "_trainer", None)
    data = getattr(trainer, "datamodule", None) if trainer is not None else None
    setter = getattr(data, "set_batch_transform", None)
    if not callable(setter):
        return False
    setter(name, transform)
    return True


__all__ = ["BatchTransforms", "EncodeModalities", "TransformCollate", "codes_key",
           "hand_off_batch_transform", "segment_codes"]
