"""``ClassifierModule``: trains the small CNN (:class:`unigen.metrics.DomainClassifier`) whose
penultimate features serve as a domain FID/KID extractor and whose logits feed the Inception Score.

What it predicts is a registered *target* (:data:`CLASSIFIER_TARGETS`), so a new data set needs one
small class, not edits here:

* ``label``: one class per image from ``batch["label"]`` (Fashion-MNIST's 10 classes).
* ``scene_objects``: multi-label, which (color, shape) kinds a shapes scene contains, read from
  ``batch["scene"]`` (the scene JSON); ``fields`` picks the attributes that name a kind.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import (MulticlassAccuracy, MultilabelExactMatch,
                                         MultilabelF1Score)

from unigen.metrics.domain_classifier import DomainClassifier
from unigen.registry import Registry
from unigen.training.optim import FusedOptimizerClipping, build_adamw, warmup_cosine

CLASSIFIER_TARGETS: Registry[type["ClassifierTarget"]] = Registry("classifier target")


class ClassifierTarget(ABC):
    """Turns a batch into targets: class indices [B] (single-label) or multi-hot [B, K].
    Subclasses set ``_names`` (the classes) and ``key`` (the batch entry they read)."""

    multilabel: bool
    key: str
    _names: list[str]

    @property
    def class_names(self) -> list[str]:
        return self._names

    def entry(self, batch: Mapping[str, Any]) -> Any:
        """The batch entry this target reads, or one error naming the keys there are."""
        if self.key not in batch:
            raise KeyError(f"batch has no {self.key!r} entry (keys: {sorted(batch)})")
        return batch[self.key]

    @abstractmethod
    def __call__(self, batch: Mapping[str, Any]) -> Tensor: ...


@CLASSIFIER_TARGETS.register("label")
class LabelTarget(ClassifierTarget):
    multilabel = False

    def __init__(self, class_names: Sequence[str], key: str = "label") -> None:
        self._names, self.key = list(class_names), key

    def __call__(self, batch: Mapping[str, Any]) -> Tensor:
        labels = torch.as_tensor(self.entry(batch)).long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(self._names)):
            raise ValueError(f"labels must lie in [0, {len(self._names)}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return labels


@CLASSIFIER_TARGETS.register("scene_objects")
class SceneObjectsTarget(ClassifierTarget):
    """Multi-hot over every combination of ``fields`` values of the shapes world, e.g.
    ``("color", "shape")`` -> 48 kinds "red circle", ..."""

    multilabel = True

    def __init__(self, fields: Sequence[str] = ("color", "shape"), key: str = "scene") -> None:
        from unigen.data import shapes

        values = {"color": shapes.COLORS, "shape": shapes.SHAPES, "size": shapes.SIZES}
        unknown = [f for f in fields if f not in values]
        if unknown or not fields:
            raise ValueError(f"fields must be a non-empty subset of {sorted(values)}, "
                             f"got {list(fields)}")
        self.fields, self.key = tuple(fields), key
        self._names = [" ".join(combo) for combo in itertools.product(*(values[f] for f in fields))]
        self._index = {name: i for i, name in enumerate(self._names)}
        self._scene_from_json = shapes.Scene.from_json

    def __call__(self, batch: Mapping[str, Any]) -> Tensor:
        scenes = [self._scene_from_json(s) for s in self.entry(batch)]
        target = torch.zeros(len(scenes), len(self._names))
        for row, scene in enumerate(scenes):
            for obj in scene.objects:
                target[row, self._index[" ".join(getattr(obj, f) for f in self.fields)]] = 1.0
        return target


class ClassifierModule(FusedOptimizerClipping, L.LightningModule):
    """Cross-entropy (single-label) or binary cross-entropy (multi-label) training of a
    :class:`DomainClassifier`; ``export(dir)`` writes it where ``domain_classifier`` extractors
    load it.

    Args:
        target: a :data:`CLASSIFIER_TARGETS` name; ``target_args`` its options
            (``label``: ``class_names``, ``key``; ``scene_objects``: ``fields``, ``key``).
        image_size: input size (linked from the data module by the CLI).
        in_channels, channels, feature_dim, groups: the network (see :class:`DomainClassifier`).
        lr, weight_decay, warmup_steps, min_lr_ratio: AdamW with warm-up + cosine decay.
    """

    def __init__(self, target: str = "label", target_args: dict[str, Any] | None = None,
                 image_size: int = 64, in_channels: int = 3,
                 channels: Sequence[int] = (32, 64, 128), feature_dim: int = 128, groups: int = 8,
                 lr: float = 2e-3, weight_decay: float = 1e-4, warmup_steps: int = 50,
                 min_lr_ratio: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.target = CLASSIFIER_TARGETS.get(target)(**(target_args or {}))
        names = self.target.class_names
        self.net = DomainClassifier(names, image_size, in_channels, channels, feature_dim,
                                    self.target.multilabel, groups)
        k = len(names)
        if self.target.multilabel:
            self.val_metrics = torch.nn.ModuleDict({
                "exact_match": MultilabelExactMatch(num_labels=k),
                "f1": MultilabelF1Score(num_labels=k, average="micro")})
        else:
            self.val_metrics = torch.nn.ModuleDict({
                "accuracy": MulticlassAccuracy(num_classes=k, average="micro")})

    def _loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        images = batch["image"]
        size = self.hparams.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"batch images are {tuple(images.shape[-2:])}, the classifier expects "
                             f"{size}x{size} (set model.init_args.image_size)")
        target = self.target(batch).to(self.device)
        _, logits = self.net(images)
        if self.target.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, target)
        else:
            loss = F.cross_entropy(logits, target)
        return loss, logits, target

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def _evaluate(self, batch: Mapping[str, Any], stage: str) -> None:
        loss, logits, target = self._loss(batch)
        n = len(batch["image"])
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n)
        preds = torch.sigmoid(logits) if self.target.multilabel else logits
        for name, metric in self.val_metrics.items():
            metric(preds, target.long())
            self.log(f"{stage}/{name}", metric, batch_size=n)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Same scores as validation on the data module's test split (``unigen test``)."""
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        opt = build_adamw(self.net, hp.lr, hp.weight_decay, (0.9, 0.999))
        total = self.trainer.estimated_stepping_batches if self.trainer else 10_000
        sched = warmup_cosine(opt, hp.warmup_steps, int(total), hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def export(self, path: str | Path) -> None:
        """Save the classifier (``config.json`` + ``model.safetensors``) for FID extraction."""
        self.net.save_pretrained(path)
