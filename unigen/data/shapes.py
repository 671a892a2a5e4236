"""The shapes world: the embedded default data set, rendered procedurally (no files, downloads).

A scene holds 1-4 objects on a black background, at most one per cell of a 3x3 grid.  Every object
has a shape (``SHAPES``), a color from a fixed palette (``PALETTE``), a size (small/large) and a
cell.
Every sample of a split is a pure function of ``(seed, split, index)``, in the spirit of the
procedural worlds of CLEVR / Multi-dSprites, small enough that a tiny unified model (Show-o,
UniDisc, MMaDA) can learn text-to-image, captioning and VQA on it in minutes, while a pixel checker
(:mod:`unigen.data.checker`) scores generations GenEval-style.

Design choices that keep the checker reliable:

* Palette: the 7 non-black corners of the RGB cube plus orange.  On a black background a pixel is
  ``alpha * color``, so the checker classifies pixels by the color *line* they lie on; the closest
  two lines (orange vs red/yellow) are still 64 levels apart at 50 % coverage.
* Shapes are upright, sized by their bounding box (largest side = ``extent`` x cell) and centred in
  their cell up to a small jitter; objects never touch (gaps >= 0.12 cell, > 1 px at 32x32).
* Antialiasing by exact scanline coverage (8 sample rows per pixel), shared with the checker.

Size limits: at 64x64 and above every object is recognised, also under noise and blur; at 32x32
large objects (about 8 px across) are recognised, also under noise and blur, and small ones (about
4.5 px) are recognised on clean renders (all but about 1 in 600 small stars, read as diamonds at
the smallest extents) but not reliably once blurred (``tests/data/test_checker.py`` asserts the
clean and blurred cases).

Compositional generalisation: ``HELDOUT_COLOR_SHAPE`` and ``HELDOUT_SHAPE_CELL`` never occur in the
``train`` / ``val`` splits (neither in images nor in any caption or question); every ``heldout``
scene contains at least one of them.
"""

from __future__ import annotations

import json
import numbers
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

# -- the world's vocabulary ----------------------------------------------------------------------
BACKGROUND_RGB: tuple[int, int, int] = (0, 0, 0)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "orange": (255, 128, 0),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
PLURALS: dict[str, str] = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
SIZES: tuple[str, ...] = ("small", "large")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "center", "right")
GRID = 3
MAX_OBJECTS = 4  # objects per sampled scene (a Scene itself may hold up to GRID * GRID)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                 "eight", "nine")
# Template captions stay within this many words (a prefix is only added if it fits), so a short
# text segment holds every caption; descriptions (see description()) are exempt and longer.
MAX_CAPTION_WORDS = 20

# Object extent (largest bounding-box side) as a fraction of the cell side, per size class; the
# gap between the classes lets the checker measure size with +-1 px error even at 32x32.
SIZE_EXTENTS: dict[str, tuple[float, float]] = {"small": (0.40, 0.48), "large": (0.70, 0.80)}
SIZE_THRESHOLD = 0.59  # extent above this is "large"
JITTER = 0.04  # max offset of an object's box centre from its cell centre, in cells

# Relations between two objects, read on the grid: "a to the left of b" iff a's column < b's.
RELATIONS: dict[str, Callable[[int, int, int, int], bool]] = {
    "to the left of": lambda r1, c1, r2, c2: c1 < c2,
    "to the right of": lambda r1, c1, r2, c2: c1 > c2,
    "above": lambda r1, c1, r2, c2: r1 < r2,
    "below": lambda r1, c1, r2, c2: r1 > r2,
}
CAPTION_PREFIXES: tuple[str, ...] = ("an image of", "a picture of")

SPLITS: tuple[str, ...] = ("train", "val", "heldout")
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}

# Held-out compositions: one (color, shape) pair per shape, each color used at most once ...
HELDOUT_COLOR_SHAPE: frozenset[tuple[str, str]] = frozenset({
    ("yellow", "circle"), ("cyan", "square"), ("blue", "triangle"),
    ("magenta", "diamond"), ("green", "cross"), ("red", "star"),
})
# ... and (shape, (row, col)) pairs: a shape never seen in one cell during training.
HELDOUT_SHAPE_CELL: frozenset[tuple[str, tuple[int, int]]] = frozenset({
    ("circle", (2, 2)), ("triangle", (0, 0)), ("star", (1, 1)),
})


