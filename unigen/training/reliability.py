"""Fault tolerance for training: nothing is lost on a crash, a resumed run is the killed run.

* :class:`AtomicCheckpointIO` writes every Lightning checkpoint to a temporary sibling, fsyncs it
  and renames it over the target (:func:`unigen.io.atomic_path`), so a kill mid-write leaves the
  previous checkpoint intact; it reads checkpoints with ``torch.load(weights_only=True)`` only
  (:func:`unigen.training.checkpoint.read_checkpoint`): a stranger's checkpoint cannot run code.
* :class:`NonFiniteLossGuard` stops training at the first NaN/inf loss, before the bad gradients
  touch the weights, and names the step and the last good checkpoint (nothing newer is written).
  On a GPU with a fused optimizer it does so without a host read per step (the bad update is
  skipped on the device, the error raised at the next check).
* :class:`ReseedEveryStep` reseeds the global RNGs (torch, NumPy, ``random``) from
  ``(seed, global_step, rank, micro-batch)`` before every training batch: randomness that does not
  take an explicit generator (dropout, k-means init, dead-code restarts) becomes a function of the
  step, so a run resumed from a checkpoint draws exactly what the uninterrupted run drew (the
  global-RNG counterpart of ``UnifiedModule._generator``).
* :class:`ScheduleLengthCheck` warns in one line when a resumed run restores an LR schedule of
  another length than this run's step budget would give it (the restored one is kept).
* :func:`harden_trainer` installs all of the above (and
  :class:`~unigen.training.host_threads.HostThreads`: one host thread beside an accelerator) on a
  built Trainer and makes ``ckpt_path="last"``
  resolve across restarts: every ``ModelCheckpoint`` without a ``dirpath`` writes to
  ``<default_root_dir>/checkpoints`` (Lightning's default puts checkpoints under the logger's
  ``version_N`` folder, and a restarted run gets a new ``N``, where ``"last"`` then finds nothing).

``unigen fit`` applies :func:`harden_trainer` to every recipe (:mod:`unigen.cli`).
"""

from __future__ import annotations

import glob
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

from unigen import io
from unigen.training.checkpoint import read_checkpoint
from unigen.training.host_threads import HostThreads

CHECKPOINT_DIR = "checkpoints"


def _is_remote(path: _PATH) -> bool:
    return "://" in str(path)


