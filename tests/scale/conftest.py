"""Fixtures of the scale tests: pretokenized shards and a tiny trained-looking pipeline, built from
the shared tiny tokenizers (tests/conftest.py); nothing is downloaded."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def image_tokenizer(image_tokenizer_dir):
    from unigen.tokenizers.base import ImageTokenizer

    return ImageTokenizer.from_pretrained(image_tokenizer_dir)


@pytest.fixture(scope="session")
def shapes_32():
    """40 shapes scenes at 32x32 (an 8x8 grid with the tiny 4x tokenizer)."""
    from unigen.data.shards import shapes_source

    return shapes_source(image_size=32, num_samples=40, seed=0)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, shapes_32, image_tokenizer):
    """The 40 scenes in 3 shards of 16, 16 and 8."""
    from unigen.data.shards import write_shards

    out = tmp_path_factory.mktemp("shards") / "shapes"
    write_shards(shapes_32, image_tokenizer, out, 32, shard_size=16, batch_size=8,
                 source={"data": "shapes"}, progress=False)
    return out


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory, tokenizer_dirs):
    """An untrained 2-block unified model with separate heads, saved as a pipeline (32x32)."""
    from unigen.training.unified_module import UnifiedModule

    module = UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=2, heads=4,
                           head="separate", seed=0)
    torch.manual_seed(0)
    module.configure_model()
    out = tmp_path_factory.mktemp("pipeline") / "model"
    module.export(out)
    return out