def position_name(row: int, col: int) -> str:
    """Grid cell -> words: ``"top left"``, ``"middle right"``, ... and ``"center"`` for (1, 1)."""
    return "center" if (row, col) == (1, 1) else f"{ROWS[row]} {COLS[col]}"


def article(next_word: str) -> str:
    """The indefinite article before ``next_word`` (every word of the grammar is spelt as said)."""
    return "an" if next_word[0] in "aeiou" else "a"


def _require(value: Any, allowed: Sequence[Any], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {list(allowed)}")


# -- scenes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeObject:
    """One object.  ``extent`` (largest box side, in cells; default: middle of its size class) and
    ``dx``/``dy`` (box-centre offset from the cell centre, in cells) make the render exact."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    extent: float | None = None
    dx: float = 0.0
    dy: float = 0.0

    def __post_init__(self) -> None:
        _require(self.shape, SHAPES, "shape")
        _require(self.color, COLORS, "color")
        _require(self.size, SIZES, "size")
        for what in ("row", "col"):
            value = getattr(self, what)
            # True == 1 and 1.0 == 1 would pass the range check and then index like no cell
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{what} must be an integer cell index in 0..{GRID - 1}, got {value!r}")
            _require(value, range(GRID), what)
        lo, hi = SIZE_EXTENTS[self.size]
        if self.extent is not None and not lo <= self.extent <= hi:
            raise ValueError(f"extent {self.extent} is outside [{lo}, {hi}] for a {self.size} "
                             "object")
        if max(abs(self.dx), abs(self.dy)) > JITTER:
            raise ValueError(f"offset ({self.dx}, {self.dy}) exceeds the jitter limit {JITTER}")

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    @property
    def position(self) -> str:
        return position_name(self.row, self.col)

    @property
    def box_extent(self) -> float:
        lo, hi = SIZE_EXTENTS[self.size]
        return (lo + hi) / 2 if self.extent is None else self.extent

    @property
    def is_heldout(self) -> bool:
        return ((self.color, self.shape) in HELDOUT_COLOR_SHAPE
                or (self.shape, self.cell) in HELDOUT_SHAPE_CELL)


@dataclass
class Scene:
    """A list of objects, at most one per grid cell; serialises to/from a dict and JSON."""

    objects: list[ShapeObject] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.objects = list(self.objects)
        bad = [o for o in self.objects if not isinstance(o, ShapeObject)]
        if bad:
            raise TypeError(f"Scene.objects must hold ShapeObject, got {type(bad[0]).__name__}")
        cells = [o.cell for o in self.objects]
        dupes = sorted({c for c in cells if cells.count(c) > 1})
        if dupes:
            raise ValueError(f"at most one object per grid cell; cells {dupes} hold several")

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scene":
        if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
            raise ValueError(f"a scene dict needs an 'objects' list, got {data!r:.200}")
        try:
            return cls([ShapeObject(**o) for o in data["objects"]])
        except TypeError as err:
            raise ValueError(f"bad object in scene dict: {err}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"scene JSON is not valid JSON: {err}") from None
        return cls.from_dict(data)


# -- rendering -----------------------------------------------------------------------------------
def _regular_star(points: int = 5, inner_ratio: float = 0.5) -> np.ndarray:
    # fatter than a regular pentagram (0.38) so the points survive 8 px renders
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner_ratio)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _raw_outline(shape: str) -> np.ndarray:
    if shape == "circle":
        a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], axis=1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    if shape == "diamond":
        return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], dtype=float)
    if shape == "triangle":  # equilateral, pointing up
        return np.array([[0, -np.sqrt(3) / 2], [1, np.sqrt(3) / 2], [-1, np.sqrt(3) / 2]])
    if shape == "cross":  # a plus sign with arms a third of its width
        a = 1 / 3
        return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                         [-a, a], [-1, a], [-1, -a], [-a, -a]], dtype=float)
    if shape == "star":
        return _regular_star()
    raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")


@lru_cache(maxsize=None)
def shape_outline(shape: str) -> np.ndarray:
    """Polygon ``[N, 2]`` (x, y; y down) with its bounding box centred on 0 and its largest side 1
    (aspect kept): scaled by an object's extent it is the object as rendered."""
    pts = _raw_outline(shape)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pts = (pts - (lo + hi) / 2) / (hi - lo).max()
    pts.setflags(write=False)
    return pts


SUBROWS = 8  # vertical samples per pixel row (coverage along each sample row is exact)


def polygon_coverage(vertices: np.ndarray, height: int, width: int, subrows: int = SUBROWS
                     ) -> np.ndarray:
    """Fraction of each pixel covered by a simple polygon (pixel coordinates, x right, y down),
    float32 ``[H, W]``.  Scanline antialiasing: the polygon's spans are intersected exactly with
    every pixel along ``subrows`` sample rows per pixel (even-odd rule)."""
    a = np.asarray(vertices, dtype=np.float64)
    b = np.concatenate([a[1:], a[:1]])
    ys = (np.arange(height * subrows) + 0.5) / subrows
    rows = np.flatnonzero((ys > a[:, 1].min()) & (ys < a[:, 1].max()))
    c0 = min(max(int(np.floor(a[:, 0].min())), 0), width)
    c1 = max(min(int(np.ceil(a[:, 0].max())), width), c0)
    cover = np.zeros((height * subrows, width), dtype=np.float32)
    if rows.size and c1 > c0:
        y = ys[rows, None]
        crosses = (a[:, 1] <= y) != (b[:, 1] <= y)  # half-open: a vertex is crossed once
        dy = np.where(b[:, 1] != a[:, 1], b[:, 1] - a[:, 1], 1.0)
        xs = np.where(crosses, a[:, 0] + (y - a[:, 1]) / dy * (b[:, 0] - a[:, 0]), np.inf)
        xs = np.sort(xs, axis=1)[:, : crosses.sum(axis=1).max()]  # unused slots stay inf
        starts, ends = xs[:, 0::2, None], xs[:, 1::2, None]  # [R, spans, 1]
        cols = np.arange(c0, c1)
        # length of [start, end] inside pixel column [j, j + 1]; inf..inf spans give 0
        cover[rows, c0:c1] = (np.clip(ends - cols, 0, 1) - np.clip(starts - cols, 0, 1)).sum(1)
    return cover.reshape(height, subrows, width).mean(axis=1)


def object_vertices(obj: ShapeObject, size: int) -> np.ndarray:
    """The object's polygon in pixel coordinates of a ``size x size`` image."""
    cell = size / GRID
    centre = np.array([obj.col + 0.5 + obj.dx, obj.row + 0.5 + obj.dy]) * cell
    return shape_outline(obj.shape) * obj.box_extent * cell + centre


def render_array(scene: Scene, size: int = 64) -> np.ndarray:
    """Render a square image, ``uint8 [size, size, 3]``."""
    if not isinstance(size, int) or size < 12:
        raise ValueError(f"image size must be an int >= 12 (a 3x3 grid of shapes), got {size!r}")
    background = np.asarray(BACKGROUND_RGB, dtype=np.float32)
    image = np.broadcast_to(background, (size, size, 3)).copy()
    for o in scene.objects:  # objects never overlap, so coverages simply add
        alpha = polygon_coverage(object_vertices(o, size), size, size)
        image += alpha[..., None] * (np.asarray(PALETTE[o.color], dtype=np.float32) - background)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render to a PIL RGB image."""
    return Image.fromarray(render_array(scene, size), mode="RGB")


def render_tensor(scene: Scene, size: int = 64) -> torch.Tensor:
    """Render to a float tensor ``[3, size, size]`` in ``[0, 1]``."""
    return torch.from_numpy(render_array(scene, size)).permute(2, 0, 1).float().div_(255)


# -- sampling ------------------------------------------------------------------------------------
ALL_CELLS: tuple[tuple[int, int], ...] = tuple((r, c) for r in range(GRID) for c in range(GRID))
REPEAT_KIND_PROB = 0.3  # reuse an earlier object's (color, shape): feeds counting captions
REPEAT_SHAPE_PROB = 0.15  # reuse an earlier object's shape in a new color


def _allowed(color: str, shape: str, cell: tuple[int, int]) -> bool:
    return (color, shape) not in HELDOUT_COLOR_SHAPE and (shape, cell) not in HELDOUT_SHAPE_CELL


def _make_object(rng: np.random.Generator, color: str, shape: str, cell: tuple[int, int]
                 ) -> ShapeObject:
    size = SIZES[rng.integers(len(SIZES))]
    lo, hi = SIZE_EXTENTS[size]
    extent, dx, dy = rng.uniform(lo, hi), rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER)
    return ShapeObject(shape, color, size, cell[0], cell[1], float(extent), float(dx), float(dy))


def _pick_kind(rng: np.random.Generator, earlier: list[ShapeObject], cell: tuple[int, int],
               restricted: bool) -> tuple[str, str]:
    """Choose (color, shape) for a new object; ``restricted`` excludes held-out compositions."""
    ok = (lambda c, s: _allowed(c, s, cell)) if restricted else (lambda c, s: True)
    u = rng.random()
    if earlier and u < REPEAT_KIND_PROB:
        kinds = [(o.color, o.shape) for o in earlier if ok(o.color, o.shape)]
        if kinds:
            return kinds[rng.integers(len(kinds))]
    if earlier and u < REPEAT_KIND_PROB + REPEAT_SHAPE_PROB:
        options = [(c, o.shape) for o in earlier for c in COLORS if c != o.color and ok(c, o.shape)]
        if options:
            return options[rng.integers(len(options))]
    options = [(c, s) for s in SHAPES for c in COLORS if ok(c, s)]
    return options[rng.integers(len(options))]


def sample_scene(rng: np.random.Generator, split: str = "train", max_objects: int = MAX_OBJECTS
                 ) -> Scene:
    """Draw a scene: 1..max_objects objects in distinct cells.  ``train``/``val`` never contain a
    held-out composition; ``heldout`` scenes contain at least one (their first object)."""
    _require(split, SPLITS, "split")
    if not 1 <= max_objects <= GRID * GRID:
        raise ValueError(f"max_objects must be in [1, {GRID * GRID}], got {max_objects}")
    n = int(rng.integers(1, max_objects + 1))
    order = [ALL_CELLS[i] for i in rng.permutation(len(ALL_CELLS))]
    objects: list[ShapeObject] = []
    if split == "heldout":
        if rng.random() < 0.5:
            color, shape = sorted(HELDOUT_COLOR_SHAPE)[rng.integers(len(HELDOUT_COLOR_SHAPE))]
            cell = order[0]
        else:
            shape, cell = sorted(HELDOUT_SHAPE_CELL)[rng.integers(len(HELDOUT_SHAPE_CELL))]
            color = COLORS[rng.integers(len(COLORS))]
        objects.append(_make_object(rng, color, shape, cell))
        order = [c for c in order if c != cell]
    for cell in order[: n - len(objects)]:
        color, shape = _pick_kind(rng, objects, cell, restricted=split != "heldout")
        objects.append(_make_object(rng, color, shape, cell))
    return Scene(objects)


# -- prompts: the grammar shared by captions and the checker's parser ----------------------------
@dataclass(frozen=True)
class ObjectSpec:
    """A noun phrase: ``count`` objects of ``shape`` (and ``color`` / ``size`` when given), all in
    ``cell`` when given.  Asserts that the image holds *exactly* ``count`` such objects (phrases
    listing one kind cell by cell are read together: :func:`unigen.data.checker.evaluate_query`)."""

    shape: str
    count: int = 1
    color: str | None = None
    size: str | None = None
    cell: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _require(self.shape, SHAPES, "shape")
        if self.color is not None:
            _require(self.color, COLORS, "color")
        if self.size is not None:
            _require(self.size, SIZES, "size")
        if not 1 <= self.count < len(NUMBER_WORDS):
            raise ValueError(f"count must be in [1, {len(NUMBER_WORDS) - 1}], got {self.count}")
        if self.cell is not None:
            _require(tuple(self.cell), ALL_CELLS, "cell")

    def matches(self, shape: str, color: str, size: str) -> bool:
        return (shape == self.shape and self.color in (None, color)
                and self.size in (None, size))

    def text(self) -> str:
        words = [w for w in (self.size, self.color) if w is not None]
        words.append(self.shape if self.count == 1 else PLURALS[self.shape])
        det = article(words[0]) if self.count == 1 else NUMBER_WORDS[self.count]
        out = " ".join([det, *words])
        return out if self.cell is None else f"{out} in the {position_name(*self.cell)}"


@dataclass(frozen=True)
class Relation:
    """``groups[subject] <relation> groups[object]`` holds for every pair of their objects."""

    subject: int
    relation: str
    object: int

    def __post_init__(self) -> None:
        _require(self.relation, tuple(RELATIONS), "relation")


@dataclass(frozen=True)
class SceneQuery:
    """What a prompt asserts: noun phrases (groups) and relations between them.

    GenEval-like category (first rule that applies):
    ``position`` if any group has a grid position or there is a relation; ``counting`` if any group
    counts two or more; ``attribute_binding`` if two or more groups carry a color or size;
    ``two_objects`` if there are two or more groups; ``colors`` if the single group carries a color
    or size; else ``single_object``."""

    groups: tuple[ObjectSpec, ...]
    relations: tuple[Relation, ...] = ()

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a scene query needs at least one noun phrase")
        for r in self.relations:
            if not (0 <= r.subject < len(self.groups) and 0 <= r.object < len(self.groups)):
                raise ValueError(f"relation {r} refers to a group that does not exist")

    @property
    def category(self) -> str:
        if self.relations or any(g.cell is not None for g in self.groups):
            return "position"
        if any(g.count >= 2 for g in self.groups):
            return "counting"
        attributed = sum(g.color is not None or g.size is not None for g in self.groups)
        if len(self.groups) >= 2:
            return "attribute_binding" if attributed >= 2 else "two_objects"
        return "colors" if attributed else "single_object"

    def text(self, prefix: str = "") -> str:
        """Canonical caption; relations are written ``<group 0> <relation> <group 1>``."""
        if self.relations:
            if len(self.groups) != 2 or len(self.relations) != 1 or self.relations[0].subject != 0:
                raise ValueError("only 'group 0 <relation> group 1' queries can be written as text")
            body = f"{self.groups[0].text()} {self.relations[0].relation} {self.groups[1].text()}"
        else:
            body = " and ".join(g.text() for g in self.groups)
        return f"{prefix} {body}" if prefix else body


# -- captions ------------------------------------------------------------------------------------
def _group_by(objects: Sequence[ShapeObject], key: Callable[[ShapeObject], tuple]
              ) -> list[list[ShapeObject]]:
    groups: dict[tuple, list[ShapeObject]] = {}
    for o in sorted(objects, key=lambda o: o.cell):  # reading order, top-left first
        groups.setdefault(key(o), []).append(o)
    return list(groups.values())


def _spec(objs: Sequence[ShapeObject], color: bool = True, size: bool = False, cell: bool = False
          ) -> ObjectSpec:
    o = objs[0]
    return ObjectSpec(o.shape, len(objs), o.color if color else None, o.size if size else None,
                      o.cell if cell else None)


def _kind(o: ShapeObject) -> tuple[str, str]:
    return (o.color, o.shape)


def _unique_kind_objects(scene: Scene) -> list[ShapeObject]:
    counts = Counter(_kind(o) for o in scene.objects)
    return [o for o in sorted(scene.objects, key=lambda o: o.cell) if counts[_kind(o)] == 1]


def _shuffled(rng: np.random.Generator, items: list) -> list:
    return [items[i] for i in rng.permutation(len(items))]


def _caption_list_all(scene: Scene, rng: np.random.Generator) -> SceneQuery | None:
    """Every object, grouped by kind: "two red circles and a small blue square"."""
    with_size = bool(rng.random() < 0.5)
    key = (lambda o: (o.size, o.color, o.shape)) if with_size else _kind
    groups = _shuffled(rng, _group_by(scene.objects, key))
    return SceneQuery(tuple(_spec(g, size=with_size) for g in groups))


def _caption_list_shapes(scene: Scene, rng: np.random.Generator) -> SceneQuery | None:
    """Every object by shape only: "a star and two circles"."""
    groups = _shuffled(rng, _group_by(scene.objects, lambda o: (o.shape,)))
    return SceneQuery(tuple(_spec(g, color=False) for g in groups))


def _caption_counting(scene: Scene, rng: np.random.Generator) -> SceneQuery | None:
    """One repeated kind, counted: "three magenta diamonds" / "two circles"."""
    options = [_spec(g) for g in _group_by(scene.objects, _kind) if len(g) > 1]
    options += [_spec(g, color=False) for g in _group_by(scene.objects, lambda o: (o.shape,))
                if len(g) > 1]
    return SceneQuery((options[rng.integers(len(options))],)) if options else None


def _caption_single(scene: Scene, rng: np.random.Generator) -> SceneQuery | None:
    """One object, with or without its color: "a red circle" / "a star"."""
    options = [_spec([o], size=bool(rng.random() < 0.3)) for o in _unique_kind_objects(scene)]
    options += [_spec(g, color=False) for g in _group_by(scene.objects, lambda o: (o.shape,))
                if len(g) == 1]
    return SceneQuery((options[rng.integers(len(options))],)) if options else None


def _caption_positions(scene: Scene, rng: np.random.Generator) -> SceneQuery | None:
    """One or two objects with their cells: "a small green star in the top left and ..."."""
    objs = _unique_kind_objects(scene)
    if not objs:
        return None
    k = min(len(objs), int(rng.integers(1, 3)))
    picked = [objs[i] for i in sorted(rng.choice(len(objs), size=k, replace=False))]
    with_size = bool(rng.random() < 0.5)
    return SceneQuery(tuple(_spec([o], size=with_size, cell=True) for o in picked))


def _caption_relation(scene: Scene, rng: np.random.Generator) -> SceneQuery | None:
    """Two kinds and a relation true for all their pairs: "two red circles above a blue square"."""
    with_color = bool(rng.random() < 0.75)
    key = _kind if with_color else (lambda o: (o.shape,))
    groups = _group_by(scene.objects, key)
    options = [(a, rel, b) for a in groups for b in groups if a is not b for rel, holds in
               RELATIONS.items() if all(holds(*x.cell, *y.cell) for x in a for y in b)]
    if not options:
        return None
    a, rel, b = options[rng.integers(len(options))]
    return SceneQuery((_spec(a, color=with_color), _spec(b, color=with_color)),
                      (Relation(0, rel, 1),))


CAPTION_TEMPLATES: dict[str, Callable[[Scene, np.random.Generator], SceneQuery | None]] = {
    "list_all": _caption_list_all,
    "list_shapes": _caption_list_shapes,
    "counting": _caption_counting,
    "single": _caption_single,
    "positions": _caption_positions,
    "relation": _caption_relation,
}
PREFIX_PROB = 0.25


def caption_queries(scene: Scene, rng: np.random.Generator) -> dict[str, SceneQuery]:
    """One query per template that applies to the scene (template name -> query)."""
    if not scene.objects:
        raise ValueError("cannot caption an empty scene")
    out = {}
    for name, template in CAPTION_TEMPLATES.items():
        query = template(scene, rng)
        if query is not None:
            out[name] = query
    return out


def _write(query: SceneQuery, rng: np.random.Generator) -> str:
    text = query.text()
    if rng.random() < PREFIX_PROB:
        prefixed = query.text(CAPTION_PREFIXES[rng.integers(len(CAPTION_PREFIXES))])
        if len(prefixed.split()) <= MAX_CAPTION_WORDS:
            text = prefixed
    return text


def description_query(scene: Scene) -> SceneQuery:
    """Every object in reading order with all its attributes, one noun phrase each."""
    if not scene.objects:
        raise ValueError("cannot describe an empty scene")
    return SceneQuery(tuple(_spec(g, size=True, cell=True)  # one group per object: cells differ
                            for g in _group_by(scene.objects, lambda o: o.cell)))


def description(scene: Scene) -> str:
    """The exhaustive, deterministic caption of a scene: "a small red circle in the top left and a
    large blue square in the center".  It states all four facts of every object (shape, color,
    size, cell), which no caption template does, so a captioner trained on it can reach full
    attribute recall.  Never truncated and not bound by ``MAX_CAPTION_WORDS`` (up to 35 words for 4
    objects): recipes that train on descriptions size ``max_text_len`` for them."""
    return description_query(scene).text()


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """One caption per applicable template (lowercase, single spaces, no punctuation)."""
    return [_write(q, rng) for q in caption_queries(scene, rng).values()]


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One caption from a template drawn uniformly among those that apply."""
    options = captions(scene, rng)
    return options[rng.integers(len(options))]


