"""The sampler contract: one reverse step of masked discrete diffusion, apart from the network.

Tokens are ``LongTensor[B, S]`` over one unified vocabulary; ``mask_id`` marks positions still to be
generated (``is_masked``). A sampler turns the network's logits for the current tokens into the next
tokens, diffusers-scheduler style: :meth:`Sampler.set_timesteps` once, then :meth:`Sampler.step` per
step. Samplers never call the network; :func:`unigen.sampling.decode.decode` is the only loop that does.

Invariants every sampler keeps (and :func:`decode` checks): given positions (``~editable``) never
change, revealed tokens are never ``mask_id``, and every editable position is revealed by the last step.
``mask_id`` is set at construction (``mask_id=...``) or later by assigning ``sampler.mask_id``; the
pipeline sets it from its vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unigen.diffusion.schedules import NoiseSchedule, build_schedule
from unigen.registry import Registry
from unigen.sampling.categorical import legal_logits
from unigen.sampling.rng import GeneratorArg, check_generator

SAMPLERS: Registry[type["Sampler"]] = Registry("sampler")

#: the special ids a sampler may declare in ``Sampler.needs_special_ids`` (the pipeline's
#: vocabulary has each)
SPECIAL_IDS = ("eos_id", "pad_id", "sep_id")


@dataclass
class SamplerOutput:
    """Result of one :meth:`Sampler.step`."""

    tokens: Tensor  # [B, S] long; masked positions hold mask_id
    is_masked: Tensor  # [B, S] bool
    confidence: Tensor | None = None  # [B, S] float, the measure the sampler ranked by (if any)


def resolve_schedule(schedule: str | NoiseSchedule) -> NoiseSchedule:
    """A schedule object from a registered name (``linear``, ``cosine``, ``polynomial``) or itself."""
    if isinstance(schedule, NoiseSchedule):
        return schedule
    return build_schedule(schedule)


class Sampler(ABC):
    """Base class. Subclasses register with ``@SAMPLERS.register("name")`` and implement :meth:`step`.

    ``step`` must: keep ``~editable`` positions unchanged, never emit ``mask_id``, reveal every
    remaining position at ``step_index == num_steps - 1``, and draw randomness only through
    :mod:`unigen.sampling.rng` with the given ``generator``.
    """

    #: True for samplers whose step needs ``editable`` (the region masked when decoding began).
    needs_editable: bool = False
    #: Special token ids the sampler's constructor takes and the pipeline fills in from its
    #: vocabulary unless the caller gives them: names among ``SPECIAL_IDS`` (``mask_id`` is always
    #: set).  ``semi_ar`` declares ``("eos_id", "pad_id")``.
    needs_special_ids: tuple[str, ...] = ()

    def __init__(self, *, mask_id: int | None = None) -> None:
        self.mask_id = mask_id
        self._num_steps: int | None = None
        self.timesteps: Tensor | None = None

    # -- configuration -------------------------------------------------------------------------
    def set_timesteps(self, num_steps: int) -> None:
        """Prepare for ``num_steps`` steps; ``timesteps`` runs from ``t = 1`` (all masked) to ``t = 0``."""
        if int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        self._num_steps = int(num_steps)
        self.timesteps = torch.linspace(1.0, 0.0, self._num_steps + 1, dtype=torch.float64)

    @property
    def num_steps(self) -> int:
        if self._num_steps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps(num_steps) before stepping")
        return self._num_steps

    def done(self, is_masked: Tensor) -> bool:
        """True when nothing is left to generate (adaptive samplers reach this before ``num_steps``)."""
        return not bool(is_masked.any())

    # -- the step --------------------------------------------------------------------------------
    @abstractmethod
    def step(
        self,
        logits: Tensor,
        tokens: Tensor,
        is_masked: Tensor,
        step_index: int,
        generator: GeneratorArg = None,
        editable: Tensor | None = None,
    ) -> SamplerOutput:
        """One reverse step from ``logits [B, S, V]`` (already restricted to legal tokens by the model)."""

    # -- helpers for subclasses ------------------------------------------------------------------
    def require_mask_id(self) -> int:
        if self.mask_id is None:
            raise ValueError(f"{type(self).__name__}.mask_id is not set; pass mask_id= or assign sampler.mask_id")
        return int(self.mask_id)

    def prepare_step(
        self,
        logits: Tensor,
        tokens: Tensor,
        is_masked: Tensor,
        step_index: int,
        generator: GeneratorArg,
        editable: Tensor | None,
    ) -> Tensor:
        """Validate a step's inputs; return float32 logits with ``mask_id`` forbidden."""
        self.validate_step(logits, tokens, is_masked, step_index, generator, editable)
        return legal_logits(logits, self.require_mask_id())

    def validate_step(
        self,
        logits: Tensor,
        tokens: Tensor,
        is_masked: Tensor,
        step_index: int,
        generator: GeneratorArg,
        editable: Tensor | None,
    ) -> None:
        """Raise a clear error for inconsistent step inputs."""
        self.require_mask_id()
        if not 0 <= step_index < self.num_steps:
            raise ValueError(f"step_index {step_index} outside [0, {self.num_steps})")
        if logits.dim() != 3 or tokens.shape != logits.shape[:2] or is_masked.shape != tokens.shape:
            raise ValueError(
                f"expected logits [B, S, V], tokens and is_masked [B, S]; got {tuple(logits.shape)}, "
                f"{tuple(tokens.shape)}, {tuple(is_masked.shape)}"
            )
        if is_masked.dtype != torch.bool:
            raise TypeError(f"is_masked must be a bool tensor, got {is_masked.dtype}")
        if editable is None and self.needs_editable:
            raise ValueError(
                f"{type(self).__name__}.step needs editable= (the positions masked when decoding began); "
                "decode() passes it"
            )
        if editable is not None:
            if editable.shape != tokens.shape or editable.dtype != torch.bool:
                raise ValueError("editable must be a bool tensor shaped like tokens")
            if bool((is_masked & ~editable).any()):
                raise ValueError("a masked position lies outside editable; editable must cover every masked position")
        check_generator(generator, tokens.shape[0])

    def progress(self, step_index: int) -> float:
        """Fraction of the steps completed after step ``step_index`` (MaskGIT's ``ratio``)."""
        return (step_index + 1) / self.num_steps

    def is_last_step(self, step_index: int) -> bool:
        return step_index == self.num_steps - 1

    def reveal(self, tokens: Tensor, sampled: Tensor, revealed: Tensor) -> Tensor:
        """``tokens`` with ``sampled`` written at ``revealed`` positions."""
        return torch.where(revealed, sampled, tokens)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"

    def _repr_fields(self) -> dict[str, Any]:
        return {"mask_id": self.mask_id}


def build_sampler(name: str, **kwargs: Any) -> Sampler:
    """Instantiate a registered sampler by recipe name, e.g. ``build_sampler("maskgit", temperature=1.0)``."""
    return SAMPLERS.get(name)(**kwargs)
