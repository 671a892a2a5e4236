"""Forward (noising) process of masked discrete diffusion: pick which target tokens to mask."""

from __future__ import annotations

import torch
from torch import Tensor

from unigen.diffusion.schedules import NoiseSchedule
from unigen.transfer import to_device


def sample_times(batch_size: int, generator: torch.Generator | None, stratified: bool = True,
                 device=None, eps: float = 1e-3) -> Tensor:
    """Diffusion times in (eps, 1].  ``stratified`` draws one shared offset and spreads the batch
    evenly (MDLM's low-discrepancy sampler), lowering the variance of the loss."""
    if stratified:
        offset = torch.rand(1, generator=generator)
        t = (offset + torch.arange(batch_size) / batch_size) % 1.0
    else:
        t = torch.rand(batch_size, generator=generator)
    return to_device(eps + (1 - eps) * t, device)


def mask_targets(target: Tensor, rate: Tensor, generator: torch.Generator | None) -> Tensor:
    """Mask exactly ``round(rate * n)`` (at least 1) of each row's ``n`` target positions, chosen
    uniformly at random (MaskGIT).  Returns the [B, S] bool mask of masked positions."""
    n = target.sum(dim=1)
    k = (to_device(rate, target.device) * n).round().long().clamp(min=1)
    k = torch.minimum(k, n)
    noise = to_device(torch.rand(target.shape, generator=generator), target.device)
    noise = noise.masked_fill(~target, 2.0)  # non-targets rank last
    order = noise.argsort(dim=1)
    # the inverse permutation (each position's rank) by a scatter, not a second argsort
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < k[:, None]) & target


def drop_condition(tokens: Tensor, cond: Tensor, prob: float, mask_id: int,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Classifier-free guidance training: with probability ``prob`` a row's whole condition is
    replaced by ``<mask>`` (the unconditional input used at sampling time).  Returns the new tokens
    and which rows were dropped (on the host)."""
    dropped = torch.rand(tokens.shape[0], generator=generator) < prob
    # decided where ``cond`` lives (the host, for TaskBatch masks), then copied once
    drop = cond & to_device(dropped, cond.device)[:, None]
    return tokens.masked_fill(to_device(drop, tokens.device), mask_id), dropped


class Noiser:
    """Applies the schedule: times -> rates -> masked inputs (and the complementary pair)."""

    def __init__(self, schedule: NoiseSchedule, stratified: bool = True) -> None:
        self.schedule = schedule
        self.stratified = stratified

    def __call__(self, target: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        t = sample_times(target.shape[0], generator, self.stratified, target.device)
        return mask_targets(target, self.schedule.mask_rate(t), generator), t