# -- question answering --------------------------------------------------------------------------
class QAPair(NamedTuple):
    question: str
    answer: str
    kind: str  # color, shape, size, position, count, exists, absent, relation


def _np(color: str | None, shape: str, size: str | None = None) -> str:
    return " ".join(w for w in (size, color, shape) if w)


def _near_misses(o: ShapeObject, present: set[tuple[str, str]], avoid: frozenset
                 ) -> list[tuple[str, str]]:
    """Absent kinds one attribute away from ``o``: the next free color, the next free shape."""
    recolored = [(COLORS[(COLORS.index(o.color) + k) % len(COLORS)], o.shape)
                 for k in range(1, len(COLORS))]
    reshaped = [(o.color, SHAPES[(SHAPES.index(o.shape) + k) % len(SHAPES)])
                for k in range(1, len(SHAPES))]
    out = []
    for candidates in (recolored, reshaped):
        free = [kind for kind in candidates if kind not in present and kind not in avoid]
        out += free[:1]
    return out


def qa_items(scene: Scene) -> list[QAPair]:
    """Every question with an unambiguous answer, in a fixed order (answers are 1-2 words).

    Negative questions never name a held-out (color, shape) pair unless the scene holds one, so the
    train/val text never mentions a held-out composition."""
    objs = sorted(scene.objects, key=lambda o: o.cell)
    if not objs:
        raise ValueError("cannot ask questions about an empty scene")
    by_shape = Counter(o.shape for o in objs)
    by_color = Counter(o.color for o in objs)
    by_kind = Counter(_kind(o) for o in objs)
    by_size_shape = Counter((o.size, o.shape) for o in objs)
    unique = [o for o in objs if by_kind[_kind(o)] == 1]
    items: list[QAPair] = []
    for o in objs:
        if by_shape[o.shape] == 1:
            items.append(QAPair(f"what color is the {o.shape}?", o.color, "color"))
        elif by_size_shape[(o.size, o.shape)] == 1:
            items.append(QAPair(f"what color is the {o.size} {o.shape}?", o.color, "color"))
        if by_color[o.color] == 1:
            items.append(QAPair(f"what shape is the {o.color} object?", o.shape, "shape"))
    for o in unique:
        items.append(QAPair(f"what size is the {_np(o.color, o.shape)}?", o.size, "size"))
        items.append(QAPair(f"where is the {_np(o.color, o.shape)}?", o.position, "position"))
    items.append(QAPair("how many objects are there?", NUMBER_WORDS[len(objs)], "count"))
    absent = [s for s in SHAPES if s not in by_shape]
    if absent:  # one absent shape, chosen from the scene itself so the list stays deterministic
        zero = absent[sum(r * GRID + c for r, c in (o.cell for o in objs)) % len(absent)]
        items.append(QAPair(f"how many {PLURALS[zero]} are there?", NUMBER_WORDS[0], "count"))
    for shape, n in sorted(by_shape.items(), key=lambda kv: SHAPES.index(kv[0])):
        items.append(QAPair(f"how many {PLURALS[shape]} are there?", NUMBER_WORDS[n], "count"))
    for (color, shape), n in sorted(by_kind.items()):
        items.append(QAPair(f"how many {color} {PLURALS[shape]} are there?", NUMBER_WORDS[n],
                            "count"))
        items.append(QAPair(f"is there {article(color)} {color} {shape}?", "yes", "exists"))
    present = set(by_kind)
    avoid = frozenset() if present & HELDOUT_COLOR_SHAPE else HELDOUT_COLOR_SHAPE
    misses = sorted({k for o in objs for k in _near_misses(o, present, avoid)})
    for color, shape in misses:
        items.append(QAPair(f"is there {article(color)} {color} {shape}?", "no", "absent"))
    for ref in unique:
        for rel, holds in RELATIONS.items():
            hits = [o for o in objs if o is not ref and holds(*o.cell, *ref.cell)]
            if len(hits) == 1:
                items.append(QAPair(f"which shape is {rel} the {_np(ref.color, ref.shape)}?",
                                    hits[0].shape, "relation"))
    return items


