"""k-nearest-neighbour fidelity and diversity of generated images, on extractor features.

- Improved Precision and Recall (Kynkäänniemi et al., NeurIPS 2019): a ball around each real
  sample reaching its k-th nearest real neighbour, and one around each generated sample reaching
  its k-th nearest generated neighbour (k=3 in the paper). Precision = the share of generated
  samples inside at least one real ball (fidelity); recall = the share of real samples inside at
  least one generated ball (diversity).
- Density and Coverage (Naeem et al., ICML 2020, "Reliable Fidelity and Diversity Metrics for
  Generative Models"): real balls only (k=5 in the paper). Density = (1 / kM) * sum over the M
  generated samples of the number of real balls containing it (about 1 when both sets come from
  one distribution, unbounded above); coverage = the share of real balls that contain at least
  one generated sample. A few outliers inflate precision (real outliers have large balls) and
  recall (so do generated ones); density and coverage are the robust versions.

Conventions, as in both papers' code: a sample's k-NN radius excludes the sample itself (its
distance 0 to itself), and distances are Euclidean. Balls are closed (``distance <= radius``),
as in Kynkäänniemi et al.'s code and torch-fidelity; Naeem et al.'s ``prdc`` uses ``<`` for all
four, which differs only where a distance equals a radius exactly (duplicated images, say).

Distances are computed in float64 as ||x||^2 + ||y||^2 - 2 x.y (one matrix product, as
torch-fidelity's ``cdist``, Naeem et al.'s sklearn distances and Kynkäänniemi et al.'s code do),
``chunk_size`` rows at a time against the whole other set ([chunk_size, N] blocks), so 10k x 10k
samples of 2048-d features never need more than one such block. Round-off (~1e-16 relative, and
it may change with the block shape) can only flip a sample lying exactly on a ball's surface.
Like KID, the metric keeps every feature of both sides until ``compute``.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from unigen.metrics.base import DISTRIBUTION, check_option_values, option_value, register_metric
from unigen.metrics.feature_metric import FeatureSetMetric
from unigen.metrics.features import ExtractorSpec

DEFAULT_CHUNK_SIZE = 1024  # a [1024, 10k] float64 block is 80 MiB


def _check_int(what: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"precision_recall: {what} must be an integer >= {least}, got {value!r}")


def _check_sets(sets: Mapping[str, Tensor]) -> None:
    dims = set()
    for side, x in sets.items():
        if x.ndim != 2:
            raise ValueError(f"precision_recall: {side} features must be [N, D], got "
                             f"{tuple(x.shape)}")
        dims.add(x.shape[1])
    if len(dims) > 1:
        raise ValueError("precision_recall: feature sizes differ: "
                         + ", ".join(f"{side} {x.shape[1]}" for side, x in sets.items()))


def _check_k(option: str, k: int, sets: Mapping[str, Tensor]) -> None:
    """``k`` >= 1 and fewer than the samples of each set that gets k-NN balls."""
    _check_int(option, k, 1)
    for side, x in sets.items():
        if k >= len(x):
            raise ValueError(f"precision_recall: {option}={k} needs at least {k + 1} {side} "
                             f"samples (a sample's k nearest neighbours exclude itself), got "
                             f"{len(x)}; lower {option}")


def _squared_distance_blocks(x: Tensor, y: Tensor, chunk_size: int
                             ) -> Iterator[tuple[int, Tensor]]:
    """``(start, D)`` with ``D[i, j] = ||x[start + i] - y[j]||^2`` in float64, ``chunk_size`` rows
    of ``x`` at a time."""
    _check_int("chunk_size", chunk_size, 1)
    x, y = x.double(), y.double()
    y_norms = (y * y).sum(dim=1)
    for start in range(0, len(x), chunk_size):
        rows = x[start:start + chunk_size]
        block = (rows * rows).sum(dim=1)[:, None] + y_norms[None, :] - 2.0 * rows @ y.T
        # the expanded form can round a distance of 0 to a tiny negative number
        yield start, block.clamp_(min=0.0)


def _knn_squared_radii(x: Tensor, ks: Sequence[int], chunk_size: int) -> dict[int, Tensor]:
    """``{k: squared distance of each row of x to its k-th nearest other row}``."""
    radii: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start, block in _squared_distance_blocks(x, x, chunk_size):
        # the sample itself is not one of its neighbours; a duplicate of it is
        block.diagonal(offset=start).fill_(float("inf"))
        nearest = block.topk(max(ks), dim=1, largest=False).values  # ascending
        for k in ks:
            radii[k].append(nearest[:, k - 1])
    return {k: torch.cat(r) for k, r in radii.items()}


def knn_radii(features: Tensor, k: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Euclidean distance of each row of ``features`` [N, D] to its k-th nearest other row, [N]
    float64 (the k-NN ball radius of both papers)."""
    _check_sets({"input": features})
    _check_k("k", k, {"input": features})
    return _knn_squared_radii(features, [k], chunk_size)[k].sqrt()


