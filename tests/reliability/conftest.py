"""Puts this folder on ``sys.path`` so the tests import their helpers (resume_testkit,
kill_switch) by name, in this process and in the recipes' ``class_path``; runs torch on one CPU
thread here (tiny models: a second thread only adds synchronisation, badly so on a busy machine)."""

import sys
from pathlib import Path

import pytest
import torch

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread_per_module):
    yield


@pytest.fixture(scope="session")
def tiny_pipeline(tokenizer_dirs):
    """An untrained 1-block unified model over the shared tiny tokenizers (32x32 images)."""
    from unigen.training.unified_module import UnifiedModule

    module = UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4, seed=0)
    torch.manual_seed(0)
    module.configure_model()
    return module.to_pipeline()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("reliability") / "model"
    tiny_pipeline.save_pretrained(out)
    return out
