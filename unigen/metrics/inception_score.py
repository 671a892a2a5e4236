"""Inception Score (Salimans et al., 2016): exp E_x KL(p(y|x) || p(y)), mean and std over splits.

Only defined for extractors with a single-label classifier head (torch-fidelity's InceptionV3
weights or a single-label domain classifier); fid-helper's TorchScript has no logits."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from unigen.metrics.base import DISTRIBUTION, check_option_values, option_value, register_metric
from unigen.metrics.feature_metric import DistributionMetric
from unigen.metrics.features import ExtractorSpec


def inception_score(logits: Tensor, splits: int = 10) -> tuple[Tensor, Tensor]:
    """(mean, std) over ``splits`` contiguous chunks of ``logits`` [N, K] (no shuffling)."""
    if logits.ndim != 2:
        raise ValueError(f"inception_score: need logits [N, K], got {tuple(logits.shape)}")
    n = logits.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"inception_score: splits={splits} needs 1 <= splits <= the number of "
                         f"generated images, got {n} images; lower splits")
    log_p = logits.double().log_softmax(dim=1)
    scores = []
    for i in range(splits):
        chunk = log_p[i * n // splits:(i + 1) * n // splits]
        log_marginal = chunk.exp().mean(dim=0).log()
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp())
    stacked = torch.stack(scores)
    return stacked.mean(), stacked.std(unbiased=False)


@register_metric("inception_score", DISTRIBUTION)
class InceptionScore(DistributionMetric):
    """IS of the generated images: ``update(images, real=False)`` accumulates; batches with
    ``real=True`` are not part of the score and are skipped (so one loop can feed every
    distribution metric).
    ``compute`` -> ``{"inception_score": mean, "inception_score_std": std}``."""

    higher_is_better = True
    uses_real = False
    extractor_output = "logits"

    def __init__(self, extractor: ExtractorSpec = "inception_v3",
                 num_classes: int | None = None, splits: int = 10, **kwargs: Any) -> None:
        self.check_options({"splits": splits})
        # the "features" this metric stores are the classifier logits
        if extractor is not None:
            super().__init__(extractor, None, **kwargs)
            if self.extractor.num_classes is None:
                raise ValueError(f"inception_score needs an extractor with class logits; "
                                 f"{self.extractor.describe()} has none")
            self.feature_dim = self.extractor.num_classes
        else:
            super().__init__(None, num_classes, **kwargs)
        self.splits = splits
        self.add_state("logits", [], dist_reduce_fx="cat")

    @classmethod
    def check_options(cls, options: Mapping[str, Any], num_samples: int | None = None) -> None:
        """1 <= ``splits`` <= ``num_samples`` (each split needs a generated image)."""
        splits = {"splits": option_value(cls, options, "splits")}
        check_option_values("inception_score", splits, {"splits": 1}, ("splits",), num_samples)

    def update(self, images: Tensor | None, real: bool, features: Tensor | None = None) -> None:
        if real:
            return
        self.logits.append(self.check_features(self.features_of(images, features, "logits")))

    def compute(self) -> dict[str, Tensor]:
        if len(self.logits) == 0:  # a list, or one tensor once the processes' states are gathered
            raise RuntimeError("inception_score: compute() called before any generated images")
        mean, std = inception_score(dim_zero_cat(self.logits), self.splits)
        return {"inception_score": mean, "inception_score_std": std}
