"""KID and Inception Score: properties and agreement with torch-fidelity."""

import pytest
import torch

from unigen.metrics import KID, InceptionScore, inception_score, kernel_inception_distance


def _gauss(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_kid_near_zero_for_same_distribution_and_positive_when_shifted():
    g = torch.Generator().manual_seed(0)
    x, y = _gauss(300, 16, 1), _gauss(300, 16, 2)
    same, _ = kernel_inception_distance(x, y, subsets=20, subset_size=100, generator=g)
    shifted, _ = kernel_inception_distance(x, y + 1.0, subsets=20, subset_size=100, generator=g)
    assert abs(same.item()) < 0.02
    assert shifted.item() > 0.2
    # identical subsets: the unbiased estimate is -O(mean kernel diagonal / m), tiny next to a shift
    identical, _ = kernel_inception_distance(x, x, subsets=5, subset_size=300, generator=g)
    assert abs(identical.item()) < 0.1 * shifted.item()


def test_kid_matches_torch_fidelity_on_full_sets():
    from torch_fidelity.metric_kid import kid_features_to_metric

    # subsets of the full size are permutations, so the subset draws do not matter
    x, y = _gauss(120, 10, 3), _gauss(120, 10, 4, shift=0.5)
    theirs = kid_features_to_metric(x, y, kid_subsets=3, kid_subset_size=120, verbose=False,
                                    rng_seed=0)["kernel_inception_distance_mean"]
    ours, std = kernel_inception_distance(x, y, subsets=3, subset_size=120,
                                          generator=torch.Generator().manual_seed(0))
    assert ours.item() == pytest.approx(theirs, rel=1e-6) and theirs > 0.01
    assert std.item() < 1e-9


def test_kid_metric_is_seeded_and_checks_subset_size():
    x, y = _gauss(60, 8, 5), _gauss(60, 8, 6, shift=0.3)

    def run(seed: int) -> float:
        m = KID(extractor=None, feature_dim=8, subsets=10, subset_size=30, seed=seed)
        m.update_features(x, real=True)
        m.update_features(y, real=False)
        return m.compute()["kid"].item()

    assert run(0) == run(0)
    assert run(0) != run(1)
    m = KID(extractor=None, feature_dim=8, subset_size=1000)
    m.update_features(x, real=True)
    m.update_features(y, real=False)
    with pytest.raises(ValueError, match="subset_size=1000"):
        m.compute()
    with pytest.raises(ValueError, match="Generator"):
        kernel_inception_distance(x, y, subset_size=10)


def test_inception_score_extremes_and_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    uniform = torch.zeros(40, 7)
    assert inception_score(uniform, splits=4)[0].item() == pytest.approx(1.0)
    # confident and evenly spread over K classes: IS = K
    confident = 50.0 * torch.eye(5).repeat(4, 1)
    assert inception_score(confident, splits=1)[0].item() == pytest.approx(5.0, rel=1e-6)
    logits = torch.randn(100, 12, generator=torch.Generator().manual_seed(0)) * 3
    theirs = isc_features_to_metric(logits, splits=5, shuffle=False)
    mean, std = inception_score(logits, splits=5)
    assert mean.item() == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert std.item() == pytest.approx(theirs["inception_score_std"], rel=1e-6)


def test_inception_score_metric_uses_generated_only_and_needs_logits(domain_classifier_dir):
    metric = InceptionScore(extractor=None, num_classes=3, splits=1)
    metric.update(None, real=True, features=torch.zeros(4, 3))  # reference images: not scored
    metric.update(None, real=False, features=50.0 * torch.eye(3))
    assert metric.compute()["inception_score"].item() == pytest.approx(3.0, rel=1e-6)
    multilabel_dir = domain_classifier_dir.parent / "multilabel"
    from unigen.metrics import DomainClassifier

    DomainClassifier(["a", "b", "c"], image_size=32, channels=(8,), feature_dim=8,
                     multilabel=True).save_pretrained(multilabel_dir)
    with pytest.raises(ValueError, match="class logits"):
        InceptionScore(extractor={"name": "domain_classifier", "path": str(multilabel_dir)})


def test_kid_and_is_options_are_checked_at_construction_and_against_the_sample_count():
    with pytest.raises(ValueError, match="kid: option subsets must be >= 1, got 0"):
        KID(extractor=None, feature_dim=4, subsets=0, subset_size=4)
    with pytest.raises(ValueError, match="kid: option subset_size must be >= 2, got 1"):
        KID(extractor=None, feature_dim=4, subset_size=1)
    with pytest.raises(ValueError, match="KID subsets must be an integer >= 1, got 0"):
        kernel_inception_distance(_gauss(8, 4, 0), _gauss(8, 4, 1), subsets=0, subset_size=4,
                                  generator=torch.Generator())
    KID.check_options({"subset_size": 8}, 8)
    with pytest.raises(ValueError, match="kid: option subset_size=100 is more than the 8 samples"):
        KID.check_options({"subset_size": 100}, 8)
    with pytest.raises(ValueError, match="kid: option subset_size=1000 is more than the 64"):
        KID.check_options({}, 64)  # the default subset size
    with pytest.raises(ValueError, match="inception_score: option splits must be >= 1"):
        InceptionScore(extractor=None, num_classes=3, splits=0)
    with pytest.raises(ValueError, match="inception_score: option splits=10 is more than the 4"):
        InceptionScore.check_options({}, 4)
    with pytest.raises(ValueError, match="inception_score: splits=5 needs 1 <= splits <= the "
                                         "number of generated images, got 3"):
        inception_score(torch.zeros(3, 7), splits=5)


def test_kid_keeps_extractor_features_in_float32_without_changing_the_result():
    x, y = _gauss(40, 6, 7).float(), _gauss(40, 6, 8, shift=0.4).float()
    metric = KID(extractor=None, feature_dim=6, subsets=5, subset_size=20, seed=3)
    metric.update_features(x, real=True)
    metric.update_features(y, real=False)
    assert metric.real_features[0].dtype == torch.float32  # half the memory of float64
    expected, _ = kernel_inception_distance(x.double(), y.double(), subsets=5, subset_size=20,
                                            generator=torch.Generator().manual_seed(3))
    assert metric.compute()["kid"].item() == expected.item()
    # float64 features (precomputed elsewhere) keep their precision
    precise = KID(extractor=None, feature_dim=6, subsets=5, subset_size=20)
    precise.update_features(_gauss(40, 6, 7), real=True)
    assert precise.real_features[0].dtype == torch.float64


def test_list_states_compute_after_torchmetrics_gathers_them(tmp_path):
    """Under torch.distributed, compute() first gathers each "cat" state into one tensor."""
    import torch.distributed as dist

    from unigen.metrics import FID, PrecisionRecall

    x, y = _gauss(20, 4, 5).float(), _gauss(20, 4, 6, shift=0.5).float()

    def metrics():
        return {"fid": FID(extractor=None, feature_dim=4),
                "kid": KID(extractor=None, feature_dim=4, subsets=2, subset_size=10),
                "pr": PrecisionRecall(extractor=None, feature_dim=4),
                "is": InceptionScore(extractor=None, num_classes=4, splits=2)}

    def computed():
        out = {}
        for name, metric in metrics().items():
            for i in (0, 10):
                metric.update(None, True, features=x[i:i + 10])
                metric.update(None, False, features=y[i:i + 10])
            torch.manual_seed(0)  # KID draws its subsets
            out[name] = metric.compute()
        return out

    alone = computed()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        gathered = computed()
    finally:
        dist.destroy_process_group()
    for name, value in alone.items():
        assert str(gathered[name]) == str(value), name


def test_host_states_gather_through_the_collective_device(tmp_path, monkeypatch):
    """NCCL gathers CUDA tensors only: a host-side state goes through the current CUDA device;
    gloo takes it where it is (and gives what torchmetrics' own gather gives)."""
    import torch.distributed as dist
    from torchmetrics.utilities.distributed import gather_all_tensors

    from unigen.metrics.base import collective_device, gather_on_collective_device

    def kid(**kwargs):
        metric = KID(extractor=None, feature_dim=4, subsets=2, subset_size=4, **kwargs)
        metric.update(None, True, features=_gauss(8, 4, 1).float())
        metric.update(None, False, features=_gauss(8, 4, 2).float())
        torch.manual_seed(0)  # KID draws its subsets
        return metric.compute()

    alone = kid()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert collective_device() is None
        x = torch.arange(6.0).reshape(2, 3)
        assert [t.tolist() for t in gather_on_collective_device(x)] == [t.tolist() for t in gather_all_tensors(x)]
        assert str(kid(dist_sync_fn=gather_on_collective_device)) == str(alone)
        monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
        assert collective_device() == torch.device("cuda", 3)
    finally:
        dist.destroy_process_group()
