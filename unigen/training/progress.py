"""The training progress bar: Lightning's rich bar, with a description that fits step-limited runs.

Lightning writes ``Epoch 0/-2`` when a recipe stops by ``max_steps`` (``max_epochs`` is then -1),
and its bar counts the batches of an epoch, which a step budget may never finish.  Here the
description shows the epoch (with its bound only when there is one) and, in a step-limited run,
the optimizer step against ``max_steps``.

The train bar's ``it/s`` is the number of batches trained in this process per second, timed from
the start of training (after a resume's state is restored) over the last half minute.  Lightning
showed rich's estimate for the epoch's task instead, which needs two updates of the task before it
shows anything and forgets them at every epoch start: after a resume it read ``0.00it/s`` (the
first update jumps to the resumed batch position, which is rightly not counted as done), as it did
at the start of every epoch and, once a batch took more than half a minute, for good.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE


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
    _epoch_started = False  # on_train_epoch_start ran and no batch of that epoch has ended yet
    # the train bar's rate: batches trained in this process per second (class defaults, as
    # use_run_progress_bar swaps the class of a bar already made)
    speed_window = 30.0  # seconds of batches the rate is taken over (rich's estimate's period)
    _marks: deque[tuple[float, int]] | None = None  # (time, batches trained in this process)
    _batches = 0
    _rate: float | None = None

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        per_epoch = trainer.num_training_batches
        if trainer.max_steps is None or trainer.max_steps < 0:
            return per_epoch
        left = max(0, trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
        return min(per_epoch, self._epoch_position + left)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the clock starts here, after a resumed run's state is restored: a resume's steps are
        # neither counted nor timed
        self._batches, self._rate = 0, None
        self._marks = deque([(time.perf_counter(), 0)], maxlen=4096)
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_position = 0
        self._epoch_started = True
        super().on_train_epoch_start(trainer, pl_module)

    def _count_batch(self) -> None:
        now = time.perf_counter()
        self._batches += 1
        marks = self._marks
        if marks is None:  # training started before this bar saw it: time from the first batch
            self._marks = deque([(now, self._batches)], maxlen=4096)
            return
        marks.append((now, self._batches))
        while len(marks) > 2 and marks[1][0] <= now - self.speed_window:
            marks.popleft()  # the oldest mark kept is the last one at least a window old
        since, before = marks[0]
        self._rate = (self._batches - before) / max(now - since, 1e-9)

    @property
    def train_rate(self) -> float | None:
        """Batches per second trained in this process (``None`` before its first batch)."""
        return self._rate

    def configure_columns(self, trainer: L.Trainer) -> list:
        columns = super().configure_columns(trainer)
        return [_TrainRateColumn(self, col.style) if type(col) is ProcessingSpeedColumn else col
                for col in columns]

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
        self._count_batch()
        if self.train_progress_bar_id is None:  # resumed mid-epoch: Lightning makes the bar now
            self._epoch_position = batch_idx + 1
        elif self._epoch_started and batch_idx > 0 and self.progress is not None:
            # resumed from a checkpoint written at the end of a fit (with val_check_interval
            # counted across epochs): Lightning replays the epoch start, yet the batches go on
            # from where they stopped, so the total set then (from position 0) fell short
            self._epoch_position = batch_idx + 1
            self.progress.update(self.train_progress_bar_id, total=self.total_train_batches)
        self._epoch_started = False
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.max_steps > 0 and self.progress is not None and self.train_progress_bar_id is not None:
            text = self._get_train_description(trainer.current_epoch)
            if self.theme.description:
                text = f"[{self.theme.description}]{text}"
            self.progress.update(self.train_progress_bar_id, description=text)


if _RICH_AVAILABLE:
    from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn
    from rich.text import Text

    class _TrainRateColumn(ProcessingSpeedColumn):
        """Lightning's ``it/s`` column, showing :attr:`RunProgressBar.train_rate` on the train bar
        (rich's own estimate on the validation, test and predict bars)."""

        def __init__(self, bar: RunProgressBar, style: Any) -> None:
            super().__init__(style)
            self.bar = bar

        def render(self, task: Any) -> Any:
            rate = self.bar.train_rate
            if task.id != self.bar.train_progress_bar_id or rate is None:
                return super().render(task)
            return Text(f"{rate:>.2f}it/s", style=self.style)


class ProgressLines(Callback):
    """One plain line every ``every`` optimizer steps (default: a twentieth of ``max_steps``):
    ``step 450/900 (50 %) · train/loss 3.2140 · 4.9 steps/s``.  Rich draws its bar only on a
    terminal; written to a file or a CI log (``make demo | tee``) a long fit was otherwise silent
    until its end.  The rate is the optimizer steps taken in this process since the previous line
    (since the start of training for the first), per second of it.  Only rank 0 prints."""

    def __init__(self, every: int | None = None, stream: TextIO | None = None) -> None:
        if every is not None and every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        self.every = every
        self.stream = stream
        self._last: tuple[int, float] | None = None

    def _every(self, trainer: L.Trainer) -> int:
        if self.every is not None:
            return self.every
        return max(1, trainer.max_steps // 20) if trainer.max_steps > 0 else trainer.log_every_n_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = (trainer.global_step, time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not trainer.is_global_zero:  # one line per report, not one per rank
            return
        step = trainer.global_step
        if self._last is None:  # added after training started: time from this batch on
            self._last = (step, time.perf_counter())
            return
        if step == self._last[0] or step % self._every(trainer):
            return
        now = time.perf_counter()
        rate = (step - self._last[0]) / max(now - self._last[1], 1e-9)
        self._last = (step, now)
        total = f"/{trainer.max_steps} ({100 * step / trainer.max_steps:.0f} %)" \
            if trainer.max_steps > 0 else ""
        loss = trainer.callback_metrics.get("train/loss")  # a read every few percent, not per step
        shown = f" · train/loss {float(loss):.4f}" if loss is not None else ""
        print(f"step {step}{total}{shown} · {rate:.2f} steps/s", file=self.stream or sys.stdout,
              flush=True)


def use_run_progress_bar(trainer: L.Trainer, interactive: bool | None = None) -> L.Trainer:
    """Give the trainer's rich progress bar (Lightning's default where ``rich`` is installed) the
    description above; its class is swapped in place, so a recipe's bar keeps its theme and refresh
    rate.  A bar of another type (TQDM, a user's own) is left alone.  When the output is not a
    terminal (``interactive``: default ``sys.stdout.isatty()``), :class:`ProgressLines` is added
    beside the rich bar, which draws only at the end there."""
    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:
        bar.__class__ = RunProgressBar
    if interactive is None:
        interactive = sys.stdout.isatty()
    if isinstance(bar, RunProgressBar) and not interactive \
            and not any(isinstance(cb, ProgressLines) for cb in trainer.callbacks):
        trainer.callbacks.append(ProgressLines())
    return trainer


__all__ = ["ProgressLines", "RunProgressBar", "use_run_progress_bar"]
