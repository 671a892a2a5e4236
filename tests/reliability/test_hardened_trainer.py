"""What ``unigen fit`` installs on every recipe's Trainer (``harden_trainer``), and the one-line
refusals of a ``--ckpt_path`` that can never resume."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from unigen.cli import instantiate_recipe, main
from unigen.training.host_threads import HostThreads
from unigen.training.reliability import (AtomicCheckpointIO, NonFiniteLossGuard, ReseedEveryStep,
                                         harden_trainer, step_seed)

DEBUG = Path(__file__).resolve().parents[2] / "recipes" / "debug"


@pytest.mark.parametrize("recipe, configured", [("unified_debug.yaml", False),
                                                ("tokenizer_fsq_debug.yaml", True)])
def test_every_recipe_gets_atomic_io_guard_reseeding_and_a_stable_last(recipe, configured,
                                                                       tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = instantiate_recipe(DEBUG / recipe, ["--trainer.default_root_dir", "run"]).trainer
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    kinds = [type(cb) for cb in trainer.callbacks]
    assert kinds.count(NonFiniteLossGuard) == 1 and kinds.count(ReseedEveryStep) == 1
    assert kinds.count(HostThreads) == 1
    assert trainer.callbacks[kinds.index(HostThreads)].num_threads == 1
    (ckpt,) = trainer.checkpoint_callbacks  # the recipe's own, or Lightning's default one
    assert ckpt.dirpath == str(tmp_path / "run" / "checkpoints") and ckpt.save_last is True
    assert kinds.index(ModelCheckpoint) > kinds.index(ReseedEveryStep)
    reseed = trainer.callbacks[kinds.index(ReseedEveryStep)]
    assert reseed.seed == 0  # the recipe's seed_everything
    before = list(trainer.callbacks)
    assert harden_trainer(trainer, 0).callbacks == before, "installing twice changes nothing"


def test_explicit_choices_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = instantiate_recipe(DEBUG / "tokenizer_fsq_debug.yaml", [
        "--seed_everything", "false", "--trainer.callbacks.init_args.save_last", "false",
        "--trainer.callbacks.init_args.dirpath", str(tmp_path / "mine")]).trainer
    (ckpt,) = trainer.checkpoint_callbacks
    assert ckpt.dirpath == str(tmp_path / "mine") and ckpt.save_last is False
    assert not any(isinstance(cb, ReseedEveryStep) for cb in trainer.callbacks)


def test_a_recipes_own_host_threads_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = '{"class_path": "unigen.training.host_threads.HostThreads", "init_args": {"num_threads": 3}}'
    trainer = instantiate_recipe(DEBUG / "unified_debug.yaml", [
        "--trainer.default_root_dir", "run", f"--trainer.callbacks+={own}"]).trainer
    (host,) = [cb for cb in trainer.callbacks if isinstance(cb, HostThreads)]
    assert host.num_threads == 3


def test_last_without_save_last_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(DEBUG / "tokenizer_fsq_debug.yaml"),
              "--trainer.callbacks.init_args.save_last", "false", "--ckpt_path", "last"])
    assert exc.value.code == 1
    assert "ckpt_path 'last' needs a ModelCheckpoint with save_last" in capsys.readouterr().err


def test_a_missing_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(DEBUG / "tokenizer_fsq_debug.yaml"),
              "--ckpt_path", str(tmp_path / "nope.ckpt")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unigen:")]
    assert err == [f"unigen: error: checkpoint not found: {tmp_path / 'nope.ckpt'}"]
    # a folder (a run's, a pipeline's) is not "not found": it is the wrong kind of path
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(DEBUG / "tokenizer_fsq_debug.yaml"), "--ckpt_path", str(tmp_path)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unigen:")]
    assert err == [f"unigen: error: {tmp_path} is a directory; a checkpoint is a .ckpt file (e.g. "
                   f"{tmp_path / 'checkpoints' / 'last.ckpt'})"]
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(tmp_path), "--out", str(tmp_path / "model")])
    assert f"{tmp_path} is a directory; a checkpoint is a .ckpt file" in capsys.readouterr().err


def _draws() -> tuple[float, float, float]:
    return torch.rand(()).item(), float(np.random.rand()), random.random()


def test_reseeding_is_a_function_of_seed_step_and_micro_batch():
    def start(callback: ReseedEveryStep, step: int, batch_idx: int) -> tuple[float, float, float]:
        trainer = SimpleNamespace(global_step=step, global_rank=0, accumulate_grad_batches=2)
        callback.on_train_batch_start(trainer, None, None, batch_idx)
        return _draws()

    a, b = ReseedEveryStep(7), ReseedEveryStep(7)
    batches = [(0, 0), (0, 1), (1, 2), (1, 3)]  # (step, batch index): two micro-batches a step
    first = [start(a, s, i) for s, i in batches]
    torch.manual_seed(123), np.random.seed(5), random.seed(9)  # whatever came before
    assert [start(b, s, i) for s, i in batches] == first
    assert len(set(first)) == 4, "steps and micro-batches draw different numbers"
    resumed = ReseedEveryStep(7)
    assert start(resumed, 1, 3) == first[3], \
        "a run resumed inside an accumulation window draws what the uninterrupted one drew"
    assert start(ReseedEveryStep(8), 1, 3) != first[3]
    assert step_seed(7, 2, 0, 0) != step_seed(7, 0, 2, 0) and 0 <= step_seed(7, 1) < 2**63
