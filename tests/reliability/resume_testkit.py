"""Shared pieces of the exact-resume tests: the runs, their overlays, and exact comparisons.

``conftest.py`` puts this folder on ``sys.path``; subprocesses get it through ``PYTHONPATH`` so
recipes can name ``kill_switch.StopAtStep``."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEBUG = ROOT / "recipes" / "debug"


@dataclass(frozen=True)
class ResumeCase:
    """A debug recipe shortened to ``steps`` steps, interrupted mid-step ``kill_step``."""

    recipe: str
    steps: int
    kill_step: int
    exported_weights: str  # the weights file inside the run's --export_dir
    args: tuple[str, ...] = ()

    def overlay(self, root: Path, kill: dict[str, Any] | None = None) -> dict[str, Any]:
        callbacks: list[dict[str, Any]] = [{
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            # every step, all kept: the interrupted run's checkpoints are compared step by step
            "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "save_last": True}}]
        if kill is not None:
            callbacks.append({"class_path": "kill_switch.StopAtStep",
                              "init_args": {"step": self.kill_step, **kill}})
        return {"trainer": {
            "max_steps": self.steps, "log_every_n_steps": 1, "default_root_dir": str(root),
            "enable_progress_bar": False, "enable_model_summary": False, "callbacks": callbacks,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(root), "name": "logs",
                                     "flush_logs_every_n_steps": 1}}}}

    def argv(self, root: Path, kill: dict[str, Any] | None = None, resume: bool = False
             ) -> list[str]:
        root.mkdir(parents=True, exist_ok=True)
        overlay = root / ("overlay_kill.yaml" if kill else "overlay.yaml")
        overlay.write_text(yaml.safe_dump(self.overlay(root, kill)))
        argv = ["fit", "--config", str(DEBUG / self.recipe), "--config", str(overlay), *self.args,
                "--export_dir", str(root / "export")]
        return [*argv, "--ckpt_path", "last"] if resume else argv


# fast: 16x16 images, 4 images a batch, no validation; thorough (SIGKILL runs): the recipe's 32x32
# images and batches, with a validation (and its sample grids) before and after the kill
FAST = ("--data.init_args.image_size", "16", "--data.init_args.batch_size", "4",
        "--trainer.limit_val_batches", "0")
THOROUGH = ("--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1")


def unified_case(tokenizer_dirs: dict[str, str], thorough: bool = False,
                 optimizer: str = "adamw") -> ResumeCase:
    # two batches an epoch: the run crosses an epoch boundary and the kill lands mid-epoch 1
    num_train = "16" if thorough else "8"
    return ResumeCase("unified_debug.yaml", steps=4, kill_step=3,
                      exported_weights="transformer/model.safetensors", args=(
                          *(THOROUGH if thorough else FAST),
                          "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
                          "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
                          "--data.init_args.num_train", num_train,
                          "--model.init_args.optimizer", optimizer,
                          "--model.init_args.val_sampling", "{num_samples: 2, num_steps: 2}"))


def tokenizer_case(thorough: bool = False) -> ResumeCase:
    # the kill lands mid-epoch 0 (after 3 of its 4 batches)
    num_train = "64" if thorough else "16"
    return ResumeCase("tokenizer_fsq_debug.yaml", steps=4, kill_step=3,
                      exported_weights="model.safetensors", args=(
                          *(THOROUGH if thorough else FAST),
                          "--data.init_args.num_train", num_train))


# -- reading runs back ------------------------------------------------------------------------------
def losses_by_version(root: Path) -> dict[int, dict[int, str]]:
    """logger version -> {step: train/loss as written}; the CSV text round-trips floats exactly."""
    out: dict[int, dict[int, str]] = {}
    for path in root.glob("logs/version_*/metrics.csv"):
        with open(path, newline="") as fh:
            out[int(path.parent.name.removeprefix("version_"))] = {
                int(row["step"]): row["train/loss"] for row in csv.DictReader(fh)
                if row.get("train/loss")}
    return out


def logged_losses(root: Path) -> dict[int, str]:
    """step -> train/loss over all versions (a step logged twice must agree)."""
    out: dict[int, str] = {}
    for version, losses in sorted(losses_by_version(root).items()):
        for step, loss in losses.items():
            assert out.setdefault(step, loss) == loss, (version, step)
    return out


def checkpoint(root: Path, name: str) -> dict[str, Any]:
    from unigen.training.checkpoint import read_checkpoint

    return read_checkpoint(root / "checkpoints" / name)


def step_checkpoint(root: Path, step: int) -> dict[str, Any]:
    (path,) = (root / "checkpoints").glob(f"epoch=*-step={step}.ckpt")
    return checkpoint(root, path.name)


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two checkpoint trees differ (bitwise for tensors), or None if identical."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        same = torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return None if same else where or "<root>"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{where}: keys {sorted(set(a) ^ set(b), key=str)[:4]}"
        for k in a:
            diff = first_difference(a[k], b[k], f"{where}/{k}")
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = first_difference(x, y, f"{where}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{where}: {a!r} != {b!r}"


TRAINING_STATE = ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch")


def training_state_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Weights, optimizer moments, LR schedule and counters: what decides the next step."""
    return first_difference({k: a[k] for k in TRAINING_STATE}, {k: b[k] for k in TRAINING_STATE})


# -- subprocesses ----------------------------------------------------------------------------------
def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    env.pop("UNIGEN_DEBUG", None)
    env["OMP_NUM_THREADS"] = "1"  # as in this process (conftest): tiny models, busy CPUs
    return env


def start_unigen(argv: Sequence[str], cwd: Path, log: Path,
                 hang: tuple[str, int, Path] | None = None) -> subprocess.Popen:
    """``python -m unigen ARGV`` in the background; ``hang=(MODULE:CLASS.METHOD, N, MARKER)``
    runs it through kill_switch.py with that method hanging on its N-th call."""
    if hang is None:
        command = [sys.executable, "-m", "unigen", *argv]
    else:
        target, call, marker = hang
        command = [sys.executable, str(HERE / "kill_switch.py"), target, str(call), str(marker),
                   "--", *argv]
    with open(log, "w") as fh:
        return subprocess.Popen(command, cwd=cwd, env=subprocess_env(), stdout=fh,
                                stderr=subprocess.STDOUT)



def finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    if proc.wait(timeout=timeout) != 0:
        raise AssertionError(f"unigen failed ({proc.returncode}):\n{log.read_text()[-3000:]}")


def kill_when(proc: subprocess.Popen, marker: Path, log: Path, timeout: float = 240) -> None:
    """SIGKILL ``proc`` once it writes ``marker`` (it then hangs mid-step)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill point:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run never reached the kill point")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
