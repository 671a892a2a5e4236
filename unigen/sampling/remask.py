"""Low-confidence remasking with margin/entropy confidence and token revision (LaViDa, Li et al. 2025;
revision in the spirit of ReMDM, Wang et al. 2025).

Same schedule-driven step as MaskGIT, with two changes: the ranking measure defaults to the
``margin`` (top-1 minus top-2 probability), which LaViDa found more robust than raw probability, and
optional *revision*: already revealed editable tokens whose current confidence fell below
``revise_threshold`` are masked again so a later step re-predicts them with more context.

Revision is bounded so decoding terminates in exactly ``num_steps`` steps: a step re-masks at most
``max_revise_fraction`` of the row's region and never more than the schedule leaves masked after the
step, so the masked count still follows the schedule and reaches 0 on the last step (where nothing is
re-masked). Given positions are never candidates. Revision needs a network whose predictions at
revealed positions are informative; one that copies its input there simply never revises.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unigen.diffusion.schedules import NoiseSchedule
from unigen.sampling.base import SAMPLERS
from unigen.sampling.confidence import token_confidence
from unigen.sampling.maskgit import MaskGITSampler
from unigen.sampling.selection import select_top_k


@SAMPLERS.register("remask")
class RemaskSampler(MaskGITSampler):
    """Args (beyond :class:`MaskGITSampler`'s): ``revise_threshold`` (None = no revision) and
    ``max_revise_fraction`` (per-step cap on re-masked tokens, as a fraction of the row's region)."""

    def __init__(
        self,
        schedule: str | NoiseSchedule = "cosine",
        temperature: float = 1.0,
        choice_temperature: float = 0.0,
        confidence: str = "margin",
        revise_threshold: float | None = None,
        max_revise_fraction: float = 0.1,
        mask_id: int | None = None,
    ) -> None:
        super().__init__(schedule, temperature, choice_temperature, confidence, mask_id)
        if not 0.0 <= max_revise_fraction <= 1.0:
            raise ValueError(f"max_revise_fraction must lie in [0, 1], got {max_revise_fraction}")
        self.revise_threshold = revise_threshold
        self.max_revise_fraction = float(max_revise_fraction)

    def revise(
        self,
        probs: Tensor,
        tokens: Tensor,
        is_masked: Tensor,
        editable: Tensor,
        target_after: Tensor,
        step_index: int,
    ) -> Tensor:
        if self.revise_threshold is None or self.is_last_step(step_index):
            return torch.zeros_like(is_masked)
        revealed = editable & ~is_masked
        # Masked positions hold mask_id, which may lie outside the vocabulary the logits cover.
        current = token_confidence(self.confidence, probs, tokens.masked_fill(is_masked, 0))
        low = revealed & (current < self.revise_threshold)
        cap = torch.floor(editable.sum(-1) * self.max_revise_fraction).long()
        return select_top_k(-current, low, torch.minimum(cap, target_after))

    def _repr_fields(self) -> dict[str, Any]:
        return {
            **super()._repr_fields(),
            "revise_threshold": self.revise_threshold,
            "max_revise_fraction": self.max_revise_fraction,
        }
