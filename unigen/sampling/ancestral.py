"""Ancestral masked-diffusion sampling (MDLM, Sahoo et al. 2024; UniDisc's ``ddpm`` sampler).

The exact reverse process of absorbing-state diffusion: stepping from time ``t`` to ``s < t``, each
still-masked position is revealed independently with probability
``(mask_rate(t) - mask_rate(s)) / mask_rate(t)`` with a token drawn from the network's categorical;
the last step (``s = 0``) reveals everything. Many steps reveal nothing, so ``decode(...,
cache_unchanged=True)`` skips those network calls: MDLM's cached sampler, same samples, fewer calls.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from unigen.diffusion.schedules import NoiseSchedule
from unigen.sampling.base import SAMPLERS, Sampler, SamplerOutput, resolve_schedule
from unigen.sampling.categorical import check_temperatures, sample_tokens
from unigen.sampling.rng import GeneratorArg, rand_rows


@SAMPLERS.register("ancestral")
class AncestralSampler(Sampler):
    """Args: ``schedule`` (registered name or instance), ``temperature`` (0 = greedy tokens; the reveal
    decisions stay random), ``mask_id``."""

    def __init__(
        self, schedule: str | NoiseSchedule = "linear", temperature: float = 1.0, mask_id: int | None = None
    ) -> None:
        super().__init__(mask_id=mask_id)
        check_temperatures(temperature=temperature)
        self.schedule = resolve_schedule(schedule)
        self.temperature = float(temperature)

    def reveal_probability(self, step_index: int) -> float:
        """``(rate(t) - rate(s)) / rate(t)`` for the step from ``t`` to ``s``; 1 on the last step."""
        assert self.time_grid is not None
        if self.is_last_step(step_index):
            return 1.0
        rate_t, rate_s = self.schedule.mask_rate(self.time_grid[step_index : step_index + 2]).tolist()
        if rate_t <= 0:
            return 1.0
        return min(max((rate_t - rate_s) / rate_t, 0.0), 1.0)

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
        sampled = sample_tokens(logits, is_masked, self.temperature, generator)
        u = rand_rows(tokens.shape, generator, device=tokens.device, purpose="ancestral reveal decisions")
        revealed = is_masked & (u < self.reveal_probability(step_index))
        return SamplerOutput(self.reveal(tokens, sampled, revealed), is_masked & ~revealed)

    def _repr_fields(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "temperature": self.temperature, **super()._repr_fields()}
