"""DataLoaders whose worker processes die with the process that made them.

When a training process is killed (the out-of-memory killer, ``kill -9``, a cluster preemption),
torch's workers notice within seconds that their parent is gone and leave their loop, but a
worker that still has prefetched batches queued then hangs for ever at exit: its queue's feeder
thread blocks writing to a pipe nobody reads, and ``multiprocessing`` joins that thread before the
process ends.  Such orphans keep their memory (800 MB each for the shapes recipes' loaders) until
someone kills them by hand.  On Linux, every worker of a unigen loader asks the kernel to kill it
when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); elsewhere torch's own check is all
there is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import DataLoader

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class DieWithParent:
    """A ``worker_init_fn`` (picklable, so spawned workers take it too) that ties the worker's life
    to the process that built the loader, then runs ``then`` (a loader's own ``worker_init_fn``)."""

    def __init__(self, then: Callable[[int], Any] | None = None) -> None:
        self.parent = os.getpid()  # the loader is built in the process that owns the workers
        self.then = then

    def __call__(self, worker_id: int) -> None:
        if sys.platform.startswith("linux"):
            if os.getppid() == self.parent:  # fork and spawn: the loader's process is the parent
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != self.parent:  # the parent died before the request took effect
                    os._exit(1)
            elif not _alive(self.parent):  # the loader's process died before this worker started
                os._exit(1)
            # else forkserver (Python 3.14's default): the parent is the fork server, which
            # outlives the loader's process; torch's own watchdog stops such a worker

        if self.then is not None:
            self.then(worker_id)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (Linux: a killed process not yet reaped is a zombie, ``Z``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()  # closed at once, not left to the collector
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def die_with_parent(then: Callable[[int], Any] | None = None) -> DieWithParent:
    """``worker_init_fn`` for a DataLoader built outside :func:`data_loader` (module docstring)."""
    return then if isinstance(then, DieWithParent) else DieWithParent(then)


def worker_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` of a DataLoader with its ``worker_init_fn`` wrapped by :class:`DieWithParent`
    (when it has workers)."""
    if kwargs.get("num_workers", 0) > 0:
        kwargs = {**kwargs, "worker_init_fn": die_with_parent(kwargs.get("worker_init_fn"))}
    return kwargs


def data_loader(dataset: Any, **kwargs: Any) -> DataLoader:
    """``torch.utils.data.DataLoader(dataset, **kwargs)`` whose workers die with this process."""
    return DataLoader(dataset, **worker_kwargs(kwargs))


__all__ = ["DieWithParent", "data_loader", "die_with_parent", "worker_kwargs"]
