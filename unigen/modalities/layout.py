"""The shapes world's scene layout as a modality of its own: one token per cell of the 3x3 grid,
naming the object there (shape, color, size) or an empty cell.

It turns the unified model into a layout-to-image generator and a scene parser (image to layout),
the semantic-layout conditioning of layout-to-image models in miniature, and it is the worked
example of a third modality: this one file registers the modality and its two tasks, and
``recipes/layout_shapes_cpu.yaml`` trains them next to text-to-image.  The data comes from the
shapes data modules' ``scene`` field (JSON), so no data set changes.

Codes: 0 is an empty cell; object ``(shape, color, size)`` is
``1 + (SHAPES.index(shape) * len(COLORS) + COLORS.index(color)) * len(SIZES) + SIZES.index(size)``
(97 codes).  Decoding gives each object its size class's middle extent, centred in its cell:
the layout fixes what is where, not the jitter.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import torch
from torch import Tensor

from unigen.data.shapes import COLORS, GRID, SHAPES, SIZES, Scene, ShapeObject, description
from unigen.diffusion.tasks import TASKS, SegmentTask
from unigen.modalities.base import Modality, register_modality

_KINDS = [(s, c, z) for s in SHAPES for c in COLORS for z in SIZES]
_CODE = {kind: 1 + i for i, kind in enumerate(_KINDS)}


@register_modality("shapes_layout")
class ShapesLayout(Modality):
    """Scene (JSON string, dict or :class:`Scene`) <-> ``[3, 3]`` codes."""

    field = "scene"

    @property
    def codebook_size(self) -> int:
        return 1 + len(_KINDS)

    @property
    def shape(self) -> tuple[int, ...]:
        return (GRID, GRID)

    def encode(self, raw: Sequence[Any]) -> Tensor:
        if isinstance(raw, (str, Scene)):
            raise TypeError("ShapesLayout.encode takes a batch (a list of scenes), got one scene")
        codes = torch.zeros(len(raw), GRID, GRID, dtype=torch.long)
        for i, item in enumerate(raw):
            for o in _scene(item, i).objects:
                codes[i, o.row, o.col] = _CODE[(o.shape, o.color, o.size)]
        return codes

    def decode(self, codes: Tensor) -> list[Scene]:
        codes = torch.as_tensor(codes)
        if codes.ndim != 3 or tuple(codes.shape[1:]) != (GRID, GRID):
            raise ValueError(f"layout codes must be [B, {GRID}, {GRID}], got {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"layout codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        scenes = []
        for grid in codes.tolist():
            objects = [ShapeObject(*_KINDS[code - 1], row=r, col=c)
                       for r, row in enumerate(grid) for c, code in enumerate(row) if code]
            scenes.append(Scene(objects))
        return scenes


    def describe(self, items: Sequence[Any]) -> list[str]:
        """The scenes' exhaustive descriptions (``a small red circle in the top left ...``)."""
        return [description(_scene(item, i)) for i, item in enumerate(items)]


def _scene(item: Any, index: int) -> Scene:
    if isinstance(item, Scene):
        return item
    try:
        return Scene.from_dict(json.loads(item) if isinstance(item, str) else item)
    except (ValueError, TypeError) as err:
        raise ValueError(f"layout: sample {index} is not a shapes scene ({err})") from None


def layout_scores(predicted: Tensor, target: Tensor) -> dict[str, float]:
    """Scene parsing scores of layout codes ``[B, 3, 3]``: ``cell_accuracy`` (cells right),
    ``object_recall`` (objects of the target found with every attribute in their cell) and
    ``exact_match`` (whole layouts right)."""
    predicted, target = torch.as_tensor(predicted).cpu(), torch.as_tensor(target).cpu()
    if predicted.shape != target.shape or predicted.ndim != 3:
        raise ValueError(f"layout_scores takes two [B, 3, 3] code tensors, got "
                         f"{list(predicted.shape)} and {list(target.shape)}")
    same = predicted == target
    objects = target != 0
    recall = float((same & objects).sum()) / max(int(objects.sum()), 1)
    rows = same.flatten(1)
    return {"cell_accuracy": int(rows.sum()) / max(rows.numel(), 1), "object_recall": recall,
            "exact_match": int(rows.all(1).sum()) / max(len(rows), 1)}


@TASKS.register("layout2i")
class LayoutToImage(SegmentTask):
    """Clean layout, masked image: draw the scene the layout lays out."""

    name, given, predicted = "layout2i", ("layout",), ("image",)


@TASKS.register("i2layout")
class ImageToLayout(SegmentTask):
    """Clean image, masked layout: parse the scene (what is in each cell)."""

    name, given, predicted = "i2layout", ("image",), ("layout",)
