"""Shared fixtures: tiny text and image tokenizers built by the tests (nothing is downloaded)."""

from __future__ import annotations

import contextlib
import os

# OpenMP threads spin while waiting; on a busy 2-core machine that starves tiny ops
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# --import-mode=importlib puts no test folder on sys.path: this one holds cli_testkit
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Lightning gives its loggers a StreamHandler on the sys.stderr of its first import: imported
# first inside a test that captures stderr (capsys), the handler would keep that capture's stream,
# closed when the test ends, and every later Lightning log line would print "--- Logging error
# ---" into the next tests' output. Imported here, it binds the real stderr whatever the order.
import lightning.pytorch  # noqa: E402,F401


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """Tiny models: a second intra-op thread only adds synchronisation, which costs seconds per
    call when other processes load the two cores."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def text_tokenizer_dir(tmp_path_factory):
    from unigen.commands import build_text_tokenizer

    out = tmp_path_factory.mktemp("tok") / "text_tokenizer"
    build_text_tokenizer("shapes", str(out), num_samples=500, vocab_size=512)
    return out


@pytest.fixture(scope="session")
def image_tokenizer_dir(tmp_path_factory):
    from unigen.tokenizers.fsq import FSQTokenizer

    out = tmp_path_factory.mktemp("tok") / "image_tokenizer"
    FSQTokenizer(levels=[5, 5, 5], block_out_channels=[16, 16, 32], latent_channels=8,
                 norm_num_groups=8).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def cli_models(tokenizer_dirs, tmp_path_factory):
    """What the command-line tests decode with: a masked (``masked``) and an autoregressive
    (``ar``) pipeline, tiny and untrained, over the shared tokenizers at 32x32, and two held-out
    scenes ``x0.png``, ``x1.png`` (``x.png`` is ``x0.png``).  Read-only: tests write elsewhere."""
    import shutil

    from unigen.data.shapes import Scene, ShapesDataset, render
    from unigen.training.ar_module import AutoregressiveModule
    from unigen.training.unified_module import UnifiedModule

    root = tmp_path_factory.mktemp("cli_models")
    torch.manual_seed(0)
    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4).export(root / "masked")
    AutoregressiveModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4).export(root / "ar")
    data = ShapesDataset("val", 2, 32)
    for i in range(2):
        render(Scene.from_json(data[i]["scene"]), 32).save(root / f"x{i}.png")
    shutil.copy(root / "x0.png", root / "x.png")
    return root


@pytest.fixture(scope="session")
def layout_text_tokenizer_dir(text_tokenizer_dir, tmp_path_factory):
    """The tiny text tokenizer plus the layout modality's task tokens."""
    from unigen.tokenizers.text import TextTokenizer

    out = tmp_path_factory.mktemp("tok") / "text_tokenizer_layout"
    base = TextTokenizer.from_pretrained(text_tokenizer_dir)
    base.add_task_tokens(["layout2i", "i2layout", "t2layout"]).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer_dirs(text_tokenizer_dir, image_tokenizer_dir):
    return {"text_tokenizer": str(text_tokenizer_dir), "image_tokenizer": str(image_tokenizer_dir)}

@pytest.fixture(scope="session")
def domain_classifier_dir(tmp_path_factory):
    """A random 4-class domain classifier (32 px), saved with save_pretrained."""
    from unigen.metrics import DomainClassifier

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("domain") / "classifier"
    DomainClassifier(["red", "green", "blue", "white"], image_size=32, channels=(8, 16),
                     feature_dim=16).save_pretrained(out)
    return out