def qa_pairs(scene: Scene) -> list[tuple[str, str]]:
    """``[(question, answer), ...]``: see :func:`qa_items`."""
    return [(q.question, q.answer) for q in qa_items(scene)]


def pick_qa(scene: Scene, rng: np.random.Generator) -> QAPair:
    """A question kind drawn uniformly, then a question of that kind (balances yes/no, counts)."""
    items = qa_items(scene)
    kinds = sorted({q.kind for q in items})
    kind = kinds[rng.integers(len(kinds))]
    options = [q for q in items if q.kind == kind]
    return options[rng.integers(len(options))]


# -- text vocabulary -----------------------------------------------------------------------------
WORD_PATTERN = re.compile(r"\w+|[^\w\s]+")  # what a word-level tokenizer should split on


def vocabulary_words() -> list[str]:
    """Every word (and the ``?`` of questions) that captions, questions and answers can contain."""
    words = {"a", "an", "and", "in", "the", "of", *NUMBER_WORDS, *COLORS, *SHAPES,
             *PLURALS.values(), *SIZES, *ROWS, *COLS, "yes", "no", "?",
             "what", "color", "shape", "size", "is", "object", "objects", "where", "how", "many",
             "are", "there", "which"}
    for phrase in (*RELATIONS, *CAPTION_PREFIXES):
        words.update(phrase.split())
    return sorted(words)


