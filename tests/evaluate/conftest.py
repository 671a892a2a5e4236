"""Fixtures for the evaluation tests: a tiny random pipeline and a tiny domain classifier saved to
tmp (nothing is downloaded), and the debug eval recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory, tokenizer_dirs):
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    module = UnifiedModule(**tokenizer_dirs, image_size=32, max_text_len=24, dim=32, depth=2,
                           heads=4, tasks={"t2i": 1, "caption": 1, "vqa": 1})
    out = tmp_path_factory.mktemp("eval_model") / "pipeline"
    module.to_pipeline().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def debug_recipe() -> Path:
    return RECIPES / "debug" / "eval_debug.yaml"


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread_per_module):
    yield
