"""Compositional accuracy aggregation, the metric registry and the report files."""

import importlib.metadata
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from unigen.metrics import (METRICS, CompositionalAccuracy, Sweep, build_metrics, compute_metrics,
                            per_category_accuracy, write_report)


@dataclass
class Result:
    correct: bool
    category: str


RESULTS = ([Result(True, "counting")] * 3 + [Result(False, "counting")]
           + [Result(True, "colors")] + [Result(False, "colors")] * 3
           + [Result(True, "position")] * 2)


def test_per_category_and_overall():
    assert per_category_accuracy(RESULTS) == {"colors": 0.25, "counting": 0.75, "position": 1.0}
    metric = CompositionalAccuracy()
    metric.update(RESULTS[:5])
    metric.update(RESULTS[5:])
    out = {k: v.item() for k, v in metric.compute().items()}
    assert out["overall"] == pytest.approx((0.25 + 0.75 + 1.0) / 3)  # GenEval: mean over categories
    assert out["sample_accuracy"] == pytest.approx(6 / 10)
    assert out["category/colors"] == 0.25
    metric.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        metric.compute()


def test_compositional_input_checks():
    fixed = CompositionalAccuracy(categories=["counting", "colors"])
    with pytest.raises(ValueError, match="'position' is not one of"):
        fixed.update([Result(True, "position")])
    fixed.update([Result(True, "counting")])
    with pytest.raises(RuntimeError, match=r"no results for categories \['colors'\]"):
        fixed.compute()
    with pytest.raises(TypeError, match="must be a bool"):
        CompositionalAccuracy().update([Result(np.bool_(True), "colors")])
    with pytest.raises(TypeError, match="needs .correct and .category"):
        CompositionalAccuracy().update([object()])


def test_registry_builds_recipe_lists_and_shares_resources(domain_classifier_dir):
    assert {"fid", "kid", "inception_score", "rfid", "psnr", "ssim", "clip_score", "bleu4",
            "cider_d", "vqa_exact_match", "compositional_accuracy"} <= set(METRICS.names())
    from unigen.metrics import build_feature_extractor

    extractor = build_feature_extractor({"name": "domain_classifier", "path": str(domain_classifier_dir)})
    metrics = build_metrics(["fid", {"name": "kid", "subset_size": 4, "subsets": 3}, "cider_d"],
                            shared={"extractor": extractor})
    assert list(metrics) == ["fid", "kid", "cider_d"]
    assert metrics["fid"].extractor is extractor and metrics["kid"].extractor is extractor
    assert metrics["fid"].kind == "distribution" and metrics["cider_d"].kind == "caption"
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name in ("fid", "kid"):
        metrics[name].update(images, real=True)
        metrics[name].update(images.flip(-1), real=False)
    metrics["cider_d"].update(["a b", "c d"], [["a b"], ["c d"]])
    flat = compute_metrics(metrics)
    assert set(flat) == {"fid", "kid", "kid_std", "cider_d"} and flat["cider_d"] == pytest.approx(5.0)
    assert set(build_metrics({"psnr": None, "ssim": {}})) == {"psnr", "ssim"}
    with pytest.raises(KeyError, match="unknown metric 'fidd'"):
        build_metrics(["fidd"])
    with pytest.raises(ValueError, match="listed twice"):
        build_metrics(["psnr", "psnr"])


def test_psnr_ssim_known_values():
    metrics = build_metrics(["psnr", "ssim"])
    original = torch.full((2, 3, 16, 16), 0.5)
    metrics["psnr"].update(original + 0.1, original)  # MSE 0.01 -> 20 dB
    metrics["ssim"].update(original, original)
    assert metrics["psnr"].compute().item() == pytest.approx(20.0, rel=1e-5)
    assert metrics["ssim"].compute().item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        metrics["psnr"].update(original[:1], original)


