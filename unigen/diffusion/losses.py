"""Losses of masked discrete diffusion.

- ``ce``: mean cross-entropy over masked positions (MaskGIT, Show-o).
- ``elbo``: MDLM's continuous-time ELBO: each masked token's cross-entropy weighted by
  ``d/dt mask_rate(t)`` over the share of the row's targets that are masked (the schedule's
  ``share_weight``; about ``loss_weight(t)``, ``1/t`` for the linear schedule), averaged over all
  target tokens.

How a batch of mixed tasks is reduced (``LOSS_REDUCTIONS``):

- ``tokens``: one mean over the batch (every masked token with ``ce``, every row with ``elbo``).
  A task with long targets then outweighs one with short targets: with ``ce`` a text-to-image
  row masks ~128 of 256 image tokens where a VQA row has 1-2 answer words (in
  ``recipes/unified_shapes.yaml`` the answer words are 0.3 % of the masked tokens).
- ``tasks``: Show-o's per-task losses: each task's mean (over its masked tokens with ``ce``, over its
  rows with ``elbo``), then their weighted mean over the tasks present in the batch (Show-o's
  ``t2i_coeff`` / ``mmu_coeff``), so a task's share of the gradient is its weight, not its length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_KINDS = ("ce", "elbo")
LOSS_REDUCTIONS = ("tokens", "tasks")


def masked_token_loss(logits: Tensor, labels: Tensor, row: Tensor, row_weight: Tensor,
                      num_targets: Tensor, kind: str = "ce", row_task: Tensor | None = None,
                      task_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Loss over the masked positions only.

    logits [M, V] and labels [M] for the M masked positions, ``row`` [M] the batch row of each,
    ``row_weight`` [B] the ELBO weight per row, ``num_targets`` [B] target positions per row.
    ``row_task`` [B] (task index of each row) and ``task_weight`` [K] select the ``tasks``
    reduction (module docstring); without them the reduction is ``tokens``.
    Returns (scalar loss, per-row mean CE [B] for logging).
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss must be one of {LOSS_KINDS}, got {kind!r}")
    if (row_task is None) != (task_weight is None):
        raise ValueError("the tasks reduction needs both row_task and task_weight")
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    b = row_weight.shape[0]
    per_row_sum = torch.zeros(b, device=ce.device).index_add_(0, row, ce)
    per_row_count = torch.zeros(b, device=ce.device).index_add_(0, row, torch.ones_like(ce))
    per_row_mean = per_row_sum / per_row_count.clamp_min(1)
    if not ce.numel():
        return logits.sum() * 0, per_row_mean
    if kind == "ce":
        values, group = ce, (None if row_task is None else row_task[row])
    else:
        values, group = per_row_sum * row_weight / num_targets.clamp_min(1), row_task
    if group is None:
        return values.mean(), per_row_mean
    k = task_weight.shape[0]
    task_sum = torch.zeros(k, device=ce.device).index_add_(0, group, values)
    task_count = torch.zeros(k, device=ce.device).index_add_(0, group, torch.ones_like(values))
    # tasks absent from this batch drop out of the weights (no host read of which ones)
    weight = task_weight.to(ce.device) * (task_count > 0)
    return (weight * task_sum / task_count.clamp_min(1)).sum() / weight.sum(), per_row_mean
