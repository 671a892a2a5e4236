"""Kernel Inception Distance (Binkowski et al., 2018): unbiased MMD^2 with the polynomial kernel
k(x, y) = (gamma x.y + coef0)^degree, averaged over random subsets of both feature sets.

Unlike FID's moments, KID needs every feature until ``compute``
(:class:`~unigen.metrics.feature_metric.FeatureSetMetric`); it computes in float64."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from unigen.metrics.base import DISTRIBUTION, check_option_values, option_value, register_metric
from unigen.metrics.feature_metric import FeatureSetMetric
from unigen.metrics.features import ExtractorSpec


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> Tensor:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: Tensor, k_yy: Tensor, k_xy: Tensor) -> Tensor:
    """Unbiased MMD^2 of two equal-size samples: within-set kernel means exclude the diagonal."""
    m = k_xx.shape[0]
    off_diagonal = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
    within = off_diagonal / (m * (m - 1))
    return within - 2 * k_xy.sum() / (m * m)


def kernel_inception_distance(real: Tensor, fake: Tensor, subsets: int = 100,
                              subset_size: int = 1000, degree: int = 3,
                              gamma: float | None = None, coef0: float = 1.0,
                              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(mean, std) of MMD^2 over ``subsets`` draws of ``subset_size`` rows from each set."""
    if generator is None:
        raise ValueError("kernel_inception_distance needs an explicit torch.Generator for subsets")
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"KID subsets must be an integer >= 1, got {subsets!r}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    if min(len(real), len(fake)) < subset_size or subset_size < 2:
        raise ValueError(f"KID subset_size={subset_size} needs 2 <= subset_size <= the number of "
                         f"samples (real {len(real)}, generated {len(fake)}); lower subset_size")
    real, fake = real.double(), fake.double()

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return polynomial_kernel(a, b, degree, gamma, coef0)

    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:subset_size]]
        y = fake[torch.randperm(len(fake), generator=generator)[:subset_size]]
        values.append(mmd2_unbiased(kernel(x, x), kernel(y, y), kernel(x, y)))
    stacked = torch.stack(values)
    return stacked.mean(), stacked.std(unbiased=False)


@register_metric("kid", DISTRIBUTION)
class KID(FeatureSetMetric):
    """KID between real and generated images; ``compute`` -> ``{"kid": mean, "kid_std": std}``.
    Subsets are drawn from ``torch.Generator().manual_seed(seed)``, so results are repeatable."""

    higher_is_better = False

    def __init__(self, extractor: ExtractorSpec = "inception_v3",
                 feature_dim: int | None = None, subsets: int = 100, subset_size: int = 1000,
                 degree: int = 3, gamma: float | None = None, coef0: float = 1.0, seed: int = 0,
                 reset_real_features: bool = True, **kwargs: Any) -> None:
        self.check_options({"subsets": subsets, "subset_size": subset_size})
        super().__init__(extractor, feature_dim, reset_real_features, **kwargs)
        self.subsets, self.subset_size = subsets, subset_size
        self.degree, self.gamma, self.coef0, self.seed = degree, gamma, coef0, seed

    @classmethod
    def check_options(cls, options: Mapping[str, Any], num_samples: int | None = None) -> None:
        """``subsets`` >= 1 and 2 <= ``subset_size`` <= ``num_samples`` (each set has that many)."""
        values = {k: option_value(cls, options, k) for k in ("subsets", "subset_size")}
        check_option_values("kid", values, {"subsets": 1, "subset_size": 2}, ("subset_size",),
                            num_samples)

    def compute(self) -> dict[str, Tensor]:
        real, fake = self.feature_sets("kid")
        mean, std = kernel_inception_distance(
            real, fake, self.subsets, self.subset_size, self.degree, self.gamma, self.coef0,
            torch.Generator().manual_seed(self.seed))
        return {"kid": mean, "kid_std": std}
