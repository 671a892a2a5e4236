"""Per-row choices of which masked positions to reveal: top-k by score and schedule-driven counts."""

from __future__ import annotations

import torch
from torch import Tensor

from unigen.diffusion.schedules import NoiseSchedule
from unigen.sampling.rng import GeneratorArg, gumbel_rows


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


def choice_scores(confidence: Tensor, measure: str, tau: float | Tensor, generator: GeneratorArg,
                  purpose: str = "choice noise") -> Tensor:
    """MaskGIT's ranking score: log-confidence (``prob``; ``margin`` and ``entropy`` are already on
    a comparable scale) plus Gumbel noise times ``tau``, a float or a ``[B]`` tensor (per row).  A
    float ``tau`` of 0 draws no noise (and reads no device value: no sync in the decoding loop)."""
    score = confidence.float().clamp_min(1e-30).log() if measure == "prob" else confidence.float()
    if not isinstance(tau, Tensor):
        if tau <= 0:
            return score
    else:
        tau = tau.to(score.device, torch.float32).unsqueeze(-1)
    noise = gumbel_rows(score.shape, generator, device=score.device, purpose=purpose)
    return score + tau * noise


def masked_counts(schedule: NoiseSchedule, time_grid: Tensor, num_editable: Tensor) -> Tensor:
    """``[B, K + 1]`` number of target positions still masked after each of ``K`` steps (column 0 = start).

    MaskGIT (Chang et al. 2022): after the step that ends at time ``t`` a row with ``N`` target positions
    keeps ``floor(N * mask_rate(t))`` masked, but every step reveals at least one token and the last
    step reveals the rest. ``time_grid`` runs from 1 down to 0 (``K + 1`` values: a sampler's
    ``time_grid``).
    """
    n = num_editable.to(torch.float64).unsqueeze(-1)
    # the tolerance keeps exact products exact: 90 * 0.7 is 62.99999999999999 in float64
    raw = torch.floor(n * schedule.mask_rate(time_grid.to(torch.float64)).to(n.device) + 1e-9).long()
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


def schedule_time(schedule: NoiseSchedule, rate: Tensor, iterations: int = 40) -> Tensor:
    """The time ``t`` in [0, 1] at which ``schedule.mask_rate(t) == rate`` (smallest such ``t``).

    Bisection, so any increasing schedule (shifted or not) works without a closed-form inverse.
    """
    rate = rate.to(torch.float64)
    lo, hi = torch.zeros_like(rate), torch.ones_like(rate)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = schedule.mask_rate(mid) < rate
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return hi


def replanned_counts(schedule: NoiseSchedule, num_masked: Tensor, num_editable: Tensor,
                     step_index: int, num_steps: int) -> tuple[Tensor, Tensor]:
    """How many positions step ``step_index`` of a ``num_steps`` MaskGIT schedule reveals, for rows
    that may have got ahead of it (an adaptive sampler revealed extra tokens).

    A row on schedule (as many masked positions as MaskGIT would have, :func:`masked_counts`) gets
    exactly MaskGIT's count and time. A row with fewer moves to the latest time its ``m`` of ``N``
    masked positions allow (where ``N * mask_rate(t) = m + 1``) and takes one step of
    ``1 / num_steps`` from there, so it finishes in fewer steps. Returns the counts (at least one
    while any position is masked) and each row's time after the step (``[B]`` float64).
    """
    device = num_masked.device
    grid = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device=device)  # samplers' time_grid
    planned = masked_counts(schedule, grid, num_editable.to(device))[:, step_index : step_index + 2]
    n = num_editable.to(device, torch.float64).clamp_min(1)
    ahead = num_masked < planned[:, 0]
    t_ahead = (schedule_time(schedule, (num_masked + 1) / n) - 1.0 / num_steps).clamp_min(0.0)
    t_next = torch.where(ahead, t_ahead, grid[step_index + 1])
    target = torch.where(ahead, torch.floor(n * schedule.mask_rate(t_next)).long(), planned[:, 1])
    return reveal_counts(num_masked, target), t_next
