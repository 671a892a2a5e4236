"""MaskGIT confidence-ranked parallel decoding (Chang et al., "MaskGIT", CVPR 2022).

Each step samples a token at every masked position, then keeps only the most confident ones: after
step ``i`` of ``K`` a row with ``N`` target positions has exactly ``floor(N * mask_rate(1 - (i+1)/K))``
positions still masked (at least one revealed per step, all by the last). Confidences get Gumbel noise
whose temperature anneals linearly to 0 (``choice_temperature * (1 - progress)``), which adds diversity
early and commits late. Counts are per row, so rows with different region sizes batch together.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unigen.diffusion.schedules import NoiseSchedule
from unigen.sampling.base import SAMPLERS, Sampler, SamplerOutput, resolve_schedule
from unigen.sampling.categorical import check_temperatures
from unigen.sampling.confidence import check_measure, sample_with_confidence
from unigen.sampling.rng import GeneratorArg
from unigen.sampling.selection import choice_scores, masked_counts, reveal_counts, select_top_k


@SAMPLERS.register("maskgit")
class MaskGITSampler(Sampler):
    """Schedule-driven, confidence-ranked unmasking.

    Args:
        schedule: unmasking schedule, a registered :class:`NoiseSchedule` name or instance.
        temperature: token sampling temperature (0 = greedy).
        choice_temperature: initial Gumbel temperature on the ranking (MaskGIT uses 4.5; 0 = pure ranking).
        confidence: ranking measure, ``prob`` (MaskGIT), ``margin`` or ``entropy`` (LaViDa).
        mask_id: the mask token id (or assign ``sampler.mask_id`` later).
    """

    needs_editable = True

    def __init__(
        self,
        schedule: str | NoiseSchedule = "cosine",
        temperature: float = 1.0,
        choice_temperature: float = 4.5,
        confidence: str = "prob",
        mask_id: int | None = None,
    ) -> None:
        super().__init__(mask_id=mask_id)
        check_temperatures(temperature=temperature, choice_temperature=choice_temperature)
        self.schedule = resolve_schedule(schedule)
        self.temperature = float(temperature)
        self.choice_temperature = float(choice_temperature)
        self.confidence = check_measure(confidence)

    def target_counts(self, editable: Tensor) -> Tensor:
        """``[B, K + 1]`` masked counts the schedule prescribes for each row (see :func:`masked_counts`)."""
        assert self.time_grid is not None  # num_steps is checked first by callers
        return masked_counts(self.schedule, self.time_grid, editable.sum(-1))

    def step(
        self,
        logits: Tensor,
        tokens: Tensor,
        is_masked: Tensor,
        step_index: int,
        generator: GeneratorArg = None,
        editable: Tensor | None = None,
    ) -> SamplerOutput:
        logits = self.prepare_step(logits, tokens, is_masked, step_index, generator, editable)
        assert editable is not None
        probs, sampled, confidence = sample_with_confidence(
            logits, is_masked, self.temperature, generator, self.confidence)
        target_after = self.target_counts(editable)[:, step_index + 1]

        remasked = self.revise(probs, tokens, is_masked, editable, target_after, step_index)
        num_reveal = reveal_counts(is_masked.sum(-1) + remasked.sum(-1), target_after).clamp_max(is_masked.sum(-1))
        score = self.ranking_score(confidence, step_index, generator)
        revealed = select_top_k(score, is_masked, num_reveal)

        new_tokens = self.reveal(tokens, sampled, revealed).masked_fill(remasked, self.require_mask_id())
        return SamplerOutput(new_tokens, (is_masked & ~revealed) | remasked, confidence)

    def ranking_score(self, confidence: Tensor, step_index: int, generator: GeneratorArg) -> Tensor:
        tau = self.choice_temperature * (1.0 - self.progress(step_index))
        return choice_scores(confidence, self.confidence, tau, generator, "MaskGIT choice noise")

    def revise(
        self,
        probs: Tensor,
        tokens: Tensor,
        is_masked: Tensor,
        editable: Tensor,
        target_after: Tensor,
        step_index: int,
    ) -> Tensor:
        """Already revealed editable positions to mask again this step (none here; see ``remask``)."""
        return torch.zeros_like(is_masked)

    def _repr_fields(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "temperature": self.temperature,
            "choice_temperature": self.choice_temperature,
            "confidence": self.confidence,
            **super()._repr_fields(),
        }
