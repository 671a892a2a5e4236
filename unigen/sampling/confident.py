"""Confident (threshold) parallel decoding: Dimple's "confident decoding" (Yu et al. 2025) and
Fast-dLLM's threshold rule (Wu et al. 2025).

Every masked position whose confidence reaches ``threshold`` is revealed at once, and at least the
single most confident one per row, so easy sequences finish in a few network calls and hard ones
fall back to one token per step. ``num_steps`` (from ``set_timesteps`` / ``decode``) is the step
budget (``max_steps``): its last step reveals whatever is left.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unigen.sampling.base import SAMPLERS, Sampler, SamplerOutput
from unigen.sampling.categorical import sample_tokens
from unigen.sampling.confidence import check_measure, token_confidence
from unigen.sampling.rng import GeneratorArg
from unigen.sampling.selection import select_top_k


@SAMPLERS.register("confident")
class ConfidentSampler(Sampler):
    """Args: ``threshold`` on ``confidence`` (``prob``, ``margin`` or ``entropy``), ``temperature``
    (0 = greedy, the usual choice for text), ``mask_id``."""

    def __init__(
        self,
        threshold: float = 0.9,
        confidence: str = "prob",
        temperature: float = 0.0,
        mask_id: int | None = None,
    ) -> None:
        super().__init__(mask_id=mask_id)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.threshold = float(threshold)
        self.confidence = check_measure(confidence)
        self.temperature = float(temperature)

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
        probs = torch.softmax(logits, dim=-1)
        sampled = sample_tokens(logits, is_masked, self.temperature, generator)
        confidence = token_confidence(self.confidence, probs, sampled)
        if self.is_last_step(step_index):
            revealed = is_masked
        else:
            most_confident = select_top_k(confidence, is_masked, torch.ones_like(is_masked[:, 0], dtype=torch.long))
            revealed = (is_masked & (confidence >= self.threshold)) | most_confident
        return SamplerOutput(self.reveal(tokens, sampled, revealed), is_masked & ~revealed, confidence)

    def _repr_fields(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "confidence": self.confidence,
            "temperature": self.temperature,
            **super()._repr_fields(),
        }
