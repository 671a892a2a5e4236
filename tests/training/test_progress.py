"""The training progress bar's description in step-limited and epoch-limited runs."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from unigen.training.progress import RunProgressBar, use_run_progress_bar

pytest.importorskip("rich")


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                     enable_model_summary=False, limit_val_batches=0, **kwargs)


def test_a_step_limited_run_shows_the_step_budget_not_a_negative_epoch_bound(tmp_path):
    trainer = use_run_progress_bar(_trainer(tmp_path, max_steps=5, limit_train_batches=3))
    bar = trainer.progress_bar_callback
    assert type(bar) is RunProgressBar
    trainer.fit(BoringModel())  # the per-batch description update runs through a real fit
    text = bar._get_train_description(trainer.current_epoch - 1).strip()  # the last epoch run
    assert text == "Epoch 1 · step 5/5"
    assert "/-" not in text


def test_an_epoch_limited_run_keeps_its_epoch_bound(tmp_path):
    trainer = use_run_progress_bar(_trainer(tmp_path, max_epochs=3))
    bar = trainer.progress_bar_callback
    bar.setup(trainer, BoringModel(), "fit")
    assert bar._get_train_description(0).strip() == "Epoch 0/2"


def test_a_recipes_bar_keeps_its_settings_and_other_bars_are_left_alone(tmp_path):
    rich = RichProgressBar(refresh_rate=7, leave=True)
    trainer = use_run_progress_bar(_trainer(tmp_path, max_steps=2, callbacks=[rich]))
    assert trainer.progress_bar_callback is rich and type(rich) is RunProgressBar
    assert rich.refresh_rate == 7 and rich._leave
    tqdm = TQDMProgressBar()
    trainer = use_run_progress_bar(_trainer(tmp_path, max_steps=2, callbacks=[tqdm]))
    assert type(trainer.progress_bar_callback) is TQDMProgressBar
