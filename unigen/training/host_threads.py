"""The host's share of a GPU training step: one intra-op thread for the CPU-side tensor work.

A unified training step builds its task batch, masks and noise on the host (small tensors: a few
hundred rows by a few hundred positions) and launches the GPU work.  With PyTorch's default of one
intra-op thread per core, every such op above the parallel grain size forks to all cores, and
OpenMP's worker threads then spin for a while after each region.  Next to a data loader whose
workers render images on the same cores, the machine has more runnable threads than cores, and
the training process's main thread waits for a scheduler slice inside ops that should take
microseconds.  The profile of the 26M model on an H200 (16 cores, 8 loader workers; docs/
performance.md, "Where the compact model's step goes") showed exactly that: host ops such as
``index_put_``, ``nonzero`` and even kernel launches averaging 2-3 ms each (one scheduler slice),
the step at 200 ms while the GPU's kernels took 33 ms.  ``torchrun`` sets ``OMP_NUM_THREADS=1``
for the same reason.

:class:`HostThreads` lowers the intra-op threads while the model runs on an accelerator and
restores them afterwards; training on the CPU keeps every thread (there the host is the device).
``unigen fit`` installs it with one thread (:func:`unigen.training.reliability.harden_trainer`); a
recipe that lists its own ``HostThreads`` keeps that one.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class HostThreads(Callback):
    """Run the host side of accelerator training on ``num_threads`` intra-op threads.

    Args:
        num_threads: intra-op threads while the trainer's device is not the CPU (>= 1).
    """

    def __init__(self, num_threads: int = 1) -> None:
        if int(num_threads) < 1:
            raise ValueError(f"HostThreads needs num_threads >= 1, got {num_threads}")
        self.num_threads = int(num_threads)
        self._saved: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.strategy.root_device.type == "cpu" or self._saved is not None:
            return
        self._saved = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._saved is not None:
            torch.set_num_threads(self._saved)
            self._saved = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        # a failed fit may end without teardown; the process (a notebook, a benchmark trying
        # several settings) goes on with its own thread count
        self.teardown(trainer, pl_module, "exception")


__all__ = ["HostThreads"]
