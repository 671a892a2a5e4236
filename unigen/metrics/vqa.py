"""VQA exact-match accuracy with the VQA evaluation's answer normalisation (Antol et al., 2015).

A prediction is correct when its normalised form equals the normalised form of the answer (or of
any answer when several are acceptable). unigen's synthetic VQA has one ground-truth answer, so the
human-consensus ``min(#matches / 3, 1)`` of VQA v2 does not apply.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from unigen.metrics.base import VQA, check_same_length, register_metric
from unigen.metrics.text_normalize import normalize_answer


def exact_matches(predictions: Sequence[str], answers: Sequence[str | Sequence[str]],
                  normalize: Callable[[str], str] = normalize_answer) -> list[bool]:
    """Per-question correctness; an entry of ``answers`` is one answer or a list of accepted
    ones, compared after ``normalize``."""
    check_same_length(predictions, answers, "predictions", "answers")
    out = []
    for i, (pred, ans) in enumerate(zip(predictions, answers)):
        accepted = [ans] if isinstance(ans, str) else list(ans)
        if not accepted:
            raise ValueError(f"answers[{i}] is an empty list")
        out.append(normalize(pred) in {normalize(a) for a in accepted})
    return out


class ExactMatchRate(Metric):
    """Fraction of texts equal to one of their accepted texts after ``normalize``, in [0, 1]."""

    higher_is_better = True
    full_state_update = False
    metric_name = "exact_match"
    normalize: Callable[[str], str] = staticmethod(normalize_answer)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], answers: Sequence[str | Sequence[str]]) -> None:
        hits = exact_matches(predictions, answers, type(self).normalize)
        self.correct += sum(hits)
        self.total += len(hits)

    def compute(self) -> Tensor:
        if self.total == 0:
            raise RuntimeError(f"{self.metric_name}: compute() called before any update()")
        return self.correct.double() / self.total


@register_metric("vqa_exact_match", VQA)
class VQAExactMatch(ExactMatchRate):
    """Fraction of questions answered exactly (after the VQA normalisation), in [0, 1]."""
