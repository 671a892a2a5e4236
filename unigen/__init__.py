"""unigen: unified any-to-any generation with one masked discrete-diffusion transformer.

Public API (imported lazily so ``unigen --help`` starts fast)::

    from unigen import UnifiedPipeline, ImageTokenizer, FSQTokenizer, VQTokenizer, LFQTokenizer, TextTokenizer
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "UnifiedPipeline": "unigen.pipeline",
    "ImageTokenizer": "unigen.tokenizers.base",
    "FSQTokenizer": "unigen.tokenizers.fsq",
    "VQTokenizer": "unigen.tokenizers.vq",
    "LFQTokenizer": "unigen.tokenizers.lfq",
    "DiffusersVQTokenizer": "unigen.tokenizers.vqmodel",
    "TextTokenizer": "unigen.tokenizers.text",
    "UnifiedTransformer": "unigen.modules.transformer",
    "UnifiedModule": "unigen.training.unified_module",
    "TokenizerModule": "unigen.training.tokenizer_module",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unigen' has no attribute {name!r}")
