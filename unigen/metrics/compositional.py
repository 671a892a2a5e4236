"""GenEval-style compositional accuracy (Ghosh et al., 2023): per-category accuracy of a checker's
verdicts on generated images, and their mean over categories as the overall score.

Written against a small protocol so any checker fits: each result has ``.correct`` (bool) and
``.category`` (str, e.g. single_object, two_objects, counting, colors, position, attribute_binding).
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from unigen.metrics.base import COMPOSITIONAL, HostMetric, register_metric

GENEVAL_CATEGORIES = ("single_object", "two_objects", "counting", "colors", "position",
                      "attribute_binding")


@runtime_checkable
class CheckResultLike(Protocol):
    correct: bool
    category: str


def per_category_accuracy(results: Sequence[CheckResultLike]) -> dict[str, float]:
    """``{category: fraction correct}`` for the categories present, sorted by name."""
    metric = CompositionalAccuracy()
    metric.update(results)
    return metric.per_category()


def _unpack(result: object) -> tuple[str, bool]:
    if not isinstance(result, CheckResultLike):
        raise TypeError(f"a check result needs .correct and .category, got {type(result).__name__}")
    if not isinstance(result.correct, bool):  # numpy/torch bools would count silently otherwise
        raise TypeError("check result .correct must be a bool, got "
                        f"{type(result.correct).__name__}")
    if not isinstance(result.category, str) or not result.category:
        raise TypeError(f"check result .category must be a non-empty str, got {result.category!r}")
    return result.category, result.correct


@register_metric("compositional_accuracy", COMPOSITIONAL)
class CompositionalAccuracy(HostMetric):
    """Accumulates checker results; ``compute`` gives ``overall`` (mean of the per-category
    accuracies, GenEval's headline number), ``sample_accuracy`` (fraction of all results) and
    ``category/<name>`` for each category seen.

    ``categories`` (optional) fixes the expected set: an unknown category is an error, and the
    overall mean waits for every expected category to have results."""

    def __init__(self, categories: Sequence[str] | None = None) -> None:
        self.categories = tuple(categories) if categories is not None else None
        super().__init__()

    def reset(self) -> None:
        self.hits: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()

    def update(self, results: Sequence[CheckResultLike]) -> None:
        for r in results:
            category, correct = _unpack(r)
            if self.categories is not None and category not in self.categories:
                raise ValueError(f"check result category {category!r} is not one of "
                                 f"{self.categories}")
            self.totals[category] += 1
            self.hits[category] += int(correct)

    def per_category(self) -> dict[str, float]:
        return {c: self.hits[c] / self.totals[c] for c in sorted(self.totals)}

    def compute(self) -> dict[str, Tensor]:
        if not self.totals:
            raise RuntimeError("compositional_accuracy: compute() called before any update()")
        if self.categories is not None:
            missing = [c for c in self.categories if c not in self.totals]
            if missing:
                raise RuntimeError(f"compositional_accuracy: no results for categories {missing}")
        per = self.per_category()
        out = {"overall": sum(per.values()) / len(per),
               "sample_accuracy": sum(self.hits.values()) / sum(self.totals.values())}
        out.update({f"category/{c}": v for c, v in per.items()})
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
