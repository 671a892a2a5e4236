"""Losses of masked discrete diffusion.

- ``ce``: mean cross-entropy over masked positions (MaskGIT, Show-o).
- ``elbo``: MDLM's continuous-time ELBO: each masked token's cross-entropy weighted by the
  schedule's ``loss_weight(t)`` (``1/t`` for the linear schedule), averaged over all target tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_KINDS = ("ce", "elbo")


def masked_token_loss(logits: Tensor, labels: Tensor, row: Tensor, row_weight: Tensor,
                      num_targets: Tensor, kind: str = "ce") -> tuple[Tensor, Tensor]:
    """Loss over the masked positions only.

    logits [M, V] and labels [M] for the M masked positions, ``row`` [M] the batch row of each,
    ``row_weight`` [B] the ELBO weight per row, ``num_targets`` [B] target positions per row.
    Returns (scalar loss, per-row mean CE [B] for logging).
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss must be one of {LOSS_KINDS}, got {kind!r}")
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    b = row_weight.shape[0]
    per_row_sum = torch.zeros(b, device=ce.device).index_add_(0, row, ce)
    per_row_count = torch.zeros(b, device=ce.device).index_add_(0, row, torch.ones_like(ce))
    per_row_mean = per_row_sum / per_row_count.clamp_min(1)
    if kind == "ce":
        loss = ce.mean() if ce.numel() else logits.sum() * 0
    else:
        loss = (per_row_sum * row_weight / num_targets.clamp_min(1)).mean()
    return loss, per_row_mean