def _remove_stale_temps(target: Path) -> None:
    """Temp files of earlier writes of ``target`` killed before their rename (``kill -9`` skips
    every cleanup); only ``io.atomic_path`` names files ``.<name>.<random>.tmp``."""
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            stale.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: write temp + fsync + rename; read weights and plain data only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or _is_remote(path):
            # object stores have their own atomic put; keep Lightning's fsspec path for them
            return super().save_checkpoint(checkpoint, path, storage_options)
        _remove_stale_temps(Path(path))
        with io.atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: _PATH, map_location: Callable | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(f"refusing to load {path} with weights_only=False: unigen reads "
                             "checkpoints as weights and plain data only")
        if _is_remote(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        # tensors land on the CPU; the strategy moves them to the module's device
        return read_checkpoint(path)


def last_good_checkpoint(trainer: L.Trainer | None) -> str | None:
    """The newest checkpoint file the trainer's ModelCheckpoints wrote or resumed from."""
    if trainer is None:
        return None
    found: list[str] = []
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            found += [p for p in (cb.last_model_path, getattr(cb, "_last_checkpoint_saved", ""),
                                  cb.best_model_path) if p and os.path.isfile(p)]
    resumed = getattr(trainer, "ckpt_path", None)
    if resumed and os.path.isfile(resumed):
        found.append(str(resumed))
    return max(found, key=os.path.getmtime) if found else None


def non_finite_loss_error(loss: Tensor, trainer: L.Trainer | None, step: int | None = None
                          ) -> FloatingPointError:
    """The error for a NaN/inf loss: which step, and where the last good weights are.  ``step``:
    the bad step when it was found later (deferred check); its update was skipped."""
    value = loss.detach().float().flatten()
    bad = value[~torch.isfinite(value)]
    shown = bad[0].item() if bad.numel() else value.sum().item()
    ckpt = last_good_checkpoint(trainer)
    kept = (f"the last good checkpoint is {ckpt}" if ckpt
            else "no checkpoint had been written yet")
    if step is None:
        at = f" at step {trainer.global_step}" if trainer is not None else ""
        return FloatingPointError(f"non-finite training loss ({shown}){at}: training stopped before "
                                  f"the update and nothing new was saved; {kept}")
    now = f", found at step {trainer.global_step}" if trainer is not None else ""
    return FloatingPointError(f"non-finite training loss ({shown}) at step {step}: its update was "
                              f"skipped and training stopped before saving anything newer{now}; "
                              f"{kept}")


def _skips_on_device(trainer: L.Trainer) -> bool:
    """Whether a bad step's update can be dropped on the device: one process, one fused optimizer
    (``found_inf``, the on-device skip of ``torch.amp.GradScaler``) and no grad scaler of its own."""
    opts = trainer.optimizers
    return (trainer.world_size == 1 and len(opts) == 1 and bool(opts[0].defaults.get("fused"))
            and getattr(trainer.precision_plugin, "scaler", None) is None)


class NonFiniteLossGuard(Callback):
    """Stop at the first non-finite loss; its gradients never reach the weights.

    *Immediate* check (losses on the CPU, or optimizers that cannot skip a step on the device): the
    loss is read before ``backward`` and the error raised there.

    *Deferred* check (a loss on an accelerator, one process, one fused optimizer, no grad scaler):
    reading the loss every step would make the host wait for each forward pass before queuing the
    backward and preparing the next batch (issue #8).  The flag stays on the device instead and is
    handed to the fused optimizer as ``found_inf``, which drops that step's update in the kernel
    (the skip ``GradScaler`` uses); the host reads the first bad step every ``check_every_n_steps``
    (default: the trainer's ``log_every_n_steps``, where logging reads the device anyway), before
    every checkpoint is written, at validation and at the end, and raises naming it.  A finite step
    after a bad one trains normally, so the weights are never touched by a NaN.

    Raising makes Lightning stop without running ``ModelCheckpoint`` again, so the newest checkpoint
    on disk is the last good one; the error names it and the step.  Works with automatic and manual
    optimization (``manual_backward`` calls the same hook).

    Args:
        defer: ``None`` picks as above; ``True`` forces the deferred check (one clear error where
            the optimizer cannot skip on the device), ``False`` the immediate one.
        check_every_n_steps: how often the deferred check reads the device.
    """

    def __init__(self, defer: bool | None = None, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.defer = defer
        self.check_every_n_steps = check_every_n_steps
        self._pending: Tensor | None = None  # bad loss in the current accumulation window
        self._first: Tensor | None = None  # [step of the first bad loss or -1, its value]

    def _deferred(self, trainer: L.Trainer, loss: Tensor) -> bool:
        if self.defer is False:
            return False
        skips = _skips_on_device(trainer)
        if self.defer and not skips:
            raise ValueError("NonFiniteLossGuard(defer=True) needs one process and one fused "
                             "optimizer without a grad scaler (it skips bad updates via found_inf)")
        return skips and (bool(self.defer) or loss.device.type != "cpu")

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: Tensor) -> None:
        loss = loss.detach()
        if not self._deferred(trainer, loss):
            if not bool(torch.isfinite(loss).all()):
                raise non_finite_loss_error(loss, trainer)
            return
        bad = ~torch.isfinite(loss).all()
        self._pending = bad if self._pending is None else self._pending | bad
        if self._first is None:
            self._first = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=loss.device)
        new = bad & (self._first[0] < 0)
        found = torch.stack((torch.full_like(self._first[0], trainer.global_step),
                             loss.double().flatten()[0]))
        self._first = torch.where(new, found, self._first)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._pending is not None:
            optimizer.found_inf = self._pending.float()  # fused kernels skip the update when 1
            self._pending = None

    def check(self, trainer: L.Trainer) -> None:
        """Raise if a deferred step had a non-finite loss (one host read)."""
        if self._first is None:
            return
        step, value = self._first.tolist()
        if step >= 0:
            raise non_finite_loss_error(torch.tensor(value), trainer, step=int(step))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        for opt in trainer.optimizers:
            if hasattr(opt, "found_inf"):  # stepped: do not leave a skip flag on the optimizer
                del opt.found_inf
        every = self.check_every_n_steps or max(1, trainer.log_every_n_steps)
        if self._first is not None and (trainer.global_step % every == 0
                                        or _checkpoints_at(trainer, trainer.global_step)):
            self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.check(trainer)  # before the file is written

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)


def _checkpoints_at(trainer: L.Trainer, step: int) -> bool:
    """Whether a step-interval ModelCheckpoint (weights-only ones included) saves at ``step``."""
    return any(isinstance(cb, ModelCheckpoint) and cb._every_n_train_steps
               and step % cb._every_n_train_steps == 0 for cb in trainer.checkpoint_callbacks)


def step_seed(seed: int, *key: int) -> int:
    """A 63-bit seed from ``seed`` and integer keys (SeedSequence decorrelates neighbours)."""
    entropy = [seed & 0xFFFF_FFFF_FFFF_FFFF, *key]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
    return int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF


def micro_batch_index(trainer: L.Trainer | None, batch_idx: int) -> int:
    """Position of a batch in its gradient-accumulation window (0 without accumulation): a function
    of the batch's place in the epoch, where Lightning aligns its windows, not a count of calls,
    which a resumed process would restart at 0."""
    every = max(1, int(trainer.accumulate_grad_batches)) if trainer is not None else 1
    return batch_idx % every


