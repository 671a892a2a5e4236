"""ClassifierModule: targets, a tiny overfit, and export as a domain FID extractor."""

import pytest
import torch

from metrics_testkit import COLORS, BlocksData, batch, fast_trainer
from unigen.metrics import FID, DomainClassifierExtractor, InceptionScore
from unigen.training.classifier_module import CLASSIFIER_TARGETS, ClassifierModule

TINY = dict(image_size=32, channels=(8, 16), feature_dim=16, lr=1e-2, warmup_steps=2)


def test_label_classifier_learns_and_exports_an_extractor(tmp_path):
    torch.manual_seed(0)
    module = ClassifierModule(target="label", target_args={"class_names": list(COLORS)}, **TINY)
    data = batch(16)
    with torch.no_grad():
        before = module._loss(data)[0].item()
    fast_trainer(max_steps=30).fit(module, datamodule=BlocksData(num_train=64, num_val=16))
    with torch.no_grad():
        after, logits, target = module._loss(data)
    assert after.item() < 0.5 * before
    assert (logits.argmax(-1) == target).float().mean().item() == 1.0
    out = tmp_path / "classifier"
    module.export(out)
    extractor = DomainClassifierExtractor(str(out))
    assert extractor.num_classes == 4 and extractor.feature_dim == 16
    torch.testing.assert_close(extractor(data["image"]).logits, logits)
    # a trained single-label head gives the Inception Score: above 1 (uniform), at most 4 classes
    score = InceptionScore(extractor=extractor, splits=1)
    score.update(data["image"], real=False)
    assert 1.5 < score.compute()["inception_score"].item() <= 4.0 + 1e-6
    # its features tell the colours apart: red+green vs blue+white is far; two copies of the same
    # balanced set (Blocks repeats every 8 images) are at distance 0
    images, labels = data["image"], data["label"]
    fid = FID(extractor=extractor)
    fid.update(images[labels < 2], real=True)
    fid.update(images[labels >= 2], real=False)
    apart = fid.compute().item()
    fid.reset()
    fid.update(images[:8], real=True)
    fid.update(images[8:], real=False)
    assert apart > 1.0 and abs(fid.compute().item()) < 1e-6


def test_scene_objects_target_marks_every_kind_in_the_scene():
    from unigen.data.shapes import Scene, ShapeObject

    target = CLASSIFIER_TARGETS.get("scene_objects")()
    assert len(target.class_names) == 48 and target.multilabel
    scene = Scene([ShapeObject("circle", "red", "small", 0, 0), ShapeObject("circle", "red", "large", 1, 1),
                   ShapeObject("star", "blue", "small", 2, 2)])
    multi_hot = target({"scene": [scene.to_json(), Scene().to_json()]})
    assert multi_hot.shape == (2, 48)
    on = [target.class_names[i] for i in multi_hot[0].nonzero().flatten()]
    assert on == ["red circle", "blue star"] and multi_hot[1].sum() == 0
    sizes = CLASSIFIER_TARGETS.get("scene_objects")(fields=["size"])
    assert sizes.class_names == ["small", "large"]
    assert sizes({"scene": [scene.to_json()]}).tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match="subset of"):
        CLASSIFIER_TARGETS.get("scene_objects")(fields=["texture"])


def test_multilabel_module_trains_on_shapes_batches():
    from unigen.data.shapes import ShapesDataset

    torch.manual_seed(0)
    module = ClassifierModule(target="scene_objects", **TINY)
    data = ShapesDataset("train", 8, image_size=32)
    items = [data[i] for i in range(8)]
    shapes_batch = {"image": torch.stack([x["image"] for x in items]),
                    "scene": [x["scene"] for x in items]}
    loss, logits, target = module._loss(shapes_batch)
    assert logits.shape == (8, 48) and target.sum() >= 8
    assert loss.item() == pytest.approx(0.69, abs=0.05)  # sigmoid(0)-ish start: BCE ~ log 2
    module.validation_step(shapes_batch, 0)  # the multi-label metrics accept the batch


def test_label_target_errors():
    target = CLASSIFIER_TARGETS.get("label")(class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        target({"label": torch.tensor([0, 2])})
    with pytest.raises(KeyError, match="no 'label' entry"):
        target({"image": None})
    module = ClassifierModule(target="label", target_args={"class_names": ["a", "b"]}, **TINY)
    with pytest.raises(ValueError, match="expects 32x32"):
        module._loss({"image": torch.rand(2, 3, 16, 16), "label": torch.tensor([0, 1])})
