"""What ``--ckpt_path FILE`` (and ``unigen export --ckpt``) make of the checkpoint they are given:
the recipe decides what is built, a checkpoint of another model is refused in one line, and a
damaged, truncated or unsafe file is named in one line, never loaded silently."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from resume_testkit import DEBUG, FAST, tokenizer_case, unified_case

from unigen.cli import _lightning_cli, main
from unigen.training.checkpoint import read_checkpoint


def _error_line(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unigen:")]
    assert len(lines) == 1, lines
    return lines[0]


def _one_step_run(case, root: Path) -> tuple[Path, list[str]]:
    """Fit ``case`` for one step in ``root``: (its last.ckpt, the command line that made it)."""
    argv = [*case.argv(root / "run"), "--trainer.max_steps", "1"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(argv)
    finally:
        os.chdir(cwd)
    return root / "run" / "checkpoints" / "last.ckpt", argv


@pytest.fixture(scope="module")
def unified_run(tokenizer_dirs, tmp_path_factory) -> tuple[Path, list[str]]:
    """A one-step unified run: (its last.ckpt, the command line that made it)."""
    return _one_step_run(unified_case(tokenizer_dirs), tmp_path_factory.mktemp("unified_ckpt"))


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory) -> tuple[Path, list[str]]:
    return _one_step_run(tokenizer_case(), tmp_path_factory.mktemp("tokenizer_ckpt"))


# -- the recipe, not the checkpoint, says what is built ---------------------------------------------
def test_the_command_line_wins_over_the_checkpoints_hyperparameters(unified_run, tmp_path,
                                                                    monkeypatch, capsys):
    ckpt, argv = unified_run
    monkeypatch.chdir(tmp_path)
    assert read_checkpoint(ckpt)["hyper_parameters"]["lr"] == 1e-3
    capsys.readouterr()
    # max_steps 1 is reached already: the checkpoint is restored and nothing more trains
    cli = _lightning_cli([*argv, "--model.init_args.lr", "1e-6", "--model.init_args.cond_dropout",
                          "0.2", "--ckpt_path", str(ckpt)])
    assert cli.model.hparams.lr == 1e-6 and cli.model.hparams.cond_dropout == 0.2
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unigen:")]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("unigen: warning: the recipe's model arguments differ from those "
                                  f"saved in {ckpt}: cond_dropout, lr;")
    assert "optimizer and LR-scheduler state restored from the checkpoint still govern" in warnings[0]
    assert "init_weights" in warnings[0]


def test_the_same_arguments_do_not_warn(unified_run, tmp_path, monkeypatch, capsys):
    ckpt, argv = unified_run
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    _lightning_cli([*argv, "--ckpt_path", str(ckpt)])
    assert "unigen:" not in capsys.readouterr().err


def test_a_checkpoint_of_another_model_class_is_refused_in_one_line(unified_run, tokenizer_run,
                                                                    tokenizer_dirs, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    unified_ckpt, unified_argv = unified_run
    tokenizer_ckpt, tokenizer_argv = tokenizer_run
    line = _error_line([*unified_argv, "--ckpt_path", str(tokenizer_ckpt)], capsys)
    assert line == (f"unigen: error: checkpoint {tokenizer_ckpt} was written by "
                    "unigen.training.tokenizer_module.TokenizerModule, but the recipe's model is "
                    "unigen.training.unified_module.UnifiedModule; use a checkpoint of this "
                    "recipe's model")
    line = _error_line([*tokenizer_argv, "--ckpt_path", str(unified_ckpt)], capsys)
    assert "written by unigen.training.unified_module.UnifiedModule" in line
    assert "model is unigen.training.tokenizer_module.TokenizerModule" in line
    ar = ["fit", "--config", str(DEBUG / "ar_debug.yaml"), *FAST,
          "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
          "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
          "--trainer.default_root_dir", str(tmp_path / "ar"), "--ckpt_path", str(unified_ckpt)]
    line = _error_line(ar, capsys)
    assert "model is unigen.training.ar_module.AutoregressiveModule" in line
    assert not (tmp_path / "ar" / "checkpoints").exists(), "refused before anything ran"


# -- a checkpoint that does not fit the model: one line for every model family ---------------------
def test_an_autoregressive_checkpoint_of_another_size_is_one_line(tokenizer_dirs, tmp_path,
                                                                   monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--config", str(DEBUG / "ar_debug.yaml"), *FAST,
            "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
            "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
            "--trainer.default_root_dir", str(tmp_path / "ar"), "--trainer.max_steps", "1"]
    main(argv)
    line = _error_line([*argv, "--trainer.max_steps", "2", "--model.init_args.dim", "32",
                        "--ckpt_path", "last"], capsys)
    assert line.startswith("unigen: error: checkpoint weights do not fit this model: net.")
    assert "in the checkpoint" in line and "model size?" in line


def test_a_tokenizer_checkpoint_of_another_config_is_one_line(tokenizer_run, tmp_path,
                                                               monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt, _ = tokenizer_run
    shutil.copytree(ckpt.parent, tmp_path / "run" / "checkpoints")
    argv = tokenizer_case().argv(tmp_path / "run", resume=True)
    line = _error_line([*argv, "--trainer.max_steps", "2",
                        "--model.init_args.tokenizer.init_args.latent_channels", "4"], capsys)
    assert line.startswith("unigen: error: checkpoint weights do not fit this model: tokenizer.")
    assert "another fsq config than the recipe's?" in line


# -- damaged files -----------------------------------------------------------------------------------
def _overwrite_middle(src: Path, dst: Path, size: int = 4096) -> None:
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + size] = bytes(range(256)) * (size // 256)
    dst.write_bytes(bytes(data))


def test_a_corrupted_checkpoint_is_named_with_its_bad_member(unified_run, tmp_path, monkeypatch,
                                                             capsys):
    ckpt, argv = unified_run
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.ckpt"
    _overwrite_middle(ckpt, bad)
    with pytest.raises(ValueError, match=r"^checkpoint .*bad\.ckpt is corrupt: member \S+ does "
                                         r"not match its CRC-32"):
        read_checkpoint(bad)
    line = _error_line(["export", "--ckpt", str(bad), "--out", str(tmp_path / "out")], capsys)
    assert line.startswith(f"unigen: error: checkpoint {bad} is corrupt: member ")
    assert not (tmp_path / "out").exists()
    line = _error_line([*argv, "--trainer.max_steps", "2", "--ckpt_path", str(bad)], capsys)
    assert line.startswith(f"unigen: error: checkpoint {bad} is corrupt")


def test_a_corrupted_last_checkpoint_stops_the_resume(unified_run, tokenizer_dirs, tmp_path,
                                                      monkeypatch, capsys):
    ckpt, _ = unified_run
    monkeypatch.chdir(tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    _overwrite_middle(ckpt, last)
    argv = unified_case(tokenizer_dirs).argv(tmp_path / "run", resume=True)
    line = _error_line([*argv, "--trainer.max_steps", "2"], capsys)
    assert line.startswith(f"unigen: error: checkpoint {last} is corrupt: member ")


def test_a_truncated_checkpoint_is_called_truncated(unified_run, tmp_path, capsys):
    ckpt, _ = unified_run
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:20000])
    line = _error_line(["export", "--ckpt", str(cut), "--out", str(tmp_path / "out")], capsys)
    assert line.startswith(f"unigen: error: checkpoint {cut} is truncated or corrupt")
    assert "not a Lightning checkpoint" not in line


def test_the_refusal_of_an_unsafe_checkpoint_gives_no_advice_to_unpickle_it(tmp_path, capsys):
    import torch

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": os.system}, path)
    line = _error_line(["export", "--ckpt", str(path), "--out", str(tmp_path / "out")], capsys)
    assert line.startswith(f"unigen: error: refusing to load {path}: it holds objects other than "
                           "weights and plain data")
    assert "system" in line  # what was refused
    assert "weights_only" not in line and "will likely succeed" not in line