def test_report_files_hold_the_numbers(tmp_path):
    metric = CompositionalAccuracy()
    metric.update(RESULTS)
    results = {"fid": torch.tensor(12.3456789), "kid": {"kid": 0.0123, "kid_std": 0.001},
               "compositional_accuracy": metric.compute()}
    sweeps = [Sweep("steps", "steps", "accuracy", [4, 8, 16], {"maskgit": [0.5, 0.6, 0.7]}),
              Sweep("guidance", "guidance_scale", "fid", [1.0, 2.0], {"cfg": [30.0, 20.5]})]
    meta = {"model": "runs/unified", "split": "heldout", "seed": 0,
            "sampler": {"name": "maskgit", "steps": 16}}
    paths = write_report(tmp_path / "eval", results, meta, metric.per_category(), sweeps)
    data = json.loads(paths["results"].read_text())
    assert data["metrics"]["fid"] == pytest.approx(12.3456789, rel=1e-6)
    assert data["metrics"]["kid_std"] == 0.001
    assert data["metrics"]["compositional_accuracy/overall"] == pytest.approx(2 / 3)
    assert data["metadata"]["sampler"] == {"name": "maskgit", "steps": 16}
    assert data["metadata"]["versions"]["torch"] == importlib.metadata.version("torch")
    assert data["per_category"]["colors"] == 0.25
    assert data["sweeps"][0]["series"]["maskgit"] == [0.5, 0.6, 0.7]
    md = paths["report"].read_text()
    for text in ("| fid | 12.3457 |", "| kid | 0.0123 |", "| colors | 0.2500 |", "| 16 | 0.7000 |",
                 "| 2 | 20.5000 |", "![per_category](per_category.png)", "heldout"):
        assert text in md
    for key in ("per_category", "sweep_steps", "sweep_guidance"):
        with Image.open(paths[key]) as img:
            assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_report_input_errors(tmp_path):
    with pytest.raises(ValueError, match="has 1 values for 2"):
        Sweep("s", "steps", "acc", [1, 2], {"a": [0.1]})
    with pytest.raises(ValueError, match="sweep name"):
        Sweep("bad name/..", "steps", "acc", [1], {"a": [0.1]})
    with pytest.raises(ValueError, match="not a scalar"):
        write_report(tmp_path, {"fid": torch.zeros(2)}, {})


def test_aggregates_the_shapes_checker_results():
    from unigen.data import checker
    from unigen.data.shapes import ShapesDataset

    data = ShapesDataset("val", 6, image_size=64, task_text="caption")
    items = [data[i] for i in range(6)]
    # each image against its own caption and against the next image's caption
    results = [checker.check(x["image"], x["caption"]) for x in items]
    results += [checker.check(x["image"], y["caption"]) for x, y in zip(items, items[1:])]
    metric = CompositionalAccuracy()
    metric.update(results)
    out = metric.compute()
    assert out["sample_accuracy"].item() == pytest.approx(sum(r.correct for r in results) / 11)
    assert set(metric.per_category()) == {r.category for r in results}


def test_evaluate_reconstruction_with_an_image_tokenizer(domain_classifier_dir):
    from unigen.tokenizers import fsq
    from unigen.metrics import build_feature_extractor, evaluate_reconstruction

    torch.manual_seed(0)
    tokenizer = fsq.FSQTokenizer(levels=[5, 5, 5], block_out_channels=[16, 16, 32],
                                 latent_channels=8, norm_num_groups=8).eval()
    extractor = build_feature_extractor({"name": "domain_classifier", "path": str(domain_classifier_dir)})
    metrics = build_metrics(["rfid", "psnr", "ssim"], shared={"extractor": extractor})
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = evaluate_reconstruction(tokenizer, [{"image": images[:4]}, images[4:]], metrics)
    recon = tokenizer.decode(tokenizer.encode(images))
    mse = ((recon - images) ** 2).mean(dim=(1, 2, 3))
    assert out["psnr"] == pytest.approx((-10 * mse.log10()).mean().item(), rel=1e-4)
    assert out["rfid"] > 0 and -1 <= out["ssim"] <= 1
    with pytest.raises(ValueError, match="not reconstruction metrics"):
        evaluate_reconstruction(tokenizer, [images], build_metrics(["cider_d"]))
