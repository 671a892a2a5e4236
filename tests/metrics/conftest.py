"""Fixtures for the metrics tests: tiny randomly initialised networks saved to tmp (nothing is
downloaded).

The suite runs with ``--import-mode=importlib``, so this folder is put on ``sys.path`` for the
shared ``metrics_testkit`` module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random CLIP with the word tokenizer, saved the way ClipModule.export saves."""
    from metrics_testkit import Blocks
    from unigen.metrics.clip_tokenizer import build_vocabulary
    from unigen.training.clip_module import ClipModule

    torch.manual_seed(0)
    module = ClipModule(image_size=32, patch_size=8, vision_width=32, vision_layers=1,
                        vision_heads=2, text_width=32, text_layers=1, text_heads=2,
                        max_text_length=16, projection_dim=16, vocab_size=32,
                        vocabulary=build_vocabulary(Blocks(8).texts()))
    out = tmp_path_factory.mktemp("clip") / "tiny_clip"
    module.export(out)
    return out


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    yield
