"""benchmarks/tokenizer_quality.py: reconstruction scores and the checker ceiling of a tokenizer."""

import json
import re

import pytest
import torch

from benchmarks import tokenizer_quality


def test_checker_scores_identify_exact_and_broken_reconstructions():
    images, scenes, captions = tokenizer_quality.shapes_images("heldout", 6, 48, seed=0)
    assert images.shape == (6, 3, 48, 48)
    exact = tokenizer_quality.checker_scores(images, scenes, captions)
    assert exact == {"caption_query_accuracy": 1.0, "scene_accuracy": 1.0}
    blank = tokenizer_quality.checker_scores(torch.zeros_like(images), scenes, captions)
    assert blank["scene_accuracy"] == 0.0  # every held-out scene has at least one object


def test_script_writes_reconstruction_and_checker_json(tmp_path, image_tokenizer_dir):
    out = tmp_path / "q.json"
    result = tokenizer_quality.main(["--tokenizer", str(image_tokenizer_dir), "--image-size", "32",
                                     "--num-samples", "8", "--batch-size", "4", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "tokenizer_quality_shapes_32" and saved["num_samples"] == 8
    rec = saved["reconstruction"]
    assert rec["latent_grid"] == [8, 8] and rec["codebook_size"] == 125
    assert 0 < rec["codebook_usage"] <= 1 and rec["psnr_db"] > 0 and rec["encode_decode_images_per_s"] > 0
    assert saved["checker"]["originals"]["caption_query_accuracy"] == 1.0
    assert set(saved["checker"]["reconstructions"]) == {"caption_query_accuracy", "scene_accuracy"}
    assert result["reconstruction"] == rec


def test_missing_tokenizer_directory_is_one_clear_error(tmp_path):
    # the path itself ends in "missing": match the message around it, not just the word
    with pytest.raises(FileNotFoundError, match="^image tokenizer directory not found: "
                       + re.escape(str(tmp_path / "missing")) + r" \(train one with ") as err:
        tokenizer_quality.main(["--tokenizer", str(tmp_path / "missing"), "--image-size", "32"])
    assert "\n" not in str(err.value)


def test_classifier_accuracy_counts_the_labelled_class(tmp_path):
    from unigen.metrics import DomainClassifier, DomainClassifierExtractor

    torch.manual_seed(0)
    DomainClassifier(["a", "b", "c"], image_size=32, channels=(8, 16), feature_dim=16) \
        .save_pretrained(tmp_path / "clf")
    classifier = DomainClassifierExtractor(str(tmp_path / "clf"))
    images = torch.rand(10, 3, 32, 32)
    predicted = classifier(images).logits.argmax(-1)
    labels = predicted.clone()
    labels[:3] = (labels[:3] + 1) % 3  # 3 of 10 wrong, across batch boundaries of 4
    assert tokenizer_quality.classifier_accuracy(classifier, images, labels, 4) == pytest.approx(0.7)
