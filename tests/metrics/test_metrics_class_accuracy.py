"""class_accuracy: prompts mapped to the class they name, scored by a domain classifier."""

import re

import pytest
import torch

from metrics_testkit import COLORS, BlocksData, batch, fast_trainer
from unigen.metrics import METRICS, TEXT_IMAGE, ClassAccuracy, DomainClassifier, prompt_class
from unigen.training.classifier_module import ClassifierModule

FASHION = ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot"]


@pytest.mark.parametrize("prompt, name", [
    ("a photo of a t-shirt", "t-shirt"),  # "shirt" inside "t-shirt" is not a second class
    ("A Shirt", "shirt"),
    ("a product photo of an ankle boot", "ankle boot"),
    ("a pair of trousers", "trousers"),
    ("sneaker", "sneaker"),
])
def test_prompt_class_finds_the_one_named_class(prompt, name):
    assert prompt_class(prompt, FASHION) == FASHION.index(name)


def test_prompt_class_prefers_the_longer_name_it_contains():
    assert prompt_class("an ankle boot", ["boot", "ankle boot"]) == 1
    assert prompt_class("a boot", ["boot", "ankle boot"]) == 0


@pytest.mark.parametrize("prompt, found", [
    ("a photo of a hat", "none"),
    ("a bagel", "none"),  # whole words only
    ("a coat and a dress", "'dress', 'coat'"),
])
def test_prompt_class_refuses_prompts_without_exactly_one_class(prompt, found):
    with pytest.raises(ValueError, match=f"must name exactly one.*it names {found}$"):
        prompt_class(prompt, FASHION)


def test_every_fashion_mnist_caption_names_its_own_class():
    from unigen.data.fashion_mnist import CAPTION_TEMPLATES, CLASS_NAMES, caption_for

    for label in range(len(CLASS_NAMES)):
        for template in range(len(CAPTION_TEMPLATES)):
            assert prompt_class(caption_for(label, template), CLASS_NAMES) == label


def _saved_classifier(tmp_path, names, multilabel=False):
    torch.manual_seed(0)
    net = DomainClassifier(names, image_size=32, channels=(8, 16), feature_dim=16,
                           multilabel=multilabel)
    net.save_pretrained(tmp_path / "clf")
    return tmp_path / "clf"


def test_counts_exactly_what_the_classifier_predicts(tmp_path):
    names = ["red", "green", "blue"]
    metric = ClassAccuracy(classifier=_saved_classifier(tmp_path, names))
    assert METRICS.get("class_accuracy") is ClassAccuracy and metric.kind == TEXT_IMAGE
    images = torch.rand(12, 3, 32, 32)
    predicted = metric.predict(images)
    # rows 0-7 prompt the predicted class, rows 8-11 the next one: 8 of 12 right
    wanted = torch.cat((predicted[:8], (predicted[8:] + 1) % 3))
    metric.update(images[:5], [f"a {names[i]} block" for i in wanted[:5]])
    metric.update(images[5:], [f"a {names[i]} block" for i in wanted[5:]])
    # each sample's verdict in the last update: eval writes these into its records
    assert metric.sample_fields() == [
        {"class_prompted": names[int(w)], "class_predicted": names[int(p)], "class_correct": i < 8}
        for i, (w, p) in enumerate(zip(wanted, predicted)) if i >= 5]
    out = metric.compute()
    assert out["class_accuracy"].item() == pytest.approx(8 / 12)
    for k, name in enumerate(names):
        rows = wanted == k
        if rows.any():
            right = (rows & (torch.arange(12) < 8)).sum() / rows.sum()
            assert out[name].item() == pytest.approx(right.item())
        else:
            assert name not in out  # a class never prompted has no accuracy
    # other resolutions are resized to the classifier's input, as for the FID extractor
    metric.reset()
    metric.update(torch.nn.functional.interpolate(images, size=64), [names[i] for i in predicted])
    assert metric.compute()["class_accuracy"].item() == pytest.approx(1.0, abs=0.26)


def test_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="single-label"):
        ClassAccuracy(classifier=_saved_classifier(tmp_path, ["a", "b"], multilabel=True))
    metric = ClassAccuracy(classifier=_saved_classifier(tmp_path / "x", ["red", "blue"]))
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        metric.update(torch.rand(2, 3, 32, 32), ["red"])
    with pytest.raises(ValueError, match="names none"):
        metric.update(torch.rand(1, 3, 32, 32), ["a green block"])
    with pytest.raises(RuntimeError, match="before any update"):
        metric.compute()
    with pytest.raises(FileNotFoundError, match="^domain classifier directory not found: "
                       + re.escape(str(tmp_path / "missing")) + " "):
        ClassAccuracy(classifier=tmp_path / "missing")


def test_a_trained_classifier_scores_real_images_of_the_prompted_class(tmp_path):
    torch.manual_seed(0)
    module = ClassifierModule(target="label", target_args={"class_names": list(COLORS)},
                              image_size=32, channels=(8, 16), feature_dim=16, lr=1e-2,
                              warmup_steps=2)
    fast_trainer(max_steps=30).fit(module, datamodule=BlocksData(num_train=64, num_val=16))
    module.export(tmp_path / "clf")
    data = batch(16)
    metric = ClassAccuracy(classifier=tmp_path / "clf")
    metric.update(data["image"], data["caption"])  # "A red block on the left."
    assert metric.compute()["class_accuracy"].item() == 1.0
    metric.reset()  # the same images under a wrong color's name: all wrong
    names = list(COLORS)
    metric.update(data["image"], [f"a {names[(int(l) + 1) % 4]} block" for l in data["label"]])
    assert metric.compute()["class_accuracy"].item() == 0.0


def test_fashion_mnist_recipes_name_the_data_classes():
    from pathlib import Path

    import yaml

    from unigen.data.fashion_mnist import CLASS_NAMES

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    clf = yaml.safe_load((recipes / "classifier_fashion_mnist.yaml").read_text())
    assert clf["model"]["init_args"]["target_args"]["class_names"] == list(CLASS_NAMES)
    # the classifier the eval recipe scores with is the one the classifier recipe exports
    evaluation = yaml.safe_load((recipes / "eval_fashion_mnist.yaml").read_text())
    entries = [m for m in evaluation["tasks"]["t2i"]["metrics"] if isinstance(m, dict)]
    assert [m["classifier"] for m in entries if m["name"] == "class_accuracy"] == [clf["export_dir"]]
