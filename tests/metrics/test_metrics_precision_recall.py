"""Improved precision/recall (Kynkäänniemi et al., 2019) and density/coverage (Naeem et al., 2020):
agreement with torch-fidelity and with brute-force loops, hand-computed cases, the metric class,
the registry and `unigen eval`."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from unigen.metrics import (DISTRIBUTION, METRICS, PrecisionRecall, build_metric, density_coverage,
                            knn_radii, precision_recall, precision_recall_density_coverage)


def _gauss(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


def _points(*xs: float) -> torch.Tensor:
    """1-D points as [N, 1] features."""
    return torch.tensor(xs, dtype=torch.float64)[:, None]


def _values(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: value.item() for name, value in scores.items()}


# overlapping but different distributions and set sizes, so that no score is 0 or 1 and a swap of
# the real and generated sides would show
REAL, FAKE = _gauss(240, 12, 1), _gauss(170, 12, 2, shift=0.3, scale=1.25)


# --- independent references ---------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_precision_recall_match_torch_fidelity(k):
    from torch_fidelity.metric_prc import (calculate_precision_recall_full,
                                           calculate_precision_recall_part)

    # torch-fidelity's convention: features_1 generated, features_2 real; radius = kthvalue(k + 1)
    # of the distances including the sample's own 0 (= ours, which excludes the sample); closed
    # balls (<=) as ours. It averages in float32, so its fractions are off by float32 rounding.
    precision, recall = precision_recall(REAL, FAKE, k)
    assert 0.05 < precision.item() < 0.95 and 0.05 < recall.item() < 0.999
    for theirs in (calculate_precision_recall_full(FAKE, REAL, k),
                   calculate_precision_recall_part(FAKE, REAL, k, batch_size=64)):
        # the same counts of samples inside a ball
        assert round(theirs[0] * len(FAKE)) == round(precision.item() * len(FAKE))
        assert round(theirs[1] * len(REAL)) == round(recall.item() * len(REAL))
        assert abs(precision.item() - theirs[0]) < 1e-6 and abs(recall.item() - theirs[1]) < 1e-6


def _brute_force(real: torch.Tensor, fake: torch.Tensor, k_pr: int, k_dc: int
                 ) -> dict[str, float]:
    """Both papers' definitions, one pair of samples at a time."""
    real, fake = real.numpy(), fake.numpy()

    def dist(a, b) -> float:
        return float(np.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))))

    def radius(points, i, k) -> float:
        others = sorted(dist(points[i], points[j]) for j in range(len(points)) if j != i)
        return others[k - 1]

    r_pr = [radius(real, i, k_pr) for i in range(len(real))]
    r_dc = [radius(real, i, k_dc) for i in range(len(real))]
    f_pr = [radius(fake, j, k_pr) for j in range(len(fake))]
    d = [[dist(real[i], fake[j]) for j in range(len(fake))] for i in range(len(real))]
    m, n = len(fake), len(real)
    precision = sum(any(d[i][j] <= r_pr[i] for i in range(n)) for j in range(m)) / m
    recall = sum(any(d[i][j] <= f_pr[j] for j in range(m)) for i in range(n)) / n
    density = sum(d[i][j] <= r_dc[i] for i in range(n) for j in range(m)) / (k_dc * m)
    coverage = sum(min(d[i][j] for j in range(m)) <= r_dc[i] for i in range(n)) / n
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


@pytest.mark.parametrize("k_pr, k_dc", [(3, 5), (1, 2), (4, 4)])
def test_all_four_match_brute_force_loops(k_pr, k_dc):
    real, fake = _gauss(45, 3, 3), _gauss(35, 3, 4, shift=0.4, scale=1.3)
    expected = _brute_force(real, fake, k_pr, k_dc)
    ours = _values(precision_recall_density_coverage(real, fake, k_pr, k_dc))
    assert ours == pytest.approx(expected, abs=1e-12)
    assert 0 < expected["coverage"] < 1 and 0 < expected["density"] and expected["density"] != 1
    assert density_coverage(real, fake, k_dc)[0].item() == ours["density"]
    assert precision_recall(real, fake, k_pr)[1].item() == ours["recall"]


# --- hand-computed cases ------------------------------------------------------------------------

