"""The image-tokenizer recipes parse and instantiate; the debug recipe trains and exports."""

from __future__ import annotations

from pathlib import Path

import pytest

from unigen.tokenizers import FSQTokenizer, ImageTokenizer, LFQTokenizer, VQTokenizer
from unigen.training import TokenizerModule

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MAIN = sorted(RECIPES.glob("tokenizer_*.yaml"))
DEBUG = sorted((RECIPES / "debug").glob("tokenizer_*.yaml"))
EXPECTED = {  # recipe -> (tokenizer class, image size, latent grid)
    "tokenizer_fsq_shapes": (FSQTokenizer, 64, (16, 16)),
    "tokenizer_fsq_shapes_fast": (FSQTokenizer, 64, (16, 16)),
    "tokenizer_fsq_shapes_8x8": (FSQTokenizer, 64, (8, 8)),
    "tokenizer_fsq_shapes_cpu": (FSQTokenizer, 48, (6, 6)),
    "tokenizer_vq_shapes": (VQTokenizer, 64, (16, 16)),
    "tokenizer_lfq_shapes": (LFQTokenizer, 64, (16, 16)),
    "tokenizer_fsq_fashion_mnist": (FSQTokenizer, 32, (8, 8)),
}


def _instantiate(path: Path, tmp_path: Path, *extra: str):
    from unigen.cli import instantiate_recipe

    return instantiate_recipe(path, ["--trainer.default_root_dir", str(tmp_path),
                                     "--trainer.logger.init_args.save_dir", str(tmp_path), *extra])


def test_all_expected_recipes_exist():
    # a new tokenizer recipe is instantiated by test_recipe_instantiates without being listed here
    assert {p.stem for p in MAIN} >= set(EXPECTED)
    assert {p.stem for p in DEBUG} >= {"tokenizer_fsq_debug", "tokenizer_vq_debug",
                                       "tokenizer_lfq_debug"}


@pytest.mark.parametrize("path", MAIN + DEBUG, ids=lambda p: p.stem)
def test_recipe_instantiates(path, tmp_path):
    data_class = _data_class_path(path)
    cli = _instantiate(path, tmp_path)
    assert isinstance(cli.model, TokenizerModule)
    tokenizer = cli.model.tokenizer
    assert isinstance(tokenizer, ImageTokenizer)
    assert f"{type(cli.datamodule).__module__}.{type(cli.datamodule).__name__}" == data_class
    image_size = cli.datamodule.hparams.image_size
    assert image_size % tokenizer.downsample_factor == 0
    assert cli.trainer.max_steps > 0
    if path.stem in EXPECTED:
        cls, size, grid = EXPECTED[path.stem]
        assert isinstance(tokenizer, cls) and image_size == size
        assert tokenizer.latent_grid(image_size) == grid


def test_choosing_the_quantizer_is_one_line(tmp_path):
    path = RECIPES / "debug" / "tokenizer_fsq_debug.yaml"
    text = path.read_text().replace("unigen.tokenizers.fsq.FSQTokenizer",
                                    "unigen.tokenizers.lfq.LFQTokenizer")
    text = text.replace("levels: [5, 5, 5]", "codebook_size: 128")
    original = path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(original, text.splitlines()) if a != b]
    assert len(text.splitlines()) == len(original) and len(changed) == 2  # class + its own option
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text(text)
    fsq = _instantiate(path, tmp_path).model.tokenizer
    lfq = _instantiate(swapped, tmp_path).model.tokenizer
    assert type(fsq) is FSQTokenizer and type(lfq) is LFQTokenizer
    assert lfq.codebook_size == 128  # the quantizer's option reached it
    # the autoencoder settings of the recipe carry over unchanged
    shared = {k: v for k, v in fsq.config.items() if k != "levels"}
    assert {k: lfq.config[k] for k in shared} == shared
    assert lfq.latent_grid(32) == fsq.latent_grid(32) == (8, 8)


def test_debug_recipe_trains_and_exports(tmp_path):
    from unigen.cli import main

    out = tmp_path / "tokenizer"
    main(["fit", "--config", str(RECIPES / "debug" / "tokenizer_fsq_debug.yaml"),
          "--trainer.default_root_dir", str(tmp_path),
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--export_dir", str(out),
          "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
          "--data.init_args.num_train", "32", "--data.init_args.num_val", "8"])
    tokenizer = ImageTokenizer.from_pretrained(out)
    assert isinstance(tokenizer, FSQTokenizer)
    assert list(tmp_path.rglob("reconstructions/val_step0000002.png"))


def _data_class_path(path: Path) -> str:
    import yaml

    return yaml.safe_load(path.read_text())["data"]["class_path"]
