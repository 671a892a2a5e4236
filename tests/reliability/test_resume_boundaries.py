"""Exact resume at the edges the mid-step tests (test_exact_resume.py) do not reach: a checkpoint
written at an epoch's end, an EMA updated after every step, and a resumed run with another step
budget than the schedule it restores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kill_switch import SimulatedCrash
from resume_testkit import (DEBUG, FAST, checkpoint, first_difference, step_checkpoint,
                            tokenizer_case, training_state_difference)

from unigen.cli import main

# 8 training images in batches of 4: two steps an epoch
EPOCH_ARGS = (*FAST, "--data.init_args.num_train", "8", "--trainer.val_check_interval", "null",
              "--model.init_args.val_sampling", "{}", "--trainer.enable_progress_bar", "false")


def _epoch_end_argv(root: Path, tokenizer_dirs: dict[str, str], validate: bool,
                    resume: Path | None = None, num_workers: int = 0) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    overlay = {"trainer": {
        "max_steps": 6, "default_root_dir": str(root), "enable_model_summary": False,
        # Lightning's default placement: at the end of every epoch (no step interval)
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                       "init_args": {"save_top_k": -1, "save_last": True}}]}}
    (root / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    argv = ["fit", "--config", str(DEBUG / "unified_debug.yaml"), "--config",
            str(root / "overlay.yaml"), *EPOCH_ARGS,
            "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
            "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
            # validation once an epoch (where ModelCheckpoint then saves), or none at all
            "--trainer.check_val_every_n_epoch", "1",
            "--trainer.limit_val_batches", "1" if validate else "0",
            "--data.init_args.num_workers", str(num_workers)]
    return [*argv, "--ckpt_path", str(resume)] if resume else argv


def _batches_seen(monkeypatch) -> list[tuple[int, int, list[int]]]:
    from unigen.training.unified_module import UnifiedModule

    seen: list[tuple[int, int, list[int]]] = []
    original = UnifiedModule.training_step

    def recording(self, batch, batch_idx):
        seen.append((self.global_step, self.current_epoch, batch["index"].tolist()))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(UnifiedModule, "training_step", recording)
    return seen


RESUME_STATE = ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch", "loops")


@pytest.mark.parametrize("validate, num_workers", [(True, 0), (False, 0), (False, 2)],
                         ids=["validation_each_epoch", "no_validation", "loader_workers"])
def test_resuming_from_an_epoch_end_checkpoint_is_exact(validate, num_workers, tokenizer_dirs, tmp_path,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = _batches_seen(monkeypatch)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    main(_epoch_end_argv(ref, tokenizer_dirs, validate, num_workers=num_workers))
    straight, seen[:] = list(seen), []
    (end_of_epoch_0,) = (ref / "checkpoints").glob("epoch=0-step=2.ckpt")
    main(_epoch_end_argv(cut, tokenizer_dirs, validate, resume=end_of_epoch_0, num_workers=num_workers))
    # the resumed run trains exactly steps 2..5 of the straight run: same epoch, same batches
    assert seen == straight[2:]
    for step in (4, 6):  # the epoch-end checkpoints written after the resume, and the last one
        a, b = step_checkpoint(ref, step), step_checkpoint(cut, step)
        diff = first_difference({k: a[k] for k in RESUME_STATE}, {k: b[k] for k in RESUME_STATE})
        assert diff is None, f"step {step} differs at {diff}"
    assert training_state_difference(checkpoint(ref, "last.ckpt"),
                                     checkpoint(cut, "last.ckpt")) is None


def test_an_epoch_end_resume_still_checks_the_training_data(tokenizer_dirs, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.chdir(tmp_path)
    ref = tmp_path / "ref"
    main(_epoch_end_argv(ref, tokenizer_dirs, validate=False))
    argv = _epoch_end_argv(tmp_path / "cut", tokenizer_dirs, False,
                           resume=ref / "checkpoints" / "epoch=0-step=2.ckpt")
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--data.init_args.seed", "1", "--model.init_args.seed", "1"])
    assert exc.value.code == 1
    assert "cannot resume: the checkpoint's training data was" in capsys.readouterr().err


# -- EMA: one update per optimizer step, in the checkpoint of that step ----------------------------
def _crash_and_resume(case, ref: Path, cut: Path) -> None:
    main(case.argv(ref))
    with pytest.raises(SimulatedCrash):
        main(case.argv(cut, kill={"mode": "raise"}))
    main(case.argv(cut, resume=True))


def test_tokenizer_ema_checkpoints_every_update_and_resumes_exactly(tmp_path, monkeypatch):
    from dataclasses import replace

    monkeypatch.chdir(tmp_path)
    base = tokenizer_case()
    case = replace(base, args=(*base.args, "--model.init_args.ema_decay", "0.9"))
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    _crash_and_resume(case, ref, cut)
    for step in range(1, case.steps + 1):
        assert int(step_checkpoint(ref, step)["state_dict"]["ema.num_updates"]) == step
    for step in range(case.kill_step, case.steps + 1):
        diff = training_state_difference(step_checkpoint(ref, step), step_checkpoint(cut, step))
        assert diff is None, f"step {step} differs at {diff}"  # state_dict holds the EMA


def test_clip_logit_scale_is_clamped_before_the_step_checkpoint(tmp_path, monkeypatch):
    from unigen.cli import instantiate_recipe
    from unigen.training.clip_module import MAX_LOGIT_SCALE

    monkeypatch.chdir(tmp_path)
    every_step = ('{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
                  '{"every_n_train_steps": 1, "save_top_k": -1, "dirpath": "ckpt"}}')
    cli = instantiate_recipe(DEBUG / "clip_debug.yaml", [
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_checkpointing", "true", f"--trainer.callbacks+={every_step}"])
    scale = cli.model.clip.model.logit_scale
    scale.data.fill_(MAX_LOGIT_SCALE + 1.0)  # one step cannot bring it back under the cap
    cli.trainer.fit(cli.model, cli.datamodule)
    from unigen.training.checkpoint import read_checkpoint

    (path,) = (tmp_path / "ckpt").glob("*step=1.ckpt")
    saved = read_checkpoint(path)["state_dict"]["clip.model.logit_scale"]
    cap = MAX_LOGIT_SCALE + 1e-6  # the clamp's bound rounded to float32
    assert float(saved) <= cap and float(scale) <= cap


# -- a resumed run with another step budget keeps (and names) the restored LR schedule -------------
def _schedule_totals(ckpt: dict[str, Any]) -> list[int]:
    return [fn["total_steps"] for sched in ckpt["lr_schedulers"] for fn in sched["lr_lambdas"]]


def test_extending_a_run_keeps_the_restored_schedule_and_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    case = tokenizer_case()
    root = tmp_path / "run"
    main([*case.argv(root), "--trainer.max_steps", "2"])
    assert _schedule_totals(checkpoint(root, "last.ckpt")) == [2]
    capsys.readouterr()
    main([*case.argv(root, resume=True), "--trainer.max_steps", "4"])
    warnings = [ln for ln in capsys.readouterr().err.splitlines()
                if ln.startswith("unigen: warning: the LR schedule")]
    assert len(warnings) == 1 and "over 2 steps" in warnings[0] and "over 4" in warnings[0]
    last = checkpoint(root, "last.ckpt")
    assert last["global_step"] == 4 and _schedule_totals(last) == [2]
    # after the restored schedule's end the learning rate stays at its final value
    final_lr = [g["lr"] for g in last["optimizer_states"][0]["param_groups"]]
    expected = [lr * 0.1 for lr in last["lr_schedulers"][0]["base_lrs"]]  # min_lr_ratio 0.1
    assert final_lr == pytest.approx(expected)


def test_resuming_with_the_same_budget_does_not_warn(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    case = tokenizer_case()
    root = tmp_path / "run"
    with pytest.raises(SimulatedCrash):
        main(case.argv(root, kill={"mode": "raise"}))
    capsys.readouterr()
    main(case.argv(root, resume=True))
    assert "LR schedule" not in capsys.readouterr().err
