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

import copy
import operator
from abc import ABC, abstractmethod
from collections.abc import Mapping
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


MAX_NUM_STEPS = 1_000_000


def check_num_steps(num_steps: Any, name: str = "num_steps") -> int:
    """``num_steps`` as a positive ``int``: the one check every entry point (``set_timesteps``,
    ``decode``, the pipeline's tasks) shares.  Integral floats (``8.0``) pass as ints; ``8.5``,
    ``0``, booleans and non-numbers are refused with one line."""
    if isinstance(num_steps, bool) or num_steps is None:
        raise TypeError(f"{name} must be a positive integer, got {num_steps!r}")
    try:
        value = operator.index(num_steps)
    except TypeError:
        if not isinstance(num_steps, float) or not num_steps.is_integer():
            raise ValueError(f"{name} must be a positive integer, got {num_steps!r}") from None
        value = int(num_steps)
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {num_steps!r}")
    if value > MAX_NUM_STEPS:  # a schedule holds a value per step: 1e9 steps took 22 GB
        raise ValueError(f"{name} must be at most {MAX_NUM_STEPS:,} (a decode ends once every token "
                         f"is placed, so more steps never run), got {num_steps!r}")
    return int(value)


def resolve_schedule(schedule: str | NoiseSchedule) -> NoiseSchedule:
    """A schedule object from a registered name (``linear``, ``cosine``, ``polynomial``,
    ``arccos``) or itself."""
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
    #: True for samplers with a ``grid`` attribute (``(height, width)`` of the view they decode,
    #: ``None`` unless given) whose order depends on it; the pipeline fills an unset one in per
    #: decode: the token grid when the view is the image segment, ``(1, length)`` for any other
    #: (text, several segments).  ``halton`` declares it.
    needs_grid: bool = False

    def __init__(self, *, mask_id: int | None = None) -> None:
        self.mask_id = mask_id
        self._num_steps: int | None = None
        self.timesteps: Tensor | None = None  # [K]: the time each step starts at
        self.time_grid: Tensor | None = None  # [K + 1]: the times between steps, 1 down to 0

    # -- configuration -------------------------------------------------------------------------
    def set_timesteps(self, num_steps: int) -> None:
        """Prepare for ``num_steps`` steps.  ``time_grid`` holds the ``num_steps + 1`` times from
        ``t = 1`` (all masked) to ``t = 0``; ``timesteps`` the ``num_steps`` times the steps start
        at, so ``for i, t in enumerate(sampler.timesteps): sampler.step(..., i)`` runs each step
        once (the diffusers loop)."""
        self._num_steps = check_num_steps(num_steps)
        self.time_grid = torch.linspace(1.0, 0.0, self._num_steps + 1, dtype=torch.float64)
        self.timesteps = self.time_grid[:-1]

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


def special_id_options(name: str, cls: type, options: Mapping[str, Any],
                       special_ids: Mapping[str, int]) -> dict[str, Any]:
    """``options`` plus the special ids sampler ``cls`` declares it needs
    (:attr:`Sampler.needs_special_ids`) from ``special_ids`` (a vocabulary's), unless given."""
    out = dict(options)
    for key in getattr(cls, "needs_special_ids", ()):
        if key not in SPECIAL_IDS or key not in special_ids:
            raise ValueError(f"sampler {name!r} asks for the special id {key!r}; the pipeline "
                             f"has {', '.join(SPECIAL_IDS)}")
        out.setdefault(key, int(special_ids[key]))
    return out


def _culprits(options: Mapping[str, Any], message: str) -> list[str]:
    """The options an error message points at (by name or by value), for naming them."""
    named = [k for k in options if f"'{k}'" in message or f" {k} " in f" {message} "]
    return named or [k for k, v in options.items() if isinstance(v, str) and repr(v) in message]


def make_sampler(sampler: "str | Sampler", options: Mapping[str, Any] | None = None, *,
                 mask_id: int, special_ids: Mapping[str, int] | None = None,
                 option: str = "sampler_kwargs") -> Sampler:
    """The sampler a decode with a vocabulary's ``mask_id`` and ``special_ids`` uses: the one
    construction path of the pipeline and the command line.

    ``sampler`` is a registered name (built with ``options`` plus the special ids it declares) or a
    :class:`Sampler` instance (a diffusers-style scheduler object: copied, so the caller's object
    is not changed, with ``mask_id`` and any declared special id it left ``None`` filled in).
    ``mask_id`` is the vocabulary's, never an option.  A bad option is one ``ValueError`` naming
    it, ``option`` saying where it came from (``sampler_kwargs``, ``--sampler-arg``)."""
    options = dict(options or {})
    ids = dict(special_ids or {})
    if isinstance(sampler, Sampler):
        if options:
            raise ValueError(f"{option} ({', '.join(options)}) only apply to a sampler given by "
                             f"name; {type(sampler).__name__} is already built")
        if sampler.mask_id is not None and int(sampler.mask_id) != int(mask_id):
            raise ValueError(f"{type(sampler).__name__} has mask_id={sampler.mask_id}, but this "
                             f"vocabulary's <mask> is {mask_id}; leave mask_id unset")
        built = copy.deepcopy(sampler)
        built.mask_id = int(mask_id)
        for key, value in special_id_options(type(sampler).__name__, type(sampler), {}, ids).items():
            if getattr(built, key, None) is None:
                setattr(built, key, value)
        return built
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a registered sampler name or a Sampler instance, got "
                        f"{type(sampler).__name__}")
    cls = SAMPLERS.get(sampler)
    if "mask_id" in options:
        raise ValueError(f"{option}: mask_id is set from the vocabulary (its <mask> is {mask_id}); "
                         "remove it")
    kwargs = special_id_options(sampler, cls, options, ids)
    try:
        return cls(mask_id=int(mask_id), **kwargs)
    except (TypeError, ValueError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        culprits = _culprits(options, message)
        shown = ", ".join(f"{k}={options[k]!r}" for k in culprits or options)
        where = f"{option} {shown}" if shown else option
        one = len(culprits) == 1
        # a TypeError is a keyword the constructor lacks; a ValueError, a value it refused
        said = (f"does not take {'this option' if one else 'these options'}" if isinstance(err, TypeError)
                else f"cannot use {'this value' if one else 'these values'}")
        raise ValueError(f"{where}: sampler {sampler!r} {said} ({message})") from None
