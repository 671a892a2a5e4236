"""Frechet Inception Distance (Heusel et al., 2017) on any extractor's features.

Moments are accumulated in float64; the matrix square root uses the symmetric form
tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), whose eigenvalues are real and non-negative, so no
complex parts or "imaginary component" fixes are needed (unlike scipy.linalg.sqrtm on S1 S2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from unigen import io
from unigen.metrics.base import DISTRIBUTION, RECONSTRUCTION, register_metric
from unigen.metrics.feature_metric import DistributionMetric, FeatureMetric
from unigen.metrics.features import ExtractorSpec, check_image_pair, same_network


def gaussian_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of ``features`` [N, D] in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got {tuple(features.shape)}")
    x = features.double()
    return x.mean(dim=0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: Tensor) -> Tensor:
    eigvals, eigvecs = torch.linalg.eigh(matrix)
    # round-off can leave tiny negative eigenvalues on a PSD matrix
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), in float64."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (*d, *d):
        raise ValueError(f"mismatched statistics: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"sigma {tuple(sigma1.shape)}/{tuple(sigma2.shape)}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    middle = (middle + middle.T) / 2  # exact symmetry for eigvalsh
    tr_covmean = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * tr_covmean


class _MomentsFID(FeatureMetric):
    """Running sums (count, sum, sum of outer products) for the real and the generated set."""

    higher_is_better = False

    def __init__(self, extractor: ExtractorSpec = "inception_v3",
                 feature_dim: int | None = None, reset_real_features: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(extractor, feature_dim, **kwargs)
        self.reset_real_features = reset_real_features
        d = self.feature_dim
        for side in ("real", "fake"):
            self.add_state(f"{side}_n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64),
                           dist_reduce_fx="sum")

    def _accumulate(self, features: Tensor, real: bool) -> None:
        x = self.check_features(features)
        side = "real" if real else "fake"
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + x.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + x.sum(dim=0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + x.T @ x)

    def _statistics(self, side: str) -> tuple[Tensor, Tensor]:
        n = int(getattr(self, f"{side}_n"))
        if n < 2:  # a covariance needs two
            raise ValueError(f"{self.metric_name}: need at least 2 {side} samples, got {n}")
        total = getattr(self, f"{side}_sum")
        mu = total / n
        sigma = (getattr(self, f"{side}_outer") - n * torch.outer(mu, mu)) / (n - 1)
        return mu, sigma

    @classmethod
    def check_options(cls, options: Mapping[str, Any], num_samples: int | None = None) -> None:
        """At least 2 samples: the covariance of one is undefined."""
        if num_samples is not None and num_samples < 2:
            raise ValueError(f"{cls.metric_name}: needs at least 2 samples (a covariance), got "
                             f"{num_samples}")

    def compute(self) -> Tensor:
        return frechet_distance(*self._statistics("real"), *self._statistics("fake"))

    # -- reference statistics on disk: extract a fixed real set once, reuse it across runs --------
    def save_real_statistics(self, path: str | os.PathLike) -> None:
        """Write the real-set sums (safetensors) and, beside them, the extractor description
        (``<path>.json``) that must match when they are loaded."""
        path = Path(path)
        io.save_safetensors({"n": self.real_n, "sum": self.real_sum, "outer": self.real_outer}, path)
        io.write_json(path.with_name(path.name + ".json"), {"extractor": self.describe()})

    def load_real_statistics(self, path: str | os.PathLike) -> None:
        path = Path(path)
        saved = io.read_json(path.with_name(path.name + ".json"), "FID statistics description")
        # the same weights are the same extractor whichever path they were read from
        if not same_network(saved.get("extractor"), self.describe()):
            raise ValueError(f"{path} was computed with extractor {saved.get('extractor')}, not "
                             f"{self.describe()}")
        state = io.load_safetensors(path)
        if set(state) != {"n", "sum", "outer"} or state["sum"].shape != (self.feature_dim,):
            raise ValueError(f"{path} does not hold {self.feature_dim}-d FID statistics")
        self.real_n = state["n"].to(self.real_n)
        self.real_sum = state["sum"].to(self.real_sum)
        self.real_outer = state["outer"].to(self.real_outer)

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        # a fixed reference set is extracted once and kept across evaluations
        kept = {k: getattr(self, k).clone() for k in ("real_n", "real_sum", "real_outer")}
        super().reset()
        for k, v in kept.items():
            setattr(self, k, v)


@register_metric("fid", DISTRIBUTION)
class FID(_MomentsFID, DistributionMetric):
    """FID between real images and generated images: ``update(images, real=...)``."""

    def update(self, images: Tensor | None, real: bool, features: Tensor | None = None) -> None:
        self._accumulate(self.features_of(images, features), real)


@register_metric("rfid", RECONSTRUCTION)
class ReconstructionFID(_MomentsFID):
    """rFID of an image tokenizer: FID between originals and their reconstructions."""

    def update(self, reconstruction: Tensor, original: Tensor) -> None:
        check_image_pair(reconstruction, original)
        self._accumulate(self.extract(original).features, real=True)
        self._accumulate(self.extract(reconstruction).features, real=False)
