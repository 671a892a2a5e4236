"""Optimizer and learning-rate schedule shared by the training modules."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision, MixedPrecision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import nn

from unigen.registry import Registry
from unigen.training.muon import MuonAdamW

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


def param_groups(module: nn.Module, weight_decay: float, exclude: Iterable[nn.Parameter] = ()
                 ) -> list[dict]:
    """AdamW groups: no decay on norms, biases and embeddings (GPT-2 / LLaMA practice).
    ``exclude``: parameters another optimizer steps (left out of both groups)."""
    skip = {id(p) for p in exclude}
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in skip:
            continue
        (no_decay if p.ndim < 2 or "emb" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


@OPTIMIZERS.register("adamw")
def build_adamw(module: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                hidden: nn.Module | None = None) -> torch.optim.AdamW:
    """AdamW, fused on CUDA (one kernel for all parameters).  ``hidden`` is not used: AdamW treats
    the hidden layers like every other parameter."""
    on_cuda = any(p.is_cuda for p in module.parameters())
    return torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, betas=betas,
                             fused=True if on_cuda else None)


@OPTIMIZERS.register("muon")
def build_muon(module: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
               hidden: nn.Module | None = None) -> MuonAdamW:
    """Muon on the 2-D weights inside ``hidden`` (the transformer blocks), AdamW with ``betas`` on
    the rest (:mod:`unigen.training.muon`); the same ``lr`` and decoupled ``weight_decay`` for both."""
    if hidden is None:
        raise ValueError("optimizer muon needs the module that holds the hidden layers (hidden=)")
    matrices = [p for p in hidden.parameters() if p.requires_grad and p.ndim == 2]
    if not matrices:
        raise ValueError("optimizer muon found no trainable 2-D weight in the hidden layers")
    on_cuda = any(p.is_cuda for p in module.parameters())
    groups = [{"params": matrices, "weight_decay": weight_decay, "use_muon": True},
              *param_groups(module, weight_decay, exclude=matrices)]
    return MuonAdamW(groups, lr=lr, betas=betas, fused=True if on_cuda else None)


def build_optimizer(name: str, module: nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float], hidden: nn.Module | None = None,
                    strategy: object = None) -> torch.optim.Optimizer:
    """The optimizer registered as ``name`` (``adamw``, ``muon``) over ``module``'s parameters.
    Muon is refused under a sharding strategy: it orthogonalizes whole weight matrices, and FSDP
    gives each rank a shard of them."""
    if name != "adamw" and _shards_parameters(strategy):
        raise ValueError(f"optimizer {name} orthogonalizes whole weight matrices, which "
                         f"{type(strategy).__name__} shards across ranks: use optimizer adamw "
                         f"there, or DDP")
    return OPTIMIZERS.get(name)(module, lr, weight_decay, betas, hidden=hidden)


def _shards_parameters(strategy: object) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


class FusedOptimizerClipping:
    """LightningModule mixin: gradient clipping that works with the fused AdamW of
    :func:`build_adamw` under ``bf16-mixed``.

    Lightning's mixed-precision plugin refuses to clip for any fused optimizer, because under fp16 a
    fused optimizer unscales the gradients inside ``step()``, after clipping would have run.  Under
    bf16 there is no grad scaler: the gradients are already their true values, so clipping them
    here is exact.  With a scaler (fp16) Lightning's own path, and its error, are kept.

    Under FSDP, Lightning's precision plugin refuses norm clipping: each rank holds a shard of the
    gradients, so the norm must be reduced across ranks, which the FSDP root's own
    ``clip_grad_norm_`` does (Lightning's docs give this override for FSDP)."""

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        plugin = self.trainer.precision_plugin
        if (gradient_clip_val and isinstance(plugin, FSDPPrecision)
                and gradient_clip_algorithm != GradClipAlgorithmType.VALUE):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        fused_without_scaler = (optimizer.defaults.get("fused")
                                and isinstance(plugin, MixedPrecision) and plugin.scaler is None)
        if not (gradient_clip_val and fused_without_scaler):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == GradClipAlgorithmType.VALUE:
            nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            nn.utils.clip_grad_norm_(params, gradient_clip_val)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1
                         ) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosine:
    """:func:`warmup_cosine_factor` with its settings as attributes.  ``LambdaLR`` checkpoints the
    attributes of a callable object (not the arguments of a function or ``partial``), so the
    schedule's length is saved and restored with the scheduler: a run resumed with another
    ``max_steps`` keeps the schedule it was trained on (``unigen fit`` warns,
    :class:`~unigen.training.reliability.ScheduleLengthCheck`)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> None:
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine_factor(step, self.warmup_steps, self.total_steps, self.min_ratio)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_cosine_factor` as a per-step scheduler whose settings checkpoint with it."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))