# -- data sets -----------------------------------------------------------------------------------
TASK_TEXTS = ("all", "caption", "qa")


class ShapesWorld:
    """Sample ``index`` of a split as a pure function of ``(seed, split, index)``: no files, no
    limit on the number of samples.

    Independent random streams (numpy ``SeedSequence([seed, split_id, index, stream])``) feed the
    scene, the caption choice and the question choice, so changing how captions are drawn never
    changes the images."""

    def __init__(self, split: str = "train", seed: int = 0) -> None:
        _require(split, SPLITS, "split")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.split, self.seed = split, seed

    def rng(self, index: int, stream: int) -> np.random.Generator:
        if index < 0:
            raise IndexError(f"sample index must be non-negative, got {index}")
        return np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index, stream])

    def scene(self, index: int) -> Scene:
        return sample_scene(self.rng(index, 0), self.split)

    def caption(self, index: int, scene: Scene | None = None) -> str:
        return caption(self.scene(index) if scene is None else scene, self.rng(index, 1))

    def qa(self, index: int, scene: Scene | None = None) -> QAPair:
        return pick_qa(self.scene(index) if scene is None else scene, self.rng(index, 2))


class ShapesDataset(Dataset):
    """Torch data set over a :class:`ShapesWorld` split.

    ``task_text``: ``"all"`` gives caption, description and QA pair; ``"caption"`` leaves
    question/answer empty strings; ``"qa"`` leaves caption and description empty (skipping the text
    that is not needed).
    Items: ``image`` float ``[3, H, W]`` in [0, 1], ``caption`` (a template caption),
    ``description`` (:func:`description`), ``question``, ``answer``, ``scene`` (JSON), ``index``."""

    def __init__(self, split: str = "train", num_samples: int = 1000, image_size: int = 64,
                 seed: int = 0, task_text: str = "all") -> None:
        _require(task_text, TASK_TEXTS, "task_text")
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.world = ShapesWorld(split, seed)
        self.num_samples, self.image_size, self.task_text = num_samples, image_size, task_text
        render_array(Scene(), image_size)  # validate the size now rather than in a worker

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        scene = self.world.scene(index)
        with_caption = self.task_text in ("all", "caption")
        cap = self.world.caption(index, scene) if with_caption else ""
        desc = description(scene) if with_caption else ""
        q, a = self.world.qa(index, scene)[:2] if self.task_text in ("all", "qa") else ("", "")
        return {"image": render_tensor(scene, self.image_size), "caption": cap, "description": desc,
                "question": q, "answer": a, "scene": scene.to_json(), "index": index}


def corpus(split: str = "train", num_samples: int = 1000, seed: int = 0,
           scenes: Callable[[Iterable[int]], Iterable[int]] = iter) -> Iterator[str]:
    """Every caption template's caption, the description, every question and every answer of the
    first ``num_samples`` scenes of a split: the text to train a text tokenizer on.  ``scenes``
    wraps the scene indices (``tqdm`` for a progress bar)."""
    world = ShapesWorld(split, seed)
    for i in scenes(range(num_samples)):
        scene = world.scene(i)
        yield from captions(scene, world.rng(i, 1))
        yield description(scene)
        for q, a in qa_pairs(scene):
            yield q
            yield a
