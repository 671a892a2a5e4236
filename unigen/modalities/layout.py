"""The shapes world's scene layout as a modality of its own: three tokens per cell of the 3x3
grid, naming the shape, the color and the size of the object there, or an empty cell.

It turns the unified model into a layout-to-image generator, a scene parser (image to layout)
and a layout planner (caption to layout), the semantic-layout conditioning of layout-to-image
models in miniature, and it is the worked example of a third modality: this one file registers
the modality and its tasks, and ``recipes/layout_shapes_cpu.yaml`` trains them next to
text-to-image.  The data comes from the shapes data modules' ``scene`` field (JSON), so no data
set changes.

Codes ``[3, 9]``: row ``r`` holds the cells of grid row ``r``, three slots each (shape, color,
size), in one codebook of 17: 0 fills all three slots of an empty cell, 1-6 are ``SHAPES``, 7-14
``COLORS``, 15-16 ``SIZES``.  The attributes are separate tokens rather than one token per
(shape, color, size) on purpose: the held-out split pairs colors with shapes never seen together
(``HELDOUT_COLOR_SHAPE``), and a joint code for such a pair would be a token never trained.
Decoding gives each object its size class's middle extent, centred in its cell (the layout fixes
what is where, not the jitter); a cell whose slots do not read shape, color, size (or all 0) is
malformed and decodes as empty (:func:`malformed_cells` counts them).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import torch
from einops import rearrange
from torch import Tensor

from unigen.data.shapes import (COLORS, GRID, SHAPES, SIZES, Scene, ShapeObject, description,
                                 render_tensor)
from unigen.diffusion.tasks import TASKS, SegmentTask
from unigen.modalities.base import Modality, register_modality

SLOTS = 3  # shape, color, size
_OFFSETS = (1, 1 + len(SHAPES), 1 + len(SHAPES) + len(COLORS))
_VALUES = (SHAPES, COLORS, SIZES)
CODEBOOK_SIZE = 1 + len(SHAPES) + len(COLORS) + len(SIZES)


def _cells(codes: Tensor) -> Tensor:
    """``[B, 3, 9]`` -> ``[B, 3, 3, 3]`` (row, col, slot)."""
    return rearrange(codes, "b r (c s) -> b r c s", s=SLOTS)


def _slot_ok(cells: Tensor) -> Tensor:
    """[B, 3, 3] bool: every slot of the cell holds a value of its own attribute."""
    ok = torch.ones(cells.shape[:-1], dtype=torch.bool)
    for k, (offset, values) in enumerate(zip(_OFFSETS, _VALUES)):
        ok &= (cells[..., k] >= offset) & (cells[..., k] < offset + len(values))
    return ok


def malformed_cells(codes: Tensor) -> Tensor:
    """[B] the number of cells per layout that are neither empty nor a (shape, color, size)."""
    cells = _cells(torch.as_tensor(codes).cpu())
    empty = (cells == 0).all(-1)
    return (~(empty | _slot_ok(cells))).flatten(1).sum(1)


@register_modality("shapes_layout")
class ShapesLayout(Modality):
    """Scene (JSON string, dict or :class:`Scene`) <-> ``[3, 9]`` codes (module docstring)."""

    field = "scene"

    @property
    def codebook_size(self) -> int:
        return CODEBOOK_SIZE

    @property
    def shape(self) -> tuple[int, ...]:
        return (GRID, GRID * SLOTS)

    def encode(self, raw: Sequence[Any]) -> Tensor:
        if isinstance(raw, (str, Scene)):
            raise TypeError("ShapesLayout.encode takes a batch (a list of scenes), got one scene")
        cells = torch.zeros(len(raw), GRID, GRID, SLOTS, dtype=torch.long)
        for i, item in enumerate(raw):
            for o in _scene(item, i).objects:
                cells[i, o.row, o.col] = torch.tensor(
                    [off + values.index(v) for off, values, v in
                     zip(_OFFSETS, _VALUES, (o.shape, o.color, o.size))])
        return rearrange(cells, "b r c s -> b r (c s)")

    def decode(self, codes: Tensor) -> list[Scene]:
        codes = torch.as_tensor(codes).cpu()
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.shape:
            raise ValueError(f"layout codes must be [B, {GRID}, {GRID * SLOTS}], got "
                             f"{list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= CODEBOOK_SIZE):
            raise ValueError(f"layout codes must lie in [0, {CODEBOOK_SIZE}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        cells = _cells(codes)
        ok = _slot_ok(cells)
        scenes = []
        for b in range(len(cells)):
            objects = [ShapeObject(*(values[int(cells[b, r, c, k]) - off] for k, (off, values)
                                     in enumerate(zip(_OFFSETS, _VALUES))), row=r, col=c)
                       for r in range(GRID) for c in range(GRID) if ok[b, r, c]]
            scenes.append(Scene(objects))
        return scenes

    def to_json(self, item: Scene) -> dict[str, Any]:
        """A decoded scene as the dict ``encode`` reads back (``{"objects": [...]}``)."""
        return _scene(item, 0).to_dict()

    def scores(self, predicted: Tensor, reference: Tensor) -> list[dict[str, float]]:
        """The base scores plus scene parsing's, per layout: ``cell_accuracy`` (cells with all
        three slots right), ``objects`` / ``objects_found`` (the reference's objects, and those
        predicted with every attribute in their cell: summed, they give object recall) and
        ``malformed`` (cells neither empty nor an object)."""
        predicted, reference = torch.as_tensor(predicted).cpu(), torch.as_tensor(reference).cpu()
        same = (_cells(predicted) == _cells(reference)).all(-1).flatten(1)
        objects = (_cells(reference) != 0).any(-1).flatten(1)
        broken = malformed_cells(predicted)
        return [{**base, "cell_accuracy": int(s.sum()) / s.numel(), "objects": int(o.sum()),
                 "objects_found": int((s & o).sum()), "malformed": int(m) / s.numel()}
                for base, s, o, m in zip(super().scores(predicted, reference), same, objects,
                                         broken)]

    def render(self, items: Sequence[Any], size: int) -> Tensor:
        """Each scene drawn exactly by the shapes renderer, ``[B, 3, size, size]``."""
        return torch.stack([render_tensor(_scene(item, i), size) for i, item in enumerate(items)])

    def describe(self, items: Sequence[Any]) -> list[str]:
        """The scenes' exhaustive descriptions (``a small red circle in the top left ...``, or
        ``an empty scene``)."""
        scenes = [_scene(item, i) for i, item in enumerate(items)]
        # an untrained or greedy planner lays out empty scenes, which captions never describe
        return [description(s) if s.objects else "an empty scene" for s in scenes]


def _scene(item: Any, index: int) -> Scene:
    if isinstance(item, Scene):
        return item
    try:
        return Scene.from_dict(json.loads(item) if isinstance(item, str) else item)
    except (ValueError, TypeError) as err:
        raise ValueError(f"layout: sample {index} is not a shapes scene ({err})") from None


def layout_scores(predicted: Tensor, target: Tensor) -> dict[str, float]:
    """Scene parsing scores of layout codes ``[B, 3, 9]``: ``cell_accuracy`` (cells with all
    three slots right), ``object_recall`` (the target's objects found with every attribute in
    their cell), ``exact_match`` (whole layouts right) and ``malformed`` (the share of predicted
    cells that are neither empty nor an object)."""
    predicted, target = torch.as_tensor(predicted).cpu(), torch.as_tensor(target).cpu()
    if predicted.shape != target.shape or predicted.ndim != 3:
        raise ValueError(f"layout_scores takes two [B, {GRID}, {GRID * SLOTS}] code tensors, got "
                         f"{list(predicted.shape)} and {list(target.shape)}")
    rows = ShapesLayout().scores(predicted, target)
    n = max(len(rows), 1)
    return {"cell_accuracy": sum(r["cell_accuracy"] for r in rows) / n,
            "object_recall": sum(r["objects_found"] for r in rows)
            / max(sum(r["objects"] for r in rows), 1),
            "exact_match": sum(r["exact_match"] for r in rows) / n,
            "malformed": sum(r["malformed"] for r in rows) / n}


@TASKS.register("layout2i")
class LayoutToImage(SegmentTask):
    """Clean layout, masked image: draw the scene the layout lays out."""

    name, given, predicted = "layout2i", ("layout",), ("image",)


@TASKS.register("i2layout")
class ImageToLayout(SegmentTask):
    """Clean image, masked layout: parse the scene (what is in each cell)."""

    name, given, predicted = "i2layout", ("image",), ("layout",)
    sampler = "confident"  # a reading, decoded greedily as captions are


@TASKS.register("t2layout")
class TextToLayout(SegmentTask):
    """Clean caption, masked layout: plan a scene the caption describes (a caption leaves facts
    open, e.g. positions, which the layout then fixes); with ``layout2i`` it draws a caption in two
    stages, text to layout to image."""

    name, given, predicted = "t2layout", ("text",), ("layout",)
