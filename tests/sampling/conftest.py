"""Sampler test setup.

The suite runs with ``--import-mode=importlib``, which does not put test folders on ``sys.path``;
this folder is added so the tests can share ``sampling_testkit`` (a uniquely named module).
Sampler tests use tiny tensors, where intra-op threads only add contention on a busy 2-core box.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