def _scores(real: Tensor, fake: Tensor, k_pr: int | None, k_dc: int | None, chunk_size: int,
            k_dc_name: str = "k_density_coverage") -> dict[str, Tensor]:
    """The four scores in one pass over [chunk, real] distance blocks; a None k skips its pair.
    ``k_dc_name``: what errors call ``k_dc``."""
    _check_sets({"real": real, "generated": fake})
    if len(fake) == 0:
        raise ValueError("precision_recall: no generated samples")
    if k_pr is not None:
        _check_k("k", k_pr, {"real": real, "generated": fake})
    if k_dc is not None:
        # only real samples get balls in density and coverage
        _check_k(k_dc_name, k_dc, {"real": real})
    ks = sorted({k for k in (k_pr, k_dc) if k is not None})
    real_radii = _knn_squared_radii(real, ks, chunk_size)
    if k_pr is not None:
        fake_radii = _knn_squared_radii(fake, [k_pr], chunk_size)[k_pr]
        in_real_ball = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)
        in_fake_ball = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    if k_dc is not None:
        real_balls_holding = torch.zeros(len(fake), dtype=torch.long, device=fake.device)
        covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for start, block in _squared_distance_blocks(fake, real, chunk_size):
        stop = start + len(block)
        if k_pr is not None:
            in_real_ball[start:stop] = (block <= real_radii[k_pr][None, :]).any(dim=1)
            in_fake_ball |= (block <= fake_radii[start:stop, None]).any(dim=0)
        if k_dc is not None:
            inside = block <= real_radii[k_dc][None, :]
            real_balls_holding[start:stop] = inside.sum(dim=1)
            covered |= inside.any(dim=0)
    out: dict[str, Tensor] = {}
    if k_pr is not None:
        out["precision"] = in_real_ball.double().mean()
        out["recall"] = in_fake_ball.double().mean()
    if k_dc is not None:
        out["density"] = real_balls_holding.double().sum() / (k_dc * len(fake))
        out["coverage"] = covered.double().mean()
    return out


def precision_recall(real: Tensor, fake: Tensor, k: int = 3,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, Tensor]:
    """(precision, recall) of Kynkäänniemi et al. (2019) with k-NN balls around the real and the
    generated features [N, D]; float64 scalars."""
    scores = _scores(real, fake, k, None, chunk_size)
    return scores["precision"], scores["recall"]


def density_coverage(real: Tensor, fake: Tensor, k: int = 5,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, Tensor]:
    """(density, coverage) of Naeem et al. (2020) with k-NN balls around the real features only;
    float64 scalars."""
    scores = _scores(real, fake, None, k, chunk_size, k_dc_name="k")
    return scores["density"], scores["coverage"]


def precision_recall_density_coverage(real: Tensor, fake: Tensor, k: int = 3,
                                      k_density_coverage: int = 5,
                                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, Tensor]:
    """``{"precision", "recall", "density", "coverage"}``, sharing the distance computations."""
    return _scores(real, fake, k, k_density_coverage, chunk_size)


@register_metric("precision_recall", DISTRIBUTION)
class PrecisionRecall(FeatureSetMetric):
    """Improved precision and recall (Kynkäänniemi et al., 2019; ``k``, default 3) and density and
    coverage (Naeem et al., 2020; ``k_density_coverage``, default 5) of generated vs real images:
    ``compute`` -> ``{"precision", "recall", "density", "coverage"}``."""

    higher_is_better = True
    #: the values of ``compute`` that sweeps plot (``precision_recall/<value>`` in results)
    headline_values = ("precision", "recall", "density", "coverage")

    def __init__(self, extractor: ExtractorSpec = "inception_v3",
                 feature_dim: int | None = None, k: int = 3, k_density_coverage: int = 5,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, reset_real_features: bool = True,
                 **kwargs: Any) -> None:
        self.check_options({"k": k, "k_density_coverage": k_density_coverage,
                            "chunk_size": chunk_size})
        super().__init__(extractor, feature_dim, reset_real_features, **kwargs)
        self.k, self.k_density_coverage, self.chunk_size = k, k_density_coverage, chunk_size

    @classmethod
    def check_options(cls, options: Mapping[str, Any], num_samples: int | None = None) -> None:
        """``k``, ``k_density_coverage`` >= 1 and < ``num_samples`` (a sample's neighbours exclude
        itself; each set has that many); ``chunk_size`` >= 1."""
        names = ("k", "k_density_coverage", "chunk_size")
        values = {name: option_value(cls, options, name) for name in names}
        check_option_values("precision_recall", values, dict.fromkeys(names, 1))
        for name in ("k", "k_density_coverage"):
            if num_samples is not None and values[name] >= num_samples:
                raise ValueError(f"precision_recall: option {name}={values[name]} needs more than "
                                 f"the {num_samples} samples (a sample's k nearest neighbours "
                                 f"exclude itself); lower {name}")

    def compute(self) -> dict[str, Tensor]:
        real, fake = self.feature_sets("precision_recall")
        return precision_recall_density_coverage(real, fake, self.k, self.k_density_coverage,
                                                 self.chunk_size)
