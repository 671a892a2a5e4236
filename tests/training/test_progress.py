"""The training progress bar's description in step-limited and epoch-limited runs."""

from __future__ import annotations

import warnings

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


class _RecordingBar(RunProgressBar):
    """The train bar's (position, total) after every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[tuple[float, float | None]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        task = next(t for t in self.progress.tasks if t.id == self.train_progress_bar_id)
        self.shown.append((task.completed, task.total))


def test_the_bar_total_after_a_mid_epoch_resume_is_where_the_run_stops(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    every_4 = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1,
                              filename="{step}")
    first = _RecordingBar()
    L.Trainer(default_root_dir=tmp_path, logger=False, enable_model_summary=False,
              limit_val_batches=0, max_steps=6, limit_train_batches=8,
              callbacks=[first, every_4]).fit(BoringModel())
    assert first.shown == [(i, 6) for i in range(1, 7)]
    resumed = _RecordingBar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoringModel's loader is not resumable: only the bar counts
        _trainer(tmp_path, max_steps=6, limit_train_batches=8, callbacks=[resumed]).fit(
            BoringModel(), ckpt_path=tmp_path / "step=4.ckpt")
    # batches 5 and 6 of the epoch, which ends the run at its 6th batch (Lightning showed 5/1, 6/1)
    assert resumed.shown == [(5, 6), (6, 6)]


def test_output_that_is_not_a_terminal_gets_a_plain_line_every_few_percent(tmp_path, capsys):
    from unigen.training.progress import ProgressLines

    trainer = use_run_progress_bar(_trainer(tmp_path, max_steps=40, limit_train_batches=8),
                                   interactive=False)
    lines = [cb for cb in trainer.callbacks if isinstance(cb, ProgressLines)]
    assert len(lines) == 1 and lines[0]._every(trainer) == 2  # a twentieth of 40 steps
    trainer.fit(BoringModel())
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert [ln.split(" (")[0] for ln in printed] == [f"step {s}/40" for s in range(2, 41, 2)]
    assert printed[-1].startswith("step 40/40 (100 %)") and printed[-1].endswith("steps/s")
    # on a terminal the rich bar is enough; twice installed, the lines come once
    assert not any(isinstance(cb, ProgressLines) for cb in use_run_progress_bar(
        _trainer(tmp_path, max_steps=4), interactive=True).callbacks)
    assert len([cb for cb in use_run_progress_bar(trainer, interactive=False).callbacks
                if isinstance(cb, ProgressLines)]) == 1


# -- rates and totals after a resume --------------------------------------------------------------
SLEEP = 0.05  # seconds a training batch takes at least: no rate above 1 / SLEEP is sensible


class _SlowModel(BoringModel):
    def training_step(self, batch, batch_idx):
        import time

        time.sleep(SLEEP)
        return super().training_step(batch, batch_idx)


class _RateBar(RunProgressBar):
    """The train bar's (position, total, shown rate) after every batch, as its columns render."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[tuple[float, float | None, str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn

        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        task = next(t for t in self.progress.tasks if t.id == self.train_progress_bar_id)
        (speed,) = [c for c in self.progress.columns if isinstance(c, ProcessingSpeedColumn)]
        self.shown.append((task.completed, task.total, speed.render(task).plain))


def _rate(text: str) -> float:
    assert text.endswith("it/s"), text
    return float(text.removesuffix("it/s"))


