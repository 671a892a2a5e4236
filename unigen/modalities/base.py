"""Further modalities: token segments beyond the text and the image (UniDisc, MMaDA).

A :class:`Modality` says how a batch field becomes codes in a segment of its own and back: its
codebook size, its token grid (``(n,)`` or ``(h, w)``), ``encode`` and ``decode``.  A recipe
names the modalities a model has (``modalities: {layout: {kind: shapes_layout}}``: the segment
name, then the registered kind and its arguments); the unified module appends one segment per
modality to the sequence (:class:`~unigen.diffusion.vocab.SequenceLayout`) and its codes to the
vocabulary (:class:`~unigen.diffusion.vocab.VocabLayout`), with a modality embedding, positions
(1-D or 2-D, like the text's and the image's) and a legal-logit row of its own.  Tasks that
fill the segment subclass :class:`~unigen.diffusion.tasks.SegmentTask`.  Adding a modality is
one file that registers it and its tasks (``unigen/modalities/layout.py`` is the example), plus
a recipe.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from unigen.registry import Registry, saved_module_record

MODALITIES: Registry[type["Modality"]] = Registry("modality")


class Modality(ABC):
    """One further kind of token segment.

    ``field``: the batch key holding the raw data (a data module's item key).
    ``codebook_size``: the number of codes; ``shape``: the segment's token grid, ``(n,)`` for a
    sequence or ``(h, w)`` for a grid (positions then follow the grid, as the image's do)."""

    field: str = ""

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def shape(self) -> tuple[int, ...]: ...

    @abstractmethod
    def encode(self, raw: Any) -> Tensor:
        """A batch's raw field -> long codes ``[B, *shape]`` in ``[0, codebook_size)`` (host)."""

    @abstractmethod
    def decode(self, codes: Tensor) -> list[Any]:
        """Codes ``[B, *shape]`` -> one raw item per row."""

    def describe(self, items: list[Any]) -> list[str]:
        """One line of text per decoded item, for humans (sample grids); default ``str``."""
        return [str(item) for item in items]

    def to_json(self, item: Any) -> Any:
        """One decoded item as JSON data (what ``unigen task`` and eval records write); the
        default returns JSON-ready items as they are and refuses others, so a modality whose
        ``decode`` gives objects overrides it."""
        try:
            json.dumps(item)
        except (TypeError, ValueError):
            raise TypeError(f"{type(self).__name__}.decode gives {type(item).__name__} items, "
                            "which are not JSON data: override Modality.to_json") from None
        return item

    def scores(self, predicted: Tensor, reference: Tensor) -> list[dict[str, float]]:
        """Per-row scores of predicted codes against the true codes (both ``[B, *shape]``), for
        ``unigen eval``: ``code_accuracy`` (the share of codes right) and ``exact_match`` (1 when
        every code is).  A modality adds its own (keep these two)."""
        same = (torch.as_tensor(predicted).cpu() == torch.as_tensor(reference).cpu()).flatten(1)
        return [{"code_accuracy": int(row.sum()) / max(row.numel(), 1), "exact_match": float(row.all())}
                for row in same]

    def render(self, items: list[Any], size: int) -> Tensor | None:
        """A picture of each decoded item, ``[B, 3, size, size]`` in [0, 1] (a layout drawn
        exactly), or None when the modality has none: ``unigen eval`` then checks the picture of
        a predicted item against the prompt it was made from."""
        return None

    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this modality (saved with a model)."""
        return {}


def build_modalities(spec: dict[str, dict[str, Any]] | None) -> dict[str, Modality]:
    """``{segment name: {"kind": registered name (default: the segment name), **kwargs}}`` ->
    ``{segment name: Modality}``, in the recipe's order (the order of the segments)."""
    out: dict[str, Modality] = {}
    for name, options in (spec or {}).items():
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ValueError(f"modality {name!r}: expected a mapping of options (kind and its "
                             f"arguments), got {options!r}")
        options = dict(options)
        kind = options.pop("kind", name)
        saved_by = options.pop("module", None)
        cls = MODALITIES.get(kind, saved_by)
        try:
            modality = cls(**options)
        except TypeError as err:
            raise ValueError(f"modality {name!r} ({kind}): {err}") from None
        if not isinstance(modality, Modality):
            raise TypeError(f"modality {kind!r} is not a unigen.modalities.Modality")
        out[name] = modality
    return out


def modality_spec(modalities: dict[str, Modality]) -> dict[str, dict[str, Any]]:
    """The saved form of :func:`build_modalities`'s result (JSON), which rebuilds it."""
    spec = {}
    for name, modality in modalities.items():
        kind = getattr(type(modality), "kind", None)
        if kind is None:
            raise ValueError(f"modality {name!r}: {type(modality).__name__} is not registered "
                             "(decorate it with @MODALITIES.register)")
        spec[name] = {"kind": kind, **modality.config(), **saved_module_record(type(modality))}
    return spec


def register_modality(name: str):
    """``@register_modality("kind")``: registers a :class:`Modality` subclass under ``name`` and
    records the name on the class, so a saved model names the kind to rebuild."""
    def wrap(cls: type[Modality]) -> type[Modality]:
        MODALITIES.register(name)(cls)
        cls.kind = name
        return cls
    return wrap
