"""Exponential moving average (EMA) of model weights (Polyak averaging).

Evaluating and exporting an EMA of the weights instead of the last iterate gives smoother, usually
better models; it is standard for generative models (e.g. DDPM, Ho et al. 2020; MaskGIT; LlamaGen).
:class:`ModelEMA` is a plain ``nn.Module`` holding the averages as buffers, so a LightningModule that
owns one checkpoints it for free; :class:`EMACallback` adds EMA to any LightningModule from a recipe.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import lightning as L
import torch
from torch import Tensor, nn


def _buffer_name(key: str) -> str:
    # buffer names may not contain "."; "-" never occurs in a state-dict key, so this is injective
    return key.replace(".", "-")


class ModelEMA(nn.Module):
    """EMA of the model's floating-point parameters; its buffers are copied as they are.

    Buffers are state a module keeps by itself: a VQ codebook that is already an EMA of the
    encoder's outputs (kept unit-norm for cosine lookup, its dead codes re-seeded), BatchNorm's
    running statistics, counters.  Averaging them again would give codes of less than unit norm
    and blends of re-seeded and retired codes, which no longer match what the encoder produced.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``) so early averages are not dominated by the
    random initialisation.  ``update`` after each optimizer step; ``swapped_into`` to evaluate or
    export with the averaged weights.
    """

    num_updates: Tensor

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.keys = list(model.state_dict().keys())
        params = {name for name, p in model.named_parameters() if p.is_floating_point()}
        self.averaged = frozenset(k for k in self.keys if k in params)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        for key, value in model.state_dict().items():
            self.register_buffer(_buffer_name(key), value.detach().clone())

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def shadow(self) -> dict[str, Tensor]:
        """The averaged state dict (keys of the model's state dict)."""
        return {key: getattr(self, _buffer_name(key)) for key in self.keys}

    def _check_keys(self, state: dict[str, Tensor]) -> None:
        if list(state.keys()) != self.keys:
            missing = sorted(set(self.keys) - set(state))[:5]
            extra = sorted(set(state) - set(self.keys))[:5]
            raise ValueError(f"model no longer matches its EMA: missing {missing}, new {extra}")

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = model.state_dict()
        self._check_keys(state)
        decay = self.current_decay()
        for key, avg in self.shadow().items():
            live = state[key].detach()
            if key in self.averaged:
                avg.lerp_(live.to(avg.dtype), 1.0 - decay)
            else:
                avg.copy_(live)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's weights with the averages."""
        self._check_keys(model.state_dict())
        model.load_state_dict(self.shadow())

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averages into ``model``; the live weights come back on exit."""
        with torch.no_grad():
            live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                model.load_state_dict(live)


class EMACallback(L.Callback):
    """Keeps an EMA of ``pl_module`` (or of its submodule ``attribute``) and evaluates with it.

    Validation and test run on the averaged weights; ``apply_on_fit_end`` leaves them in the model
    after training (so a checkpoint/export written afterwards holds the EMA).  The averages are saved
    in and restored from Lightning checkpoints.  The average moves once per batch that stepped the
    optimizer: under gradient accumulation the micro-batches before the step leave the weights as
    they were, and averaging them again would only shorten the EMA's horizon.
    """

    def __init__(self, decay: float = 0.999, attribute: str | None = None, warmup: bool = True,
                 apply_on_fit_end: bool = True) -> None:
        self.decay = decay
        self.attribute = attribute
        self.warmup = warmup
        self.apply_on_fit_end = apply_on_fit_end
        self.ema: ModelEMA | None = None
        self._pending_state: dict[str, Any] | None = None
        self._swap: contextlib.ExitStack | None = None
        self._step_at_batch_start = -1

    def _target(self, pl_module: L.LightningModule) -> nn.Module:
        if self.attribute is None:
            return pl_module
        target = pl_module
        for part in self.attribute.split("."):
            if not hasattr(target, part):
                raise AttributeError(f"EMACallback: {type(pl_module).__name__} has no "
                                     f"attribute {self.attribute!r}")
            target = getattr(target, part)
        return target

    def _ensure(self, pl_module: L.LightningModule) -> ModelEMA:
        if self.ema is None:
            self.ema = ModelEMA(self._target(pl_module), self.decay, self.warmup)
            if self._pending_state is not None:
                self.ema.load_state_dict(self._pending_state)
                self._pending_state = None
        self.ema.to(pl_module.device)
        return self.ema

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ensure(pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # global_step counts optimizer steps (manual optimization included); Lightning runs this
        # hook before ModelCheckpoint's, so a step-N checkpoint holds an N-step average
        if trainer.global_step != self._step_at_batch_start:
            self._ensure(pl_module).update(self._target(pl_module))

    def _swap_in(self, pl_module: L.LightningModule) -> None:
        if self.ema is None:
            return
        self._swap = contextlib.ExitStack()
        self._swap.enter_context(self.ema.swapped_into(self._target(pl_module)))

    def _swap_out(self) -> None:
        if self._swap is not None:
            self._swap.close()
            self._swap = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(pl_module)

    # Lightning calls callbacks' epoch-end hooks before the module's, where sample grids and
    # generation metrics are made: the average stays in until the loop ends (and, checkpoint
    # callbacks running last, before ModelCheckpoint saves on validation end)
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.apply_on_fit_end and self.ema is not None:
            self.ema.copy_to(self._target(pl_module))

    def state_dict(self) -> dict[str, Any]:
        return {} if self.ema is None else self.ema.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._pending_state = state_dict
            self.ema = None
