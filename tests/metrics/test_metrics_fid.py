"""FID: exact known values, agreement with torch-fidelity, metric accumulation."""

import math

import pytest
import torch

from unigen.metrics import FID, ReconstructionFID, frechet_distance, gaussian_statistics


def _correlated(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + shift


def test_identical_features_give_zero():
    x = _correlated(200, 16, 0)
    mu, sigma = gaussian_statistics(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma).item()) < 1e-8


def test_translated_set_gives_squared_shift():
    # same covariance, so the trace term vanishes exactly: FID = ||shift||^2
    x = _correlated(300, 8, 1)
    shift = torch.arange(8, dtype=torch.float64) / 4
    fid = frechet_distance(*gaussian_statistics(x), *gaussian_statistics(x + shift))
    assert fid.item() == pytest.approx(shift.dot(shift).item(), rel=1e-9)


def test_diagonal_covariances_closed_form():
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 16.0])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()  # 5 + 3
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got.item() == pytest.approx(expected.item(), rel=1e-12) and expected.item() == 8.0


def test_sampled_gaussians_approach_population_fid():
    # N(0, I) vs N(m, 4I) in 4-d: FID = ||m||^2 + 4 * (1 - 2)^2
    g = torch.Generator().manual_seed(2)
    m = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    x = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    y = 2 * torch.randn(20000, 4, generator=g, dtype=torch.float64) + m
    fid = frechet_distance(*gaussian_statistics(x), *gaussian_statistics(y)).item()
    assert fid == pytest.approx(m.dot(m).item() + 4.0, rel=0.03)


def test_matches_torch_fidelity():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    x, y = _correlated(400, 24, 3), _correlated(350, 24, 4, shift=0.3)
    theirs = fid_statistics_to_metric(fid_features_to_statistics(x), fid_features_to_statistics(y),
                                      verbose=False)["frechet_inception_distance"]
    ours = frechet_distance(*gaussian_statistics(x), *gaussian_statistics(y)).item()
    assert ours == pytest.approx(theirs, rel=1e-3)
    assert theirs > 1.0  # a real difference, not two zeros agreeing


def test_rank_deficient_covariance_is_finite_and_symmetric():
    # fewer samples than dimensions: singular covariances must not give NaN or complex parts
    x, y = _correlated(10, 32, 5), _correlated(12, 32, 6)
    f_xy = frechet_distance(*gaussian_statistics(x), *gaussian_statistics(y)).item()
    f_yx = frechet_distance(*gaussian_statistics(y), *gaussian_statistics(x)).item()
    assert math.isfinite(f_xy) and f_xy > 0
    assert f_xy == pytest.approx(f_yx, rel=1e-6)


def test_metric_accumulates_batches_like_one_shot():
    x, y = _correlated(90, 6, 7), _correlated(60, 6, 8, shift=1.0)
    metric = FID(extractor=None, feature_dim=6)
    for chunk in x.split(25):
        metric.update_features(chunk, real=True)
    for chunk in y.split(17):
        metric.update(None, real=False, features=chunk)
    expected = frechet_distance(*gaussian_statistics(x), *gaussian_statistics(y))
    assert metric.compute().item() == pytest.approx(expected.item(), rel=1e-9)


def test_reset_real_features_false_keeps_reference_statistics():
    x, y = _correlated(50, 4, 9), _correlated(50, 4, 10, shift=2.0)
    metric = FID(extractor=None, feature_dim=4, reset_real_features=False)
    metric.update_features(x, real=True)
    metric.update_features(y, real=False)
    first = metric.compute().item()
    metric.reset()
    assert int(metric.fake_n) == 0 and int(metric.real_n) == 50
    metric.update_features(y, real=False)
    assert metric.compute().item() == pytest.approx(first, rel=1e-12)


def test_feature_metric_errors():
    with pytest.raises(ValueError, match="feature_dim"):
        FID(extractor=None)
    metric = FID(extractor=None, feature_dim=4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        metric.update_features(torch.zeros(3, 5), real=True)
    with pytest.raises(RuntimeError, match="without an extractor"):
        metric.update(torch.rand(2, 3, 8, 8), real=True)
    with pytest.raises(ValueError, match="NaN or infinite"):
        metric.update_features(torch.full((2, 4), float("nan")), real=True)
    metric.update_features(torch.zeros(1, 4), real=True)
    # one sample is bad input (a user error with a one-line message), not a bug
    with pytest.raises(ValueError, match="fid: need at least 2 real samples, got 1"):
        metric.compute()


def test_rfid_with_domain_extractor_is_zero_for_perfect_reconstruction(domain_classifier_dir):
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    metric = ReconstructionFID(extractor={"name": "domain_classifier", "path": str(domain_classifier_dir)})
    metric.update(images, images)
    assert abs(metric.compute().item()) < 1e-6
    metric.reset()
    metric.update((images * 0.2).clamp(0, 1), images)
    assert metric.compute().item() > 1e-4
    with pytest.raises(ValueError, match="same shape"):
        metric.update(images[:, :, :16], images)


def test_reference_statistics_round_trip(tmp_path, domain_classifier_dir):
    spec = {"name": "domain_classifier", "path": str(domain_classifier_dir)}
    real = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fake = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 0.5
    first = FID(extractor=spec)
    first.update(real, real=True)
    first.update(fake, real=False)
    first.save_real_statistics(tmp_path / "ref.safetensors")
    second = FID(extractor=spec, reset_real_features=False)
    second.load_real_statistics(tmp_path / "ref.safetensors")
    second.update(fake, real=False)
    assert second.compute().item() == pytest.approx(first.compute().item(), rel=1e-12)
    other = FID(extractor=None, feature_dim=16)
    with pytest.raises(ValueError, match="was computed with extractor"):
        other.load_real_statistics(tmp_path / "ref.safetensors")


def test_reference_statistics_follow_the_weights_not_the_path(tmp_path, domain_classifier_dir,
                                                              monkeypatch):
    import shutil

    from unigen.metrics import DomainClassifier

    real = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    first = FID(extractor={"name": "domain_classifier", "path": str(domain_classifier_dir)})
    first.update(real, real=True)
    first.save_real_statistics(tmp_path / "ref.safetensors")
    monkeypatch.chdir(domain_classifier_dir.parent)  # the same classifier by a relative path
    relative = FID(extractor={"name": "domain_classifier", "path": domain_classifier_dir.name},
                   reset_real_features=False)
    relative.load_real_statistics(tmp_path / "ref.safetensors")
    assert int(relative.real_n) == 6
    other = tmp_path / "other"
    shutil.copytree(domain_classifier_dir, other)
    torch.manual_seed(11)
    DomainClassifier(["red", "green", "blue", "white"], image_size=32, channels=(8, 16),
                     feature_dim=16).save_pretrained(other)
    retrained = FID(extractor={"name": "domain_classifier", "path": str(other)})
    with pytest.raises(ValueError, match="was computed with extractor"):
        retrained.load_real_statistics(tmp_path / "ref.safetensors")


def test_fid_refuses_fewer_than_two_samples_up_front():
    FID.check_options({}, 2)
    with pytest.raises(ValueError, match="fid: needs at least 2 samples"):
        FID.check_options({}, 1)