def seed_global_rngs(seed: int) -> None:
    """Seed torch (every device), NumPy's legacy global RNG and ``random`` from one seed."""
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFF_FFFF)
    random.seed(seed)


class ReseedEveryStep(Callback):
    """Reseed the global RNGs before every training batch from ``(seed, global_step, rank,
    micro-batch index within the step)``.

    Lightning checkpoints do not hold RNG states, and even restoring them would not be exact: a
    resumed run creates its dataloader iterator (which draws from the torch RNG) at a different
    point than the uninterrupted run.  Seeding from the step instead makes every global-RNG draw of
    a training step independent of the process history.  The micro-batch index keeps the batches
    of one gradient-accumulation window from sharing dropout masks."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        seed_global_rngs(step_seed(self.seed, int(trainer.global_step), int(trainer.global_rank),
                                   micro_batch_index(trainer, batch_idx)))


class ScheduleLengthCheck(Callback):
    """Warn in one line when a resumed run's LR schedule was restored with another length than
    this run would give it (``--trainer.max_steps 12 --ckpt_path last`` after a 6-step run).

    The schedule's length is checkpointed (:class:`~unigen.training.optim.WarmupCosine`), so the
    resumed run keeps the schedule it was trained on, as it keeps the optimizer's moments: after the
    old length it trains at the schedule's final learning rate.  Reshaping it instead would jump
    the learning rate back up mid-run; a new schedule is a new run from the weights."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None or not trainer.is_global_zero:
            return
        wanted = trainer.estimated_stepping_batches
        if not np.isfinite(wanted):
            return
        for config in trainer.lr_scheduler_configs:
            for fn in getattr(config.scheduler, "lr_lambdas", ()):
                restored = getattr(fn, "total_steps", None)
                if isinstance(restored, int) and restored != int(wanted):
                    print(f"unigen: warning: the LR schedule restored from {trainer.ckpt_path} "
                          f"runs over {restored} steps, this run's would run over {int(wanted)}: the "
                          f"restored one is kept (after step {restored} the learning rate stays at "
                          "its final value); for a new schedule start a new run from the weights "
                          "(docs/reliability.md, \"Resuming a run\")", file=sys.stderr)
                    return


def _stable_checkpoint_dirs(trainer: L.Trainer) -> None:
    checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    for cb in checkpoints:
        if cb.dirpath is None:
            cb.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, CHECKPOINT_DIR))
    # `ckpt_path="last"` needs a last.ckpt; an explicit `save_last: false` is respected
    if checkpoints and all(cb.save_last is None for cb in checkpoints):
        checkpoints[0].save_last = True


def harden_trainer(trainer: L.Trainer, seed: int | None = None) -> L.Trainer:
    """Install atomic checkpoint IO, the NaN guard, per-step reseeding (when ``seed`` is an int),
    one host thread beside an accelerator (``HostThreads``), the resumed-schedule check
    (``ScheduleLengthCheck``) and stable checkpoint directories on
    ``trainer``; returns it.  Idempotent; a callback of the same type the trainer has already
    (e.g. a recipe's ``HostThreads`` with other settings) is kept."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    _stable_checkpoint_dirs(trainer)
    wanted: list[Callback] = [NonFiniteLossGuard(), HostThreads(), ScheduleLengthCheck()]
    if isinstance(seed, int) and not isinstance(seed, bool):
        wanted.append(ReseedEveryStep(seed))
    present = {type(cb) for cb in trainer.callbacks}
    # ahead of the checkpoint callbacks: Lightning runs those last, after every other hook
    at = next((i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, ModelCheckpoint)),
              len(trainer.callbacks))
    trainer.callbacks[at:at] = [cb for cb in wanted if type(cb) not in present]
    return trainer


def check_resume_target(trainer: L.Trainer, ckpt_path: str | os.PathLike | None) -> None:
    """Fail early, in one line, when ``ckpt_path`` can never resume this run."""
    if ckpt_path is None:
        return
    if str(ckpt_path) == "last":
        if not any(isinstance(cb, ModelCheckpoint) and cb.save_last
                   for cb in trainer.checkpoint_callbacks):
            raise ValueError("ckpt_path 'last' needs a ModelCheckpoint with save_last (this recipe "
                             "disables it or disables checkpointing)")
        return
    if str(ckpt_path) in ("best", "hpc") or str(ckpt_path).startswith("registry") \
            or _is_remote(ckpt_path):
        return
    if not Path(ckpt_path).is_file():
        if Path(ckpt_path).is_dir():  # a pipeline or run folder: say so, not "not found"
            raise ValueError(f"{ckpt_path} is a directory; a checkpoint is a .ckpt file (e.g. "
                             f"{Path(ckpt_path) / 'checkpoints' / 'last.ckpt'})")
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")

