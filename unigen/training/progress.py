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
    """:class:`RichProgressBar` with ``Epoch 3 · step 1200/30000`` as the training description,
    and a batch total that stays consistent after a mid-epoch resume.

    Lightning's total of a step-limited epoch is ``min(batches per epoch, max_steps -
    global_step)``, counted from the moment the bar is made, while the bar's position is the batch
    index in the epoch.  After a mid-epoch resume both are off: the bar is made at the end of the
    first resumed batch (no epoch start is replayed), whose index continues the epoch, so it showed
    e.g. ``6/2``.  Here the total is the epoch position where training will stop: the batches of
    this epoch done when the bar was made plus the batches the remaining steps take."""

    _epoch_position = 0  # batches of the current epoch trained when the bar's total was set

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        per_epoch = trainer.num_training_batches
        if trainer.max_steps is None or trainer.max_steps < 0:
            return per_epoch
        left = max(0, trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
        return min(per_epoch, self._epoch_position + left)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_position = 0
        super().on_train_epoch_start(trainer, pl_module)

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
        if self.train_progress_bar_id is None:  # resumed mid-epoch: Lightning makes the bar now
            self._epoch_position = batch_idx + 1
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
