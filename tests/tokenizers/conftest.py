"""Fixtures for the image-tokenizer tests; shared helpers live in ``image_tokenizer_testkit``.

The suite may run with ``--import-mode=importlib``, so this folder is put on ``sys.path`` for it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from image_tokenizer_testkit import TINY_TOKENIZERS  # noqa: E402


@pytest.fixture(params=sorted(TINY_TOKENIZERS))
def tokenizer_name(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def single_thread(one_torch_thread):
    """These models are tiny: one thread is as fast as two, and with other processes busy on the
    machine two OpenMP threads can be ~100x slower (they spin waiting for each other)."""
    yield
