"""The CLIP and classifier recipes parse, instantiate, and (debug versions) train and export."""

import json
from pathlib import Path

import pytest

from unigen.cli import instantiate_recipe, main
from unigen.data.shapes import vocabulary_words
from unigen.training.classifier_module import ClassifierModule
from unigen.training.clip_module import ClipModule

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("name, cls, size", [
    ("clip_shapes.yaml", ClipModule, 64), ("debug/clip_debug.yaml", ClipModule, 32),
    ("classifier_shapes.yaml", ClassifierModule, 64),
    ("debug/classifier_debug.yaml", ClassifierModule, 32)])
def test_recipe_instantiates(name, cls, size):
    cli = instantiate_recipe(RECIPES / name)
    assert isinstance(cli.model, cls)
    assert cli.model.hparams.image_size == size == cli.datamodule.hparams.image_size
    if cls is ClipModule:
        # the recipes' word list must cover the shapes world's words
        assert set(vocabulary_words()) <= set(cli.model.vocabulary)
    else:
        assert len(cli.model.net.class_names) == 48 and cli.model.net.multilabel


@pytest.mark.slow  # two short fits through the CLI: ~20 s on 2 CPU cores
def test_debug_recipes_train_and_export(tmp_path):
    from unigen.metrics import CLIPScore, DomainClassifierExtractor

    for name, out in (("clip_debug", tmp_path / "clip"), ("classifier_debug", tmp_path / "cls")):
        assert main(["fit", "--config", str(RECIPES / "debug" / f"{name}.yaml"), "--export_dir",
                     str(out), "--trainer.default_root_dir", str(tmp_path / name)]) == 0
    info = json.loads((tmp_path / "clip" / "unigen_clip.json").read_text())
    assert 0.0 <= info["retrieval"]["i2t_top1"] <= 1.0 and info["vocabulary_size"] == 65
    assert CLIPScore(clip=tmp_path / "clip").encoder.max_text_length == 32
    assert DomainClassifierExtractor(str(tmp_path / "cls")).feature_dim == 16
