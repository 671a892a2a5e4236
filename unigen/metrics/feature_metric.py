"""Base class for metrics computed on extractor features of real and generated images."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from unigen.metrics.features import ExtractorOutput, ExtractorSpec, build_feature_extractor


class FeatureMetric(Metric):
    """Holds a frozen extractor.

    ``extractor=None`` with an explicit ``feature_dim`` builds a metric fed only with precomputed
    features (see :class:`DistributionMetric`)."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, extractor: ExtractorSpec = "inception_v3",
                 feature_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extractor = None if extractor is None else build_feature_extractor(extractor)
        if self.extractor is not None:
            if feature_dim is not None and feature_dim != self.extractor.feature_dim:
                raise ValueError(f"feature_dim={feature_dim} but the extractor gives "
                                 f"{self.extractor.feature_dim}-d features")
            feature_dim = self.extractor.feature_dim
        if feature_dim is None:
            raise ValueError("without an extractor, pass feature_dim (the size of the features "
                             "you will give update_features)")
        self.feature_dim = int(feature_dim)

    def extract(self, images: Tensor) -> ExtractorOutput:
        if self.extractor is None:
            raise RuntimeError(f"{type(self).__name__} was built without an extractor; "
                               "use update_features with precomputed features")
        return self.extractor(images)

    def features_of(self, images: Tensor | None, features: Tensor | None,
                    output: str = "features") -> Tensor:
        """Exactly one of images / precomputed ``features``; returns the extractor's ``output``."""
        if (images is None) == (features is None):
            raise ValueError("pass either images or features=, not both or neither")
        return getattr(self.extract(images), output) if features is None else features

    def check_features(self, features: Tensor) -> Tensor:
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [N, {self.feature_dim}], "
                             f"got {tuple(features.shape)}")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features contain NaN or infinite values")
        return features.detach().double()

    def describe(self) -> dict[str, Any]:
        return self.extractor.describe() if self.extractor is not None else {"extractor": None}


class DistributionMetric(FeatureMetric):
    """A real-vs-generated metric: ``update(images, real)`` extracts features;
    ``update(None, real, features=...)`` or ``update_features`` takes precomputed ones (e.g.
    cached for a reference set), and ``update_extracted`` the extractor's whole output, so that
    a loop feeding several metrics that share one extractor runs it once per batch."""

    uses_real = True  # whether batches with real=True count (the Inception Score ignores them)
    extractor_output = "features"  # the ExtractorOutput field that update() consumes

    def update_extracted(self, output: ExtractorOutput, real: bool) -> None:
        """``update`` with ``output``, this metric's extractor applied to the batch's images."""
        self.update(None, real, features=getattr(output, self.extractor_output))

    def update_features(self, features: Tensor, real: bool) -> None:
        # through update() so torchmetrics' bookkeeping (update count, compute cache) stays right
        self.update(None, real, features=features)


class FeatureSetMetric(DistributionMetric):
    """A distribution metric that needs every feature of both sides at ``compute`` (KID's kernel
    sums, k-nearest-neighbour balls), not running moments like FID.  Features are kept at the
    precision they come in (extractors give float32: 8 KiB per image and side at 2048-d), half of
    float64's memory and checkpoint size, and nothing lost, as subclasses compute in float64.
    ``reset_real_features=False`` keeps the real side across ``reset`` (a fixed reference set)."""

    def __init__(self, extractor: ExtractorSpec = "inception_v3", feature_dim: int | None = None,
                 reset_real_features: bool = True, **kwargs: Any) -> None:
        super().__init__(extractor, feature_dim, **kwargs)
        self.reset_real_features = reset_real_features
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, images: Tensor | None, real: bool, features: Tensor | None = None) -> None:
        raw = self.features_of(images, features)
        x = self.check_features(raw)
        if raw.dtype.itemsize <= 4:
            x = x.float()
        (self.real_features if real else self.fake_features).append(x)

    def feature_sets(self, name: str) -> tuple[Tensor, Tensor]:
        """(real, generated) features, each ``[N, D]``; ``name`` is the metric's, for the error."""
        # a list of batches, or one tensor once torchmetrics has gathered the processes' states
        if len(self.real_features) == 0 or len(self.fake_features) == 0:
            raise RuntimeError(f"{name}: need both real and generated features before compute()")
        return dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)

    def reset(self) -> None:
        kept = list(self.real_features) if not self.reset_real_features else None
        super().reset()
        if kept is not None:
            self.real_features = kept
