"""Per-row choices of which masked positions to reveal: top-k by score and schedule-driven counts."""

from __future__ import annotations

import torch
from torch import Tensor

from unigen.diffusion.schedules import NoiseSchedule


def select_top_k(score: Tensor, candidates: Tensor, k: Tensor) -> Tensor:
    """Boolean ``[B, S]``: the ``k[b]`` highest-``score`` positions among ``candidates`` of each row.

    Ties go to the lower position (stable sort), so the choice is deterministic. ``k`` larger than a
    row's candidate count selects all its candidates.
    """
    finite = score.float().clamp_min(torch.finfo(torch.float32).min)  # -inf candidates must still beat non-candidates
    keyed = torch.where(candidates, finite, float("-inf"))
    order = torch.argsort(keyed, dim=-1, descending=True, stable=True)
    positions = torch.arange(score.shape[-1], device=score.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(-1, order, positions)
    return candidates & (ranks < k.to(score.device).unsqueeze(-1))


def masked_counts(schedule: NoiseSchedule, timesteps: Tensor, num_editable: Tensor) -> Tensor:
    """``[B, K + 1]`` number of target positions still masked after each of ``K`` steps (column 0 = start).

    MaskGIT (Chang et al. 2022): after the step that ends at time ``t`` a row with ``N`` target positions
    keeps ``floor(N * mask_rate(t))`` masked, but every step reveals at least one token and the last
    step reveals the rest. ``timesteps`` runs from 1 down to 0 (``K + 1`` values).
    """
    n = num_editable.to(torch.float64).unsqueeze(-1)
    raw = torch.floor(n * schedule.mask_rate(timesteps.to(torch.float64)).to(n.device)).long()
    raw[:, 0] = num_editable
    raw[:, -1] = 0
    # c_j = min(raw_j, c_{j-1} - 1) is a running minimum of raw_j + j, shifted back by j.
    steps = torch.arange(raw.shape[1], device=raw.device)
    counts = torch.cummin(raw + steps, dim=1).values - steps
    return counts.clamp_min(0)


def reveal_counts(num_masked: Tensor, num_target_after: Tensor) -> Tensor:
    """How many positions to reveal: enough to reach the target, at least one, at most all masked."""
    k = num_masked - num_target_after
    return torch.minimum(torch.maximum(k, (num_masked > 0).long()), num_masked)