def test_knn_radii_exclude_the_point_but_not_its_duplicates():
    x = _points(0, 1, 3, 7)
    assert knn_radii(x, 1).tolist() == [1, 1, 2, 4]
    assert knn_radii(x, 2).tolist() == [3, 2, 3, 6]
    assert knn_radii(x, 3).tolist() == [7, 6, 4, 7]
    # another copy of a point is a neighbour at distance 0
    assert knn_radii(_points(0, 0, 5), 1).tolist() == [0, 0, 5]


def test_small_1d_example_with_exact_fractions():
    # real 0, 1, 2, 3: every 1-NN radius is 1. Generated 0.5 lies in the balls of 0 and 1, 10 in
    # none; the generated 1-NN radius is 9.5 for both, so 0.5's ball holds every real point.
    real, fake = _points(0, 1, 2, 3), _points(0.5, 10)
    scores = precision_recall_density_coverage(real, fake, k=1, k_density_coverage=1)
    # the outlier at 10 makes recall 1; coverage (real balls only) sees that 2 and 3 are missed
    expected = {"precision": Fraction(1, 2), "recall": Fraction(1),
                "density": Fraction(2, 1 * 2), "coverage": Fraction(2, 4)}
    assert _values(scores) == {name: float(v) for name, v in expected.items()}


def test_balls_are_closed():
    # real 0, 1 (radii 1), generated 2, 5 (radii 3): 2 lies exactly on the ball of real 1.
    # Naeem et al.'s prdc (strict <) gives precision, density and coverage 0 here.
    real, fake = _points(0, 1), _points(2, 5)
    scores = _values(precision_recall_density_coverage(real, fake, k=1, k_density_coverage=1))
    assert scores == {"precision": 0.5, "recall": 1.0, "density": 0.5, "coverage": 0.5}


@pytest.mark.parametrize("k", [1, 3, 5])
def test_identical_sets_score_one_and_far_sets_zero(k):
    # integer features: every distance is exact, so the copy of a sample's k-th neighbour lies
    # exactly on its ball's surface (inside: closed balls) whatever order BLAS sums in
    x = torch.randint(-1000, 1000, (60, 6), generator=torch.Generator().manual_seed(5)).double()
    squared = torch.cdist(x, x) ** 2
    assert all(len(set(row.tolist())) == len(x) for row in squared.round())  # no ties
    scores = _values(precision_recall_density_coverage(x, x.clone(), k, k))
    # each real ball holds its own copy and its k neighbours': density (k + 1) / k
    assert scores == pytest.approx({"precision": 1.0, "recall": 1.0, "density": (k + 1) / k,
                                    "coverage": 1.0}, abs=1e-12)
    far = _values(precision_recall_density_coverage(x, x + 100_000.0, k, k))
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


# --- chunks, order, the metric class ------------------------------------------------------------

def test_chunked_equals_unchunked():
    whole = _values(precision_recall_density_coverage(REAL, FAKE, chunk_size=10_000))
    radii = knn_radii(REAL, 3, chunk_size=10_000)
    for chunk_size in (1, 7, 64, 170, 239):
        scores = precision_recall_density_coverage(REAL, FAKE, chunk_size=chunk_size)
        assert _values(scores) == whole
        # BLAS may sum a row's products in another order for another block shape: the distances
        # agree to round-off, which decides nothing unless a distance equals a radius
        torch.testing.assert_close(knn_radii(REAL, 3, chunk_size=chunk_size), radii, rtol=1e-13,
                                   atol=0)


def test_sample_order_does_not_matter():
    g = torch.Generator().manual_seed(0)
    whole = _values(precision_recall_density_coverage(REAL, FAKE, chunk_size=50))
    shuffled = precision_recall_density_coverage(REAL[torch.randperm(len(REAL), generator=g)],
                                                 FAKE[torch.randperm(len(FAKE), generator=g)],
                                                 chunk_size=50)
    assert _values(shuffled) == whole


def test_metric_over_several_updates_equals_the_function_on_all_features():
    metric = PrecisionRecall(extractor=None, feature_dim=12, k=2, k_density_coverage=4,
                             chunk_size=33)
    for lo in range(0, 240, 50):  # uneven batches, real and generated interleaved
        metric.update(None, real=True, features=REAL[lo:lo + 50].float())
        if lo < 170:
            metric.update_features(FAKE[lo:lo + 50].float(), real=False)
    assert metric.real_features[0].dtype == torch.float32  # kept as the extractor gives them
    expected = precision_recall_density_coverage(REAL.float(), FAKE.float(), 2, 4)
    result = metric.compute()
    assert set(result) == {"precision", "recall", "density", "coverage"}
    assert _values(result) == _values(expected)
    assert result["precision"].dtype == torch.float64


