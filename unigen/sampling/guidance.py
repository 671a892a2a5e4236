"""Classifier-free guidance for masked diffusion (Ho & Salimans 2022; as used by MUSE, Show-o, UniDisc).

The unconditional pass is the same sequence with the condition positions (``cond_mask``) replaced by
``mask_id`` (UniDisc / Show-o style, no separate null prompt), or by other tokens, ``uncond_tokens``:
a negative prompt, which guidance then steers away from (as diffusers' ``negative_prompt``). Both
passes run as ONE batched forward of ``[cond; uncond]`` (2B rows) and combine on log-probabilities:
``uncond + scale * (cond - uncond)``.
Scale 1 is exactly the conditional pass and scale 0 exactly the unconditional pass; both then run
only the one pass they need. Guidance in a limited interval (Kynkäänniemi et al. 2024) applies the
scale only for steps whose progress lies in ``interval`` and runs only the conditional pass elsewhere.
A scale schedule ramps from ``min_scale`` to ``scale`` over the steps (MUSE ramps guidance up).

Progress is ``step_index / (num_steps - 1)``: 0 at the first step, 1 at the last.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from einops import rearrange
from torch import Tensor

from unigen.registry import Registry

GUIDANCE_SCHEDULES: Registry[Callable[[float], float]] = Registry("guidance scale schedule")
GUIDANCE_SCHEDULES.register("constant")(lambda progress: 1.0)
GUIDANCE_SCHEDULES.register("linear")(lambda progress: progress)
GUIDANCE_SCHEDULES.register("cosine")(lambda progress: (1.0 - math.cos(math.pi * progress)) / 2.0)

PassMode = Literal["cond", "uncond", "both"]


def step_progress(step_index: int, num_steps: int) -> float:
    """0 at the first step, 1 at the last (0 when there is a single step)."""
    return step_index / (num_steps - 1) if num_steps > 1 else 0.0


@dataclass
class GuidedBatch:
    """The network input for one guided step and how to combine its output."""

    inputs: Tensor  # [B, S] or [2B, S] (cond rows first)
    mode: PassMode
    scale: float


_FLOAT32_MAX = 3.4028234663852886e38


def check_scale(value: float, name: str = "guidance scale", negative: bool = True) -> float:
    """``value`` as a float, refused when not finite, and when negative unless ``negative``: a
    negative scale pushes samples away from their condition (anti-guidance), which the library
    allows for research but a command-line typo makes far more often than a person means it."""
    if isinstance(value, (bool, str, bytes)):  # float() would take True and "2"
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    # beyond float32's range the logits' arithmetic overflows (1e308 was a RuntimeError mid-decode)
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX or (value < 0 and not negative):
        bound = "" if negative else " >= 0"
        raise ValueError(f"{name} must be a finite number{bound} (1: no guidance, 0: "
                         f"unconditional), got {value:g}")
    return value


def guided_logits(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """``uncond + scale * (cond - uncond)`` on the two passes' log-probabilities (unnormalised
    unless ``scale`` is 0 or 1); a token illegal in either pass stays at -inf."""
    cond, uncond = cond.float().log_softmax(-1), uncond.float().log_softmax(-1)
    guided = torch.lerp(uncond, cond, scale)
    # Log-probabilities are finite or -inf, so a token illegal in either pass comes out of the
    # lerp as nan or +-inf, never as a finite value: it stays illegal (-inf), in place, rather
    # than through a finiteness mask per pass (three fewer [B, S, V] passes per step).
    return guided.nan_to_num_(nan=float("-inf"), posinf=float("-inf"), neginf=float("-inf"))


class ClassifierFreeGuidance:
    """Args:
        scale: guidance scale (1 = conditional only, 0 = unconditional only).
        interval: ``(start, end)`` progress window in [0, 1] where guidance applies; None = always.
        schedule: how the scale moves from ``min_scale`` (first step) to ``scale`` (last step):
            a registered name in ``GUIDANCE_SCHEDULES`` (``constant``, ``linear``, ``cosine``).
        min_scale: starting scale of non-constant schedules.
    """

    def __init__(
        self,
        scale: float,
        interval: tuple[float, float] | None = None,
        schedule: str = "constant",
        min_scale: float = 1.0,
    ) -> None:
        if interval is not None:
            start, end = (float(v) for v in interval)
            if not 0.0 <= start <= end <= 1.0:
                raise ValueError(f"guidance interval must satisfy 0 <= start <= end <= 1, got {interval}")
            interval = (start, end)
        self.scale = check_scale(scale)
        self.interval = interval
        self.schedule = schedule
        self._weight = GUIDANCE_SCHEDULES.get(schedule)
        self.min_scale = check_scale(min_scale, "guidance min_scale")

    def scale_at(self, progress: float) -> float:
        """Effective scale at ``progress``; 1.0 (plain conditional pass) outside the interval."""
        if self.interval is not None and not self.interval[0] <= progress <= self.interval[1]:
            return 1.0
        return self.min_scale + (self.scale - self.min_scale) * self._weight(progress)

    def prepare(self, tokens: Tensor, cond_mask: Tensor, mask_id: int, progress: float,
                uncond_tokens: Tensor | None = None) -> GuidedBatch:
        """Network input for this step: the conditional rows, the unconditional rows, or both
        stacked.  The unconditional rows hold ``mask_id`` at ``cond_mask``, or ``uncond_tokens``'
        values there (a negative prompt; ``[B, S]``, read only at ``cond_mask``)."""
        if cond_mask.shape != tokens.shape or cond_mask.dtype != torch.bool:
            raise ValueError("cond_mask must be a bool tensor shaped like tokens")
        scale = self.scale_at(progress)
        if scale == 1.0:
            return GuidedBatch(tokens, "cond", scale)
        if uncond_tokens is None:
            uncond = tokens.masked_fill(cond_mask, mask_id)
        else:
            uncond = torch.where(cond_mask, uncond_tokens, tokens)
        if scale == 0.0:
            return GuidedBatch(uncond, "uncond", scale)
        return GuidedBatch(torch.cat([tokens, uncond]), "both", scale)

    def combine(self, logits: Tensor, batch: GuidedBatch) -> Tensor:
        """Guided logits ``[B, S, V]`` from the network output for ``batch.inputs``."""
        if batch.mode != "both":
            return logits
        cond, uncond = rearrange(logits, "(two b) s v -> two b s v", two=2)
        return guided_logits(cond, uncond, batch.scale)

    def __repr__(self) -> str:
        return (
            f"ClassifierFreeGuidance(scale={self.scale}, interval={self.interval}, "
            f"schedule={self.schedule!r}, min_scale={self.min_scale})"
        )


def build_guidance(scale: float, options: dict | None = None, *,
                   option: str = "guidance_kwargs") -> ClassifierFreeGuidance | None:
    """The guidance a decode runs with: None at scale 1 without options (one pass a step), else
    :class:`ClassifierFreeGuidance`.  A bad value or an unknown option is one ``ValueError`` that
    names ``option`` (where it came from), before any sample is drawn."""
    options = dict(options or {})
    if scale == 1.0 and not options:
        return None
    known = [k for k in inspect.signature(ClassifierFreeGuidance).parameters if k != "scale"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{option}: unknown option {', '.join(map(repr, unknown))}; the options "
                         f"are {', '.join(known)}")
    try:
        return ClassifierFreeGuidance(scale, **options)
    except (TypeError, ValueError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ValueError(f"{option} {shown}: {message}" if shown else message) from None


