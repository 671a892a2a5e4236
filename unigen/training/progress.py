"""The training progress bar: Lightning's rich bar, with a description that fits step-limited runs.

Lightning writes ``Epoch 0/-2`` when a recipe stops by ``max_steps`` (``max_epochs`` is then -1),
and its bar counts the batches of an epoch, which a step budget may never finish.  Here the
description shows the epoch (with its bound only when there is one) and, in a step-limited run,
the optimizer step against ``max_steps``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class RunProgressBar(RichProgressBar):
    """:class:`RichProgressBar` with ``Epoch 3 · step 1200/30000`` as the training description."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        text = f"Epoch {current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            text += f"/{trainer.max_epochs - 1}"
        if trainer.max_steps > 0:
            text += f" · step {trainer.global_step}/{trainer.max_steps}"
        # same width as the validation description, as Lightning pads it, so the bars do not jump
        return f"{text:{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.max_steps > 0 and self.progress is not None and self.train_progress_bar_id is not None:
            text = self._get_train_description(trainer.current_epoch)
            if self.theme.description:
                text = f"[{self.theme.description}]{text}"
            self.progress.update(self.train_progress_bar_id, description=text)


def use_run_progress_bar(trainer: L.Trainer) -> L.Trainer:
    """Give the trainer's rich progress bar (Lightning's default where ``rich`` is installed) the
    description above; its class is swapped in place, so a recipe's bar keeps its theme and refresh
    rate.  A bar of another type (TQDM, a user's own) is left alone."""
    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:
        bar.__class__ = RunProgressBar
    return trainer


__all__ = ["RunProgressBar", "use_run_progress_bar"]