@pytest.mark.filterwarnings("ignore:.*was called before the ``update``")
def test_reset_real_features_keeps_the_reference_set():
    kept = PrecisionRecall(extractor=None, feature_dim=12, reset_real_features=False)
    dropped = PrecisionRecall(extractor=None, feature_dim=12)
    for metric in (kept, dropped):
        metric.update_features(REAL, real=True)
        metric.update_features(FAKE, real=False)
        metric.reset()
    assert len(kept.real_features) == 1 and not kept.fake_features
    assert not dropped.real_features
    kept.update_features(FAKE, real=False)
    assert _values(kept.compute()) == _values(precision_recall_density_coverage(REAL, FAKE))
    with pytest.raises(RuntimeError, match="need both real and generated features"):
        dropped.compute()


# --- options and errors -------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"k": 0}, "precision_recall: option k must be >= 1, got 0"),
    ({"k_density_coverage": 0}, "precision_recall: option k_density_coverage must be >= 1, got 0"),
    ({"k": 2.5}, "precision_recall: option k must be an integer, got 2.5"),
    ({"k": True}, "precision_recall: option k must be an integer, got True"),
    ({"chunk_size": 0}, "precision_recall: option chunk_size must be >= 1, got 0"),
])
def test_bad_options_are_refused_at_construction(options, message):
    with pytest.raises(ValueError) as err:
        PrecisionRecall(extractor=None, feature_dim=4, **options)
    assert str(err.value) == message


def test_k_must_be_below_the_sample_count():
    PrecisionRecall.check_options({"k": 7, "k_density_coverage": 7}, 8)
    with pytest.raises(ValueError, match=r"^precision_recall: option k=8 needs more than the 8 "
                                         r"samples .*; lower k$"):
        PrecisionRecall.check_options({"k": 8}, 8)
    with pytest.raises(ValueError, match="option k_density_coverage=5 needs more than the 5"):
        PrecisionRecall.check_options({"k": 2}, 5)  # the default k_density_coverage
    metric = PrecisionRecall(extractor=None, feature_dim=12, k=3)
    metric.update_features(REAL[:10], real=True)
    metric.update_features(FAKE[:3], real=False)
    with pytest.raises(ValueError) as err:
        metric.compute()
    assert str(err.value) == ("precision_recall: k=3 needs at least 4 generated samples (a "
                              "sample's k nearest neighbours exclude itself), got 3; lower k")
    # density and coverage put balls around real samples only: one generated sample will do
    assert 0.0 <= density_coverage(REAL[:6], FAKE[:1], k=5)[1].item() <= 1.0
    with pytest.raises(ValueError, match="precision_recall: k=6 needs at least 7 real samples"):
        density_coverage(REAL[:6], FAKE, k=6)
    metric = PrecisionRecall(extractor=None, feature_dim=12, k=2)
    metric.update_features(REAL[:5], real=True)
    metric.update_features(FAKE, real=False)
    with pytest.raises(ValueError, match="k_density_coverage=5 needs at least 6 real samples"):
        metric.compute()
    with pytest.raises(ValueError, match="feature sizes differ: real 12, generated 3"):
        precision_recall(REAL, FAKE[:, :3])
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1, got 0"):
        knn_radii(REAL, 3, chunk_size=0)


# --- registry, extractor, eval ------------------------------------------------------------------

def test_registered_by_name_with_precomputed_features():
    assert METRICS.get("precision_recall") is PrecisionRecall
    assert PrecisionRecall.kind == DISTRIBUTION and PrecisionRecall.higher_is_better
    metric = build_metric("precision_recall", {"extractor": None}, feature_dim=12, k=4)
    metric.update_features(REAL, real=True)
    metric.update_features(FAKE, real=False)
    assert _values(metric.compute()) == _values(precision_recall_density_coverage(REAL, FAKE, 4))
    with pytest.raises(ValueError, match="without an extractor, pass feature_dim"):
        build_metric("precision_recall", extractor=None)


