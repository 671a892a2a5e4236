"""Loader workers die with the process that made them (unigen/data/loaders.py): a training process
killed by the OOM killer or `kill -9` left its train loader's workers hanging at exit, each
holding its memory, because their queue's feeder thread blocked on a pipe nobody read."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from torch.utils.data import DataLoader, Dataset

from unigen.data.loaders import DieWithParent, data_loader, die_with_parent
from unigen.data.shapes_datamodule import ShapesDataModule

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
PR_GET_PDEATHSIG = 2
ROOT = Path(__file__).resolve().parents[2]


class DeathSignal(Dataset):
    """Each item: the signal this process gets when its parent dies (0: none)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        value = ctypes.c_int()
        ctypes.CDLL(None, use_errno=True).prctl(PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
        return value.value


@linux
def test_workers_ask_to_die_with_their_parent():
    assert list(data_loader(DeathSignal(), num_workers=1)) == [signal.SIGKILL] * 2
    assert list(DataLoader(DeathSignal(), num_workers=1)) == [0, 0]  # torch's own do not


@linux
@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_workers_of_every_start_method_load(start):
    """Under forkserver (Python 3.14's default) a worker's parent is the fork server: the guard
    must not read that as its loader's process having died."""
    # a list: a spawned worker cannot import this test module to unpickle a class of it
    batches = list(data_loader(list(range(4)), num_workers=1, multiprocessing_context=start))
    assert [int(b) for b in batches] == [0, 1, 2, 3]


MARK = 0


def _mark(worker_id: int) -> None:
    global MARK
    MARK = 100 + worker_id


class Marked(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return MARK


def test_a_loaders_own_worker_init_still_runs_after():
    loader = data_loader(Marked(), num_workers=1, worker_init_fn=_mark)
    assert list(loader) == [100, 100]  # run in the worker, after the guard
    assert die_with_parent(loader.worker_init_fn) is loader.worker_init_fn  # wrapped once
    assert data_loader(Marked(), num_workers=0).worker_init_fn is None  # no workers: as is


def test_every_data_module_loader_has_the_guard():
    dm = ShapesDataModule(image_size=32, batch_size=4, num_train=16, num_val=4, num_test=4,
                          num_workers=1)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert isinstance(loader.worker_init_fn, DieWithParent), loader


@linux
def test_workers_are_gone_soon_after_their_parent_is_killed():
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from torch.utils.data import Dataset
        from unigen.data.loaders import data_loader

        class Texts(Dataset):  # strings go through the workers' pipe
            def __len__(self): return 10_000
            def __getitem__(self, i): return "x" * 20_000

        it = iter(data_loader(Texts(), batch_size=16, num_workers=2, persistent_workers=True))
        next(it)
        print(" ".join(str(w.pid) for w in it._workers), flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 2  # torch's own check takes up to 5 s, and may hang
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.1)
    alive = [p for p in workers if Path(f"/proc/{p}").exists()
             and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
    assert not alive, f"workers {alive} outlived their killed parent"