def _first_run(tmp_path, every_4: bool = True, **kwargs) -> None:
    """A run whose checkpoints are ``step=4.ckpt``, ``step=8.ckpt`` ... (``every_4``) or only
    ``last.ckpt``, written when the fit ends."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    saving = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1,
                             filename="{step}") if every_4 else \
        ModelCheckpoint(dirpath=tmp_path, save_last=True)
    L.Trainer(default_root_dir=tmp_path, logger=False, enable_model_summary=False,
              enable_progress_bar=False, callbacks=[saving], **kwargs).fit(_SlowModel())


def _resume(tmp_path, ckpt: str, callbacks, **kwargs) -> float:
    """Resume from ``ckpt``; the seconds the fit took."""
    import time

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoringModel's loader is not resumable: only the bar counts
        _trainer(tmp_path, callbacks=callbacks, **kwargs).fit(_SlowModel(),
                                                              ckpt_path=tmp_path / ckpt)
    return time.perf_counter() - start


def test_the_bar_rate_after_a_resume_counts_this_process_batches(tmp_path):
    _first_run(tmp_path, max_steps=4, limit_train_batches=8, limit_val_batches=0)
    bar = _RateBar()
    took = _resume(tmp_path, "step=4.ckpt", [bar], max_steps=6, limit_train_batches=8)
    assert [shown[:2] for shown in bar.shown] == [(5, 6), (6, 6)]
    rates = [_rate(shown[2]) for shown in bar.shown]
    # rich's estimate of the epoch's task read 0.00it/s after the first resumed batch (one update,
    # a jump to position 5, not counted); the rate is that of the 2 batches of this process: not
    # the 6 of the run, nor the 4 restored ones
    assert all(0 < rate <= 1 / SLEEP for rate in rates), rates
    assert rates[-1] >= 2 / took


def test_the_bar_rate_is_kept_across_an_epoch_start(tmp_path):
    bar = _RateBar()
    trainer = _trainer(tmp_path, max_steps=5, limit_train_batches=2, callbacks=[bar])
    trainer.fit(_SlowModel())
    # every epoch's first batch read 0.00it/s: rich's estimate is reset at each epoch start
    assert [shown[0] for shown in bar.shown] == [1, 2, 1, 2, 1]
    assert all(0 < _rate(shown[2]) <= 1 / SLEEP for shown in bar.shown), bar.shown


def test_the_bar_total_after_resuming_a_fit_that_ended_mid_epoch(tmp_path):
    # val_check_interval counted across epochs (as the debug recipes do): the end-of-fit "last"
    # checkpoint resumes with a replayed epoch start, but the batches go on from the 5th
    loop = dict(limit_val_batches=0, val_check_interval=8, check_val_every_n_epoch=None)
    _first_run(tmp_path, every_4=False, max_steps=12, limit_train_batches=8, **loop)
    bar = _RateBar()
    _resume(tmp_path, "last.ckpt", [bar], max_steps=14, limit_train_batches=8,
            **{k: v for k, v in loop.items() if k != "limit_val_batches"})
    assert [shown[:2] for shown in bar.shown] == [(5, 6), (6, 6)]  # was 5/2, 6/2


def test_plain_lines_after_a_resume_give_this_process_steps_per_second(tmp_path):
    import io

    from unigen.training.progress import ProgressLines

    _first_run(tmp_path, max_steps=4, limit_train_batches=8, limit_val_batches=0)
    out = io.StringIO()
    took = _resume(tmp_path, "step=4.ckpt", [ProgressLines(every=2, stream=out)], max_steps=8,
                   limit_train_batches=8, enable_progress_bar=False)
    lines = out.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == ["step 6/8", "step 8/8"]
    rates = [float(ln.split(" · ")[-1].removesuffix(" steps/s")) for ln in lines]
    assert all(0 < rate <= 1 / SLEEP for rate in rates), lines
    assert min(rates) >= 2 / took, lines


def test_plain_lines_come_from_rank_zero_only():
    import io
    from types import SimpleNamespace

    from unigen.training.progress import ProgressLines

    out = io.StringIO()
    lines = ProgressLines(every=1, stream=out)
    for rank in (1, 0):
        trainer = SimpleNamespace(global_step=0, is_global_zero=rank == 0, max_steps=4,
                                  callback_metrics={})
        lines.on_train_start(trainer, None)
        trainer.global_step = 1
        lines.on_train_batch_end(trainer, None)
    assert out.getvalue().count("step 1/4") == 1