def test_images_through_an_extractor_equal_its_features(domain_classifier_dir):
    from unigen.metrics import DomainClassifierExtractor

    extractor = DomainClassifierExtractor(str(domain_classifier_dir))
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(8, 3, 32, 32, generator=g), torch.rand(8, 3, 32, 32, generator=g) ** 2
    metric = PrecisionRecall(extractor=extractor, k=2, k_density_coverage=3)
    for lo in (0, 4):
        metric.update(real[lo:lo + 4], real=True)
        metric.update(fake[lo:lo + 4], real=False)
    expected = precision_recall_density_coverage(extractor(real).features,
                                                 extractor(fake).features, 2, 3)
    assert _values(metric.compute()) == pytest.approx(_values(expected), abs=1e-12)


@pytest.mark.parametrize("entry, message", [
    ({"name": "precision_recall", "k": 2, "k_density_coverage": 7}, None),
    ({"name": "precision_recall", "k": 8, "k_density_coverage": 2},
     "tasks.t2i.metrics: precision_recall: option k=8 needs more than the 8 samples"),
    ({"name": "precision_recall", "k": 0},
     "tasks.t2i.metrics: precision_recall: option k must be >= 1, got 0"),
    ({"name": "precision_recall", "nearest_k": 3},
     "tasks.t2i.metrics: unknown option 'nearest_k' for metric 'precision_recall'"),
])
def test_eval_recipes_check_the_options_before_anything_loads(entry, message):
    from unigen.evaluate import parse_config

    recipe = {"data": {"source": "shapes", "num_samples": 8},
              "tasks": {"t2i": {"metrics": [entry]}}}
    if message is None:
        parse_config(recipe)
        return
    with pytest.raises(ValueError) as err:
        parse_config(recipe)
    assert message in str(err.value) and "\n" not in str(err.value)


class _HalfRightPipeline:
    """The t2i part of the pipeline interface `unigen eval` uses: sample i's own image for even i,
    a black image for odd i."""

    def __init__(self, data, image_size: int) -> None:
        self.data, self.image_size, self.device = data, image_size, torch.device("cpu")
        self.transformer, self.image_tokenizer = torch.nn.Linear(2, 2), torch.nn.Identity()

    def made(self, index: int) -> torch.Tensor:
        sample = self.data.sample(index)
        return sample.image if index % 2 == 0 else torch.zeros_like(sample.image)

    def text_to_image(self, prompts, seed, output, return_calls=False, **options):
        images = torch.stack([self.made(s) for s in seed])
        return (images, [1] * len(seed)) if return_calls else images


def test_unigen_eval_reports_the_four_scores(tmp_path, domain_classifier_dir):
    from unigen.evaluate import build_data, evaluate_pipeline
    from unigen.metrics import DomainClassifierExtractor

    shapes = {"source": "shapes", "split": "heldout", "num_samples": 6, "seed": 3}
    data = build_data(shapes, 32)
    recipe = {"data": shapes, "batch_size": 2, "grid_size": 0,
              "resources": {"extractor": {"name": "domain_classifier",
                                          "path": str(domain_classifier_dir)}},
              "tasks": {"t2i": {"metrics": [{"name": "precision_recall", "k": 2,
                                             "k_density_coverage": 3}]}}}
    out = evaluate_pipeline(_HalfRightPipeline(data, 32), recipe, tmp_path / "out", progress=False)
    extractor = DomainClassifierExtractor(str(domain_classifier_dir))
    real, made = [], []
    for lo in (0, 2, 4):  # the run's batches: features of a batch depend only on its images
        real.append(extractor(torch.stack([data.sample(i).image for i in (lo, lo + 1)])).features)
        made.append(extractor(torch.stack([_HalfRightPipeline(data, 32).made(i)
                                           for i in (lo, lo + 1)])).features)
    expected = precision_recall_density_coverage(torch.cat(real), torch.cat(made), 2, 3)
    got = {name.split("/")[-1]: value for name, value in out["metrics"].items()
           if name.startswith("precision_recall/")}
    assert got == pytest.approx(_values(expected), abs=1e-12)
    # half of the generated images are the real ones: in a real ball by construction
    assert got["precision"] >= 0.5


def test_sweeps_and_the_eval_summary_show_its_four_values():
    from unigen.evaluate.sweep import _is_headline

    for value in ("precision", "recall", "density", "coverage"):
        assert _is_headline(f"precision_recall/{value}")
    assert not _is_headline("precision_recall/other")
    assert not _is_headline("kid/precision")  # another metric's part is no headline
