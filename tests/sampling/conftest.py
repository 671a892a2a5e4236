"""Sampler test setup.

The suite runs with ``--import-mode=importlib``, which does not put test folders on ``sys.path``;
this folder is added so the tests can share ``sampling_testkit`` (a uniquely named module).
Sampler tests use tiny tensors, where intra-op threads only add contention on a busy 2-core box.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    yield
