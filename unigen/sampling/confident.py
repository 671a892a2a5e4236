"""Confident (threshold) parallel decoding: Dimple's "confident decoding" (Yu et al. 2025) and
Fast-dLLM's threshold rule (Wu et al. 2025).

Every masked position whose confidence reaches ``threshold`` is revealed at once, and at least the
single most confident one per row, so easy sequences finish in a few network calls and hard ones
fall back to one token per step. ``num_steps`` (from ``set_timesteps`` / ``decode``) is the step
budget (``max_steps``): its last step reveals whatever is left.

``rule`` picks how the confidences decide (:mod:`unigen.sampling.reveal_rules`): the per-position
``threshold`` suits text, where confident tokens are rarely jointly wrong; on images the likeliest
token of almost every position is background, and committing all of them at once leaves empty
images. The joint rules (``factor``, ``error_budget``) bound how much is committed at once, but on
images the *order* matters as much: always committing the surest positions first settles the
background before any object (MaskGIT with its choice noise off leaves about twice as many images
empty). ``choice_temperature`` adds MaskGIT's annealed Gumbel noise to the ranking, and
``schedule`` reveals at least what a MaskGIT schedule of ``num_steps`` steps would from where each
row stands, so the sampler is never slower than MaskGIT with that budget and skips ahead whenever
the rule reveals more.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from unigen.diffusion.schedules import NoiseSchedule
from unigen.sampling.base import SAMPLERS, Sampler, SamplerOutput, resolve_schedule
from unigen.sampling.categorical import check_temperatures
from unigen.sampling.confidence import check_measure, sample_with_confidence
from unigen.sampling.reveal_rules import REVEAL_RULES, check_rule
from unigen.sampling.rng import GeneratorArg
from unigen.sampling.selection import choice_scores, replanned_counts, select_top_k


@SAMPLERS.register("confident")
class ConfidentSampler(Sampler):
    """Args:
        threshold: the ``rule``'s number: the confidence to reach (``threshold``), Fast-dLLM's ``f``
            (``factor``) or the summed ``1 - confidence`` allowed per step (``error_budget``).
        confidence: ``prob``, ``margin`` or ``entropy`` (:mod:`unigen.sampling.confidence`).
        temperature: token sampling temperature (0 = greedy, the usual choice for text; images
            want 1, as in MaskGIT).
        rule: a registered reveal rule (:data:`unigen.sampling.reveal_rules.REVEAL_RULES`).
        choice_temperature: Gumbel noise on the ranking that picks the positions revealed beyond the
            rule (the at-least-one, or the schedule's count), annealed to 0 as decoding proceeds
            (MaskGIT uses 4.5; 0 = the surest first).
        schedule: ``None`` (at least one position per step) or a registered unmasking schedule
            (``cosine``, ...): at least the positions a MaskGIT step of ``num_steps`` would reveal,
            replanned from each row's masked fraction.
        mask_id: the mask token id.
    """

    def __init__(
        self,
        threshold: float = 0.9,
        confidence: str = "prob",
        temperature: float = 0.0,
        rule: str = "threshold",
        choice_temperature: float = 0.0,
        schedule: str | NoiseSchedule | None = None,
        mask_id: int | None = None,
    ) -> None:
        super().__init__(mask_id=mask_id)
        check_temperatures(temperature=temperature, choice_temperature=choice_temperature)
        self.threshold = float(threshold)
        self.confidence = check_measure(confidence)
        self.temperature = float(temperature)
        self.rule = check_rule(rule)
        self.choice_temperature = float(choice_temperature)
        self.schedule = None if schedule is None else resolve_schedule(schedule)
        self.needs_editable = self.schedule is not None  # the schedule counts editable positions

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
        _, sampled, confidence = sample_with_confidence(logits, is_masked, self.temperature, generator, self.confidence)
        if self.is_last_step(step_index):
            revealed = is_masked
        else:
            num_masked = is_masked.sum(-1)
            remaining: float | Tensor
            if self.schedule is None:
                count, remaining = (num_masked > 0).long(), 1.0 - self.progress(step_index)
            else:
                assert editable is not None  # validate_step checked it
                count, remaining = replanned_counts(
                    self.schedule, num_masked, editable.sum(-1), step_index, self.num_steps
                )
            floor = select_top_k(self.ranking_score(confidence, remaining, generator), is_masked, count)
            passing = REVEAL_RULES.get(self.rule)(confidence, is_masked, self.threshold)
            revealed = (is_masked & passing) | floor
        return SamplerOutput(self.reveal(tokens, sampled, revealed), is_masked & ~revealed, confidence)

    def ranking_score(self, confidence: Tensor, remaining: float | Tensor, generator: GeneratorArg) -> Tensor:
        """Log-confidence plus MaskGIT's Gumbel noise scaled by ``choice_temperature * remaining``
        (``remaining``, a float or ``[B]``: 1 when decoding starts, 0 at its end)."""
        tau = 0.0 if self.choice_temperature == 0 else self.choice_temperature * remaining
        return choice_scores(confidence, self.confidence, tau, generator, "confident choice noise")

    def _repr_fields(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "confidence": self.confidence,
            "temperature": self.temperature,
            "rule": self.rule,
            "choice_temperature": self.choice_temperature,
            "schedule": self.schedule,
            **super()._repr_fields(),
        }
