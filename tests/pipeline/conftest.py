"""The tiny unified pipeline the pipeline tests decode with (built from the shared tokenizers)."""

import pytest
import torch

from unigen.training.unified_module import UnifiedModule


@pytest.fixture(scope="module")
def pipe(tokenizer_dirs):
    torch.manual_seed(0)
    m = UnifiedModule(**tokenizer_dirs, image_size=32, max_text_len=24, dim=32, depth=2, heads=4,
                      tasks={"t2i": 1, "caption": 1, "vqa": 1})
    return m.to_pipeline()
