"""Class accuracy of class-conditional generation: the fraction of generated images that a
classifier trained on the real data assigns to the class their prompt names ("GAN-test",
Shmelkov et al., 2018; the class-conditional counterpart of the shapes checker's accuracy).

FID says whether the images look like the data; it cannot tell that a prompt asking for a sneaker
got a perfectly drawn bag.  The classifier is a :class:`~unigen.metrics.DomainClassifier` saved
by a classifier recipe (``recipes/classifier_fashion_mnist.yaml``); its class names are what the
prompts are searched for, so no table of prompt templates is needed.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from unigen.metrics.base import TEXT_IMAGE, check_same_length, register_metric
from unigen.metrics.features import DomainClassifierExtractor


def prompt_class(prompt: str, class_names: Sequence[str]) -> int:
    """Index of the one class ``prompt`` names, matched as whole words (case-insensitive).

    A name found only inside a longer matched name does not count ("shirt" in "a t-shirt",
    "boot" in "an ankle boot").  A prompt that names no class, or two, is refused: scoring it
    against a guessed class would make the accuracy meaningless."""
    text = prompt.lower()
    spans: list[tuple[int, int, int]] = []
    for index, name in enumerate(class_names):
        # hyphens join words ("t-shirt"), so they count as part of a name here
        pattern = rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])"
        spans += [(m.start(), m.end(), index) for m in re.finditer(pattern, text)]
    outer = {i for s, e, i in spans
             if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)}
    if len(outer) != 1:
        found = "none" if not outer else ", ".join(repr(class_names[i]) for i in sorted(outer))
        raise ValueError(f"class_accuracy: prompt {prompt!r} must name exactly one of the "
                         f"classifier's classes ({', '.join(class_names)}); it names {found}")
    return outer.pop()


@register_metric("class_accuracy", TEXT_IMAGE)
class ClassAccuracy(Metric):
    """``update(images, prompts)``; ``compute()`` -> ``{"class_accuracy": overall, <class>: ...}``
    (per-class accuracy over the classes that were prompted); ``sample_fields()`` -> each sample's
    verdict in the last update.

    ``classifier``: directory of a single-label domain classifier (``export_dir`` of a classifier
    recipe) or a loaded :class:`~unigen.metrics.DomainClassifierExtractor`."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, classifier: str | os.PathLike | DomainClassifierExtractor,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classifier = (classifier if isinstance(classifier, DomainClassifierExtractor)
                           else DomainClassifierExtractor(str(classifier)))
        net = self.classifier.net
        if net.multilabel:
            raise ValueError(f"class_accuracy needs a single-label classifier; "
                             f"{self.classifier.path} is multi-label")
        self.class_names = list(net.class_names)
        k = len(self.class_names)
        self.add_state("correct", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        self._last: list[dict[str, Any]] = []

    def predict(self, images: Tensor) -> Tensor:
        """Classifier's class index [B] of each image."""
        return self.classifier(images).logits.argmax(dim=-1)

    def update(self, images: Tensor, texts: Sequence[str]) -> None:
        check_same_length(images, texts, "images", "prompts")
        labels = torch.tensor([prompt_class(t, self.class_names) for t in texts],
                              device=self.total.device)
        predicted = self.predict(images).to(labels.device)
        hits = predicted == labels
        k = len(self.class_names)
        self.total += torch.bincount(labels, minlength=k)
        self.correct += torch.bincount(labels[hits], minlength=k)
        self._last = [{"class_prompted": self.class_names[int(want)],
                       "class_predicted": self.class_names[int(got)], "class_correct": bool(hit)}
                      for want, got, hit in zip(labels.tolist(), predicted.tolist(), hits.tolist())]

    def sample_fields(self) -> list[dict[str, Any]]:
        """Per sample of the last ``update``: the class prompted, the class the classifier sees and
        whether they agree (eval writes these into the records)."""
        return list(self._last)

    def compute(self) -> dict[str, Tensor]:
        if int(self.total.sum()) == 0:
            raise RuntimeError("class_accuracy: compute() called before any update()")
        out = {"class_accuracy": self.correct.sum().double() / self.total.sum()}
        for name, correct, total in zip(self.class_names, self.correct, self.total):
            if int(total):
                out[name] = correct.double() / total
        return out

    def describe(self) -> dict[str, Any]:
        return {"classifier": self.classifier.describe()}
