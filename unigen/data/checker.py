"""Pixel checker for the shapes world: what objects does an image show, and does it match a prompt?

A GenEval-style evaluator (Ghosh et al., 2023) for :mod:`unigen.data.shapes`, working on pixels
only, never on a generator's internals:

1. **Color segmentation.**  On a black background a (possibly antialiased) pixel is
   ``alpha * color``; for every palette color the best ``alpha`` is the projection onto the color's
   line and the residual is the distance to it.  A pixel takes the color with the smallest
   residual, and is kept if that color covers it at least half (``alpha >= 0.5``) and the
   residual is small.
2. **Connected components** (4-neighbour, same color), tiny ones dropped as noise.
3. **Shape descriptors.**  Every shape's rendering model (upright outline, extent, centre) is
   fitted to the component's antialiased coverage by its moments (mass -> extent, centroid ->
   centre) and scored by soft IoU; the best names the shape (``unknown`` below
   ``min_shape_score``), and its extent and centre give the size class and grid cell.  Using the
   soft coverage rather than a thresholded mask is what makes 8-pixel shapes recognisable.

Prompts are parsed by :func:`parse_caption` into a :class:`~unigen.data.shapes.SceneQuery` and
checked fact by fact (:func:`evaluate_query`); a :class:`~unigen.data.shapes.Scene` is checked
exhaustively, object by object (:func:`check_scene`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from unigen.data.shapes import (
    BACKGROUND_RGB, CAPTION_PREFIXES, COLORS, COLS, GRID, NUMBER_WORDS, PALETTE,
    PLURALS, RELATIONS, ROWS, SHAPES, SIZE_THRESHOLD, SIZES, ObjectSpec, Relation, Scene,
    SceneQuery, ShapeObject, object_vertices, polygon_coverage, shape_outline,
)

MIN_ALPHA = 0.5  # a pixel at least half covered belongs to the object
MAX_RESIDUAL = 48.0  # RGB distance to the nearest color line; lines are >= 64 apart at alpha 0.5
MIN_AREA_FRACTION = 0.02  # components smaller than this fraction of a cell are noise
FIT_BLURS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # Gaussian sigmas (px) tried on each model
FIT_MARGIN = 3  # pixels around a component's box that may hold its faint (blurred) edges
MIN_SHAPE_SCORE = 0.5  # soft IoU below which even the best shape model does not fit the object
# the world draws objects up to 0.8 of a cell: a fitted extent a quarter beyond that (a colour
# flooding the frame, a background) is no object of the world, whatever shape fits it best
MAX_EXTENT = 1.0  # in cells
SCENE_CATEGORY = "scene"  # category of an exhaustive scene check (not a GenEval prompt category)


@dataclass(frozen=True)
class Detection:
    """An object found in the pixels; ``bbox`` is ``(x0, y0, x1, y1)`` with exclusive ends."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    bbox: tuple[int, int, int, int]
    area: int
    shape_score: float = 1.0  # soft IoU of the fitted shape model

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)


@dataclass(frozen=True)
class Fact:
    """One checked assertion, e.g. ``Fact("color", "a red circle", True)``."""

    attribute: str
    subject: str
    holds: bool


@dataclass
class CheckResult:
    """``attributes``: attribute name -> all of its facts hold; ``correct``: all attributes hold.
    ``named``: the objects the prompt (or scene) names, so ``unrequested`` / ``exact`` can tell a
    right image from one that also shows objects nobody asked for, which a GenEval-style verdict
    does not mind (a fixed image showing every held-out kind once passes every single-object and
    two-object prompt of them)."""

    correct: bool
    attributes: dict[str, bool]
    category: str
    facts: list[Fact] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    named: int | None = None

    @property
    def unrequested(self) -> bool | None:
        """More objects detected than named (None when ``named`` is unknown)."""
        return None if self.named is None else len(self.detections) > self.named

    @property
    def exact(self) -> bool:
        """Correct, and nothing else in the image: as many objects detected as named."""
        return self.correct and self.named is not None and len(self.detections) == self.named


# -- image input ---------------------------------------------------------------------------------
def to_rgb_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """PIL RGB, ``uint8 [H, W, 3]`` or a float tensor ``[3, H, W]`` in [0, 1] -> ``uint8``
    ``[H, W, 3]``."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
        return np.asarray(image)
    if torch.is_tensor(image):
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError("a tensor image must be float [3, H, W] in [0, 1], got "
                             f"{image.dtype} {tuple(image.shape)}")
        arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        return arr.permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a numpy image must be uint8 [H, W, 3], got {image.dtype} "
                             f"{image.shape}")
        return image
    raise TypeError(f"expected a PIL image, numpy array or tensor, got {type(image).__name__}")


# -- segmentation --------------------------------------------------------------------------------
_LINES = np.array([PALETTE[c] for c in COLORS], dtype=np.float32) - np.float32(BACKGROUND_RGB)


def fit_color_lines(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For RGB pixels ``[..., 3]`` (uint8 or float): coverage ``alpha`` of every palette color
    (projection onto the background->color line, clipped to [0, 1]) and the residual distance to
    that line, both ``[..., K]``."""
    p = np.asarray(pixels, dtype=np.float32) - np.float32(BACKGROUND_RGB)
    alpha = np.clip(p @ _LINES.T / (_LINES**2).sum(1), 0.0, 1.0)
    residual = np.linalg.norm(p[..., None, :] - alpha[..., None] * _LINES, axis=-1)
    return alpha, residual


def segment_colors(rgb: np.ndarray, min_alpha: float = MIN_ALPHA,
                   max_residual: float = MAX_RESIDUAL) -> np.ndarray:
    """Palette index per pixel (``int64 [H, W]``), -1 for background or unclassifiable pixels.
    The color is chosen by residual *before* the coverage test: a faint yellow edge pixel must not
    pass as a half-covered orange one."""
    p = rgb.reshape(-1, 3).astype(np.float32)
    labels = np.full(len(p), -1, dtype=np.int64)
    # alpha >= min_alpha on a line needs |p - bg| >= min_alpha * |line|: skip the dark majority
    reach = min_alpha * np.linalg.norm(_LINES, axis=1).min()
    lit = np.flatnonzero(np.linalg.norm(p - np.float32(BACKGROUND_RGB), axis=1) >= reach)
    alpha, residual = fit_color_lines(p[lit])  # [N, K]
    best = residual.argmin(axis=1)
    pick = np.arange(len(lit))
    ok = (alpha[pick, best] >= min_alpha) & (residual[pick, best] <= max_residual)
    labels[lit[ok]] = best[ok]
    return labels.reshape(rgb.shape[:2])


def connected_components(labels: np.ndarray) -> np.ndarray:
    """4-connected components of equal non-negative labels: ``[H, W]`` ids, -1 for background.
    Min-label propagation with pointer jumping, vectorised (no SciPy needed)."""
    h, w = labels.shape
    fg = labels >= 0
    none = h * w
    comp = np.where(fg, np.arange(h * w).reshape(h, w), none)
    link_x = fg[:, 1:] & (labels[:, 1:] == labels[:, :-1])  # (i, j) ~ (i, j + 1)
    link_y = fg[1:, :] & (labels[1:, :] == labels[:-1, :])  # (i, j) ~ (i + 1, j)
    while True:
        new = comp.copy()
        np.minimum(new[:, 1:], np.where(link_x, comp[:, :-1], none), out=new[:, 1:])
        np.minimum(new[:, :-1], np.where(link_x, comp[:, 1:], none), out=new[:, :-1])
        np.minimum(new[1:, :], np.where(link_y, comp[:-1, :], none), out=new[1:, :])
        np.minimum(new[:-1, :], np.where(link_y, comp[1:, :], none), out=new[:-1, :])
        flat = new.reshape(-1)
        inside = flat < none
        flat[inside] = flat[flat[inside]]  # jump to the root's current label
        if np.array_equal(new, comp):
            break
        comp = new
    ids = np.full(h * w, -1, dtype=np.int64)
    ids[fg.reshape(-1)] = np.unique(comp[fg], return_inverse=True)[1]
    return ids.reshape(h, w)


# -- shape descriptors ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeFit:
    """A shape's rendering model fitted to an object's coverage: ``extent`` (largest box side) and
    box centre ``(cx, cy)`` in pixels; ``score`` is the soft IoU of model and coverage."""

    shape: str
    score: float
    extent: float
    cx: float
    cy: float


@lru_cache(maxsize=None)
def _outline_moments(shape: str) -> tuple[float, np.ndarray]:
    """Area and area centroid (relative to the box centre) of a unit-extent outline (shoelace)."""
    p = shape_outline(shape)
    q = np.roll(p, -1, axis=0)
    cross = p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]
    area = cross.sum() / 2
    return abs(float(area)), ((p + q) * cross[:, None]).sum(0) / (6 * area)


def _soft_moments(alpha: np.ndarray) -> tuple[float, np.ndarray]:
    ys, xs = np.indices(alpha.shape)
    mass = float(alpha.sum())
    centroid = np.array([(alpha * (xs + 0.5)).sum(), (alpha * (ys + 0.5)).sum()])  # pixel centres
    return mass, centroid / max(mass, 1e-6)


@lru_cache(maxsize=256)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``[n, n]`` Gaussian blur along one axis (zero outside the crop)."""
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    k = np.exp(-0.5 * (d / sigma) ** 2)
    return (k / k.sum(axis=0, keepdims=True)).astype(np.float32)


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


def fit_shape(alpha: np.ndarray, blurs: Sequence[float] = FIT_BLURS) -> ShapeFit:
    """Best shape for one object's coverage map ``alpha`` (``float [h, w]`` in [0, 1], the object
    alone, with a margin of background around it).

    For every shape, its rendering model (outline x extent + centre) is fitted by moments: the
    coverage mass gives the extent, the coverage centroid the centre (the renderer's coverage is
    exact, so no iterative refinement is needed).  The model, optionally blurred by a Gaussian of
    each ``blurs`` sigma (generators and image tokenizers soften edges), is scored by soft IoU
    ``sum(min(alpha, model)) / sum(max(alpha, model))``: antialiased edges carry the sub-pixel
    evidence that tells an 8-pixel star from a diamond."""
    h, w = alpha.shape
    mass, centroid = _soft_moments(alpha)
    best = ShapeFit("unknown", -1.0, 0.0, 0.0, 0.0)
    for shape in SHAPES:
        area, offset = _outline_moments(shape)
        extent = float(np.sqrt(mass / area))
        cx, cy = centroid - extent * offset
        model = polygon_coverage(shape_outline(shape) * extent + [cx, cy], h, w)
        score = max(_soft_iou(alpha, model if sigma == 0 else
                              _blur_matrix(h, sigma) @ model @ _blur_matrix(w, sigma).T)
                    for sigma in blurs)
        if score > best.score:
            best = ShapeFit(shape, score, extent, float(cx), float(cy))
    return best


def grow_components(comps: np.ndarray, steps: int) -> np.ndarray:
    """Grow every component ``steps`` pixels (8-neighbour) into the background; a pixel reached
    by two components at once is contested (-2) and stops growth.  Returns the grown ids."""
    ids = comps.copy()
    h, w = ids.shape
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for _ in range(steps):
        padded = np.pad(ids, 1, constant_values=-1)
        neighbours = np.stack([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in shifts])
        owned = neighbours >= 0
        lo = np.where(owned, neighbours, np.iinfo(np.int64).max).min(axis=0)
        hi = np.where(owned, neighbours, -1).max(axis=0)
        free = (ids == -1) & owned.any(axis=0)
        ids = np.where(free, np.where(lo == hi, lo, -2), ids)
    return ids


def _object_alpha(rgb: np.ndarray, comps: np.ndarray, k: int, color: int,
                  box: tuple[int, int, int, int], max_residual: float) -> np.ndarray:
    """Coverage of palette color ``color`` in ``box``, kept only where it can come from
    component ``k``: its own pixels and the faint edge pixels around it that lie in its territory
    (:func:`grow_components`) and are closest to its color line (not another object's edge)."""
    x0, y0, x1, y1 = box
    m = FIT_MARGIN  # neighbours just outside the box must be seen to claim their territory
    h, w = comps.shape
    cx0, cy0, cx1, cy1 = max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, w), min(y1 + m, h)
    territory = grow_components(comps[cy0:cy1, cx0:cx1], m)[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
    alphas, residuals = fit_color_lines(rgb[y0:y1, x0:x1])  # [h, w, K]
    keep = ((territory == k) & (residuals.argmin(axis=-1) == color)
            & (residuals[..., color] <= max_residual))
    return np.where(keep, alphas[..., color], 0.0).astype(np.float32)


def detect(image: Image.Image | np.ndarray | torch.Tensor, *, min_alpha: float = MIN_ALPHA,
           max_residual: float = MAX_RESIDUAL, min_area_fraction: float = MIN_AREA_FRACTION,
           min_shape_score: float = MIN_SHAPE_SCORE) -> list[Detection]:
    """Objects in an image, in reading order (top-left first).  Size and cell come from the fitted
    shape model (extent vs ``SIZE_THRESHOLD``, box centre), not from the thresholded mask."""
    rgb = to_rgb_array(image)
    h, w = rgb.shape[:2]
    if h != w:
        raise ValueError(f"the shapes checker reads square images, got {h}x{w}")
    cell = h / GRID
    labels = segment_colors(rgb, min_alpha, max_residual)
    comps = connected_components(labels)
    areas = np.bincount(comps[comps >= 0], minlength=1)
    min_area = max(2.0, min_area_fraction * cell * cell)
    out = []
    for k in np.flatnonzero(areas >= min_area):
        ys, xs = np.nonzero(comps == k)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        m = FIT_MARGIN
        region = (max(bbox[0] - m, 0), max(bbox[1] - m, 0), min(bbox[2] + m, w),
                  min(bbox[3] + m, h))
        color = int(labels[ys[0], xs[0]])
        fit = fit_shape(_object_alpha(rgb, comps, k, color, region, max_residual))
        cx, cy = fit.cx + region[0], fit.cy + region[1]
        extent = fit.extent / cell
        out.append(Detection(
            shape=fit.shape if fit.score >= min_shape_score and extent <= MAX_EXTENT else "unknown",
            color=COLORS[color],
            size="large" if extent > SIZE_THRESHOLD else "small",
            row=min(max(int(cy / cell), 0), GRID - 1), col=min(max(int(cx / cell), 0), GRID - 1),
            bbox=bbox, area=int(areas[k]), shape_score=fit.score))
    return sorted(out, key=lambda d: (d.row, d.col, d.bbox))


def scene_detections(scene: Scene, image_size: int = 64) -> list[Detection]:
    """The detections a perfect detector would return for ``scene`` (for symbolic checks)."""
    out = []
    for o in scene.objects:
        v = object_vertices(o, image_size)
        x0, y0 = np.floor(v.min(0)).astype(int)
        x1, y1 = np.ceil(v.max(0)).astype(int)
        area = _outline_moments(o.shape)[0] * (o.box_extent * image_size / GRID) ** 2
        out.append(Detection(o.shape, o.color, o.size, o.row, o.col,
                             (int(x0), int(y0), int(x1), int(y1)), round(area)))
    return out


# -- prompt parsing ------------------------------------------------------------------------------
_COUNT_WORDS = {"a": 1, "an": 1, **{w: i for i, w in enumerate(NUMBER_WORDS) if i > 0}}
_SINGULAR = {p: s for s, p in PLURALS.items()}


class _Words:
    """A cursor over a caption's words with error messages that say where parsing failed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.words = text.split()
        self.i = 0

    def peek(self, k: int = 0) -> str | None:
        return self.words[self.i + k] if self.i + k < len(self.words) else None

    def accept(self, phrase: str) -> bool:
        parts = phrase.split()
        if self.words[self.i:self.i + len(parts)] == parts:
            self.i += len(parts)
            return True
        return False

    def fail(self, expected: str) -> ValueError:
        got = f"{self.peek()!r} (word {self.i + 1})" if self.peek() else "the end of the text"
        return ValueError(f"cannot parse caption {self.text!r}: expected {expected}, got {got}")


def _parse_position(words: _Words) -> tuple[int, int]:
    if words.accept("center"):
        return (1, 1)
    row, col = words.peek(), words.peek(1)
    if row in ROWS and col in COLS and (row, col) != ("middle", "center"):
        words.i += 2
        return (ROWS.index(row), COLS.index(col))
    raise words.fail("a position ('center' or a row and a column, e.g. 'top left')")


def _parse_noun_phrase(words: _Words) -> ObjectSpec:
    det = words.peek()
    if det not in _COUNT_WORDS:
        raise words.fail("'a', 'an' or a number word")
    words.i += 1
    count = _COUNT_WORDS[det]
    size = words.peek() if words.peek() in SIZES else None
    words.i += size is not None
    color = words.peek() if words.peek() in COLORS else None
    words.i += color is not None
    noun = words.peek()
    if count == 1 and noun in SHAPES:
        shape = noun
    elif count > 1 and noun in _SINGULAR:
        shape = _SINGULAR[noun]
    else:
        raise words.fail(f"a {'singular' if count == 1 else 'plural'} shape noun after {det!r}")
    words.i += 1
    cell = _parse_position(words) if words.accept("in the") else None
    return ObjectSpec(shape, count, color, size, cell)


def normalize_caption(text: str) -> str:
    """Lowercase, single spaces, no trailing period: the form the templates produce."""
    return " ".join(text.lower().strip().rstrip(".").split())


def parse_caption(text: str) -> SceneQuery:
    """Parse a caption of the shapes grammar into the facts it asserts.

    Grammar: ``[prefix] np (("and" np)* | relation np)`` with
    ``np = det [size] [color] shape ["in the" position]``, ``det`` = a/an/one..nine (a plural noun
    after two or more), ``relation`` = to the left of / to the right of / above / below.
    Raises ``ValueError`` naming the first word that does not fit."""
    if not isinstance(text, str):
        raise TypeError(f"caption must be a str, got {type(text).__name__}")
    words = _Words(normalize_caption(text))
    if not words.words:
        raise ValueError("cannot parse an empty caption")
    for prefix in CAPTION_PREFIXES:
        if words.accept(prefix):
            break
    groups = [_parse_noun_phrase(words)]
    relations: list[Relation] = []
    relation = next((r for r in RELATIONS if words.accept(r)), None)
    if relation is not None:
        groups.append(_parse_noun_phrase(words))
        relations.append(Relation(0, relation, 1))
    else:
        while words.accept("and"):
            groups.append(_parse_noun_phrase(words))
    if words.peek() is not None:
        raise words.fail("'and', a relation or the end of the caption")
    return SceneQuery(tuple(groups), tuple(relations))


def prompt_category(query: SceneQuery | str) -> str:
    """GenEval-like category of a prompt (rules in :class:`~unigen.data.shapes.SceneQuery`)."""
    return (parse_caption(query) if isinstance(query, str) else query).category


# -- checking ------------------------------------------------------------------------------------
def _matches(spec: ObjectSpec, detections: Sequence[Detection]) -> list[Detection]:
    return [d for d in detections if spec.matches(d.shape, d.color, d.size)]


def _listed(query: SceneQuery, g: ObjectSpec) -> list[ObjectSpec]:
    """The phrases read together with ``g``: every phrase of the query with g's shape, color and
    size that, like g, names a cell, or like g names none (g included).  "a red circle and a red
    circle" asks for two red circles, as "a red circle in the top left and a red circle in the
    top right" does."""
    kind = (g.shape, g.color, g.size)
    return [h for h in query.groups
            if (h.cell is None) == (g.cell is None) and (h.shape, h.color, h.size) == kind]


def _phrase_facts(query: SceneQuery, g: ObjectSpec, detections: Sequence[Detection]
                  ) -> list[Fact]:
    """The facts of the query's phrase ``g`` (:func:`evaluate_query`)."""
    name = g.text()
    same_shape = [d for d in detections if d.shape == g.shape]
    hits = _matches(g, detections)
    listed = _listed(query, g)
    facts = [Fact("object_present", name, bool(same_shape))]
    if g.color is not None:
        facts.append(Fact("color", name, any(d.color == g.color for d in same_shape)))
    if g.size is not None:
        sized = ObjectSpec(g.shape, color=g.color, size=g.size)
        facts.append(Fact("size", name, bool(_matches(sized, detections))))
    facts.append(Fact("count", name, len(hits) == sum(h.count for h in listed)))
    if g.cell is not None:
        cells = {h.cell for h in listed}
        in_cell = sum(d.cell == g.cell for d in hits)
        facts.append(Fact("position", name, bool(hits) and all(d.cell in cells for d in hits)
                          and (len(listed) == 1 or in_cell == g.count)))
    return facts


def evaluate_query(query: SceneQuery, detections: Sequence[Detection]) -> list[Fact]:
    """Facts of a query, each checked against detections.  Per noun phrase ``g``:

    * ``object_present``: some object has g's shape;
    * ``color`` (if g names one): some object has g's shape and color;
    * ``size`` (if g names one): some object has g's shape, color (if named) and size;
    * ``count``: exactly ``g.count`` objects match all of g's attributes;
    * ``position`` (if g names a cell): g's matches exist and all lie in that cell.

    Phrases that list one kind cell by cell ("a small red circle in the top left and a small red
    circle in the top right": same shape, color and size, each naming a cell) are read together:
    ``count`` is their summed count, and ``position`` says that every match lies in one of their
    cells and g's cell holds ``g.count`` of them.  A kind named in one cell only keeps the reading
    above.  Phrases of one kind naming no cell ("a red circle and a red circle") are read together
    for ``count`` the same way.

    Per relation: both sides have matches and the relation holds for every pair of two distinct
    objects (grid columns for left/right, grid rows for above/below); between two phrases of one
    kind ("a red circle above a red circle") for some such pair."""
    facts = [f for g in query.groups for f in _phrase_facts(query, g, detections)]
    for r in query.relations:
        a, b = _matches(query.groups[r.subject], detections), _matches(query.groups[r.object],
                                                                       detections)
        holds = RELATIONS[r.relation]
        # two objects at least: "a circle above a circle" is not true of one circle; between two
        # phrases of one kind every object is on both sides, so some pair must hold, not all
        pairs = [(x, y) for x in a for y in b if x is not y]
        same_kind = a == b
        ok = bool(pairs) and (any if same_kind else all)(holds(*x.cell, *y.cell) for x, y in pairs)
        facts.append(Fact("relation", f"{query.groups[r.subject].text()} {r.relation} "
                                      f"{query.groups[r.object].text()}", ok))
    return facts


def _summarise(facts: list[Fact], category: str, detections: list[Detection], named: int
               ) -> CheckResult:
    attributes: dict[str, bool] = {}
    for f in facts:
        attributes[f.attribute] = attributes.get(f.attribute, True) and f.holds
    return CheckResult(all(attributes.values()), attributes, category, facts, detections, named)


_OBJECT_ATTRIBUTES = ("shape", "color", "size", "position")
_MISSING_COST = len(_OBJECT_ATTRIBUTES) + 1  # leaving an object unmatched is worse than any match


def _mismatches(o: ShapeObject, d: Detection) -> list[str]:
    return [a for a, same in zip(_OBJECT_ATTRIBUTES, (o.shape == d.shape, o.color == d.color,
                                                       o.size == d.size, o.cell == d.cell))
            if not same]


def match_objects(objects: Sequence[ShapeObject], detections: Sequence[Detection]
                  ) -> list[int | None]:
    """Assignment of scene objects to distinct detections (index or None) minimising attribute
    mismatches.  Exact: an optimal assignment only uses each object's ``len(objects)`` cheapest
    detections, and scenes hold few objects."""
    n = len(objects)
    cost = [[len(_mismatches(o, d)) + 0.01 * (abs(o.row - d.row) + abs(o.col - d.col))
             for d in detections] for o in objects]
    options = [sorted(range(len(detections)), key=row.__getitem__)[:n] + [None] for row in cost]
    best, best_cost = [None] * n, float("inf")
    for choice in itertools.product(*options):
        taken = [j for j in choice if j is not None]
        if len(taken) != len(set(taken)):
            continue
        total = sum(_MISSING_COST if j is None else cost[i][j] for i, j in enumerate(choice))
        if total < best_cost:
            best, best_cost = list(choice), total
    return best


def check_scene(image: Image.Image | np.ndarray | torch.Tensor | None, scene: Scene,
                detections: list[Detection] | None = None) -> CheckResult:
    """Exhaustive check: the image (or its precomputed ``detections``, then ``image`` may be None)
    shows exactly the scene's objects.  Objects are matched to
    detections (:func:`match_objects`); attributes ``object_present`` (every object matched),
    ``shape``/``color``/``size``/``position`` (over matched pairs) and ``count`` (as many
    detections as objects)."""
    dets = detect(image) if detections is None else detections
    facts = [Fact("count", f"{len(scene.objects)} objects", len(dets) == len(scene.objects))]
    for o, j in zip(scene.objects, match_objects(scene.objects, dets)):
        name = f"{o.size} {o.color} {o.shape} in the {o.position}"
        facts.append(Fact("object_present", name, j is not None))
        if j is not None:
            wrong = _mismatches(o, dets[j])
            facts += [Fact(a, name, a not in wrong) for a in _OBJECT_ATTRIBUTES]
    return _summarise(facts, SCENE_CATEGORY, dets, len(scene.objects))


def check(image: Image.Image | np.ndarray | torch.Tensor, target: Scene | SceneQuery | str
          ) -> CheckResult:
    """Check an image against a scene (exhaustive), a parsed query or a caption (its facts)."""
    if isinstance(target, Scene):
        return check_scene(image, target)
    query = parse_caption(target) if isinstance(target, str) else target
    if not isinstance(query, SceneQuery):
        raise TypeError(f"check target must be a Scene, SceneQuery or str, got "
                        f"{type(target).__name__}")
    dets = detect(image)
    return _summarise(evaluate_query(query, dets), query.category, dets, named_objects(query))


def named_objects(query: SceneQuery | str) -> int:
    """How many objects a prompt names (each phrase's count)."""
    query = parse_caption(query) if isinstance(query, str) else query
    return sum(g.count for g in query.groups)


# -- caption metrics -----------------------------------------------------------------------------
def caption_fact_precision(caption: str, scene: Scene) -> float:
    """Fraction of the caption's facts (:func:`evaluate_query`) true of the scene; 0.0 if the
    caption does not parse (a caption outside the grammar asserts nothing checkable)."""
    try:
        query = parse_caption(caption)
    except ValueError:
        return 0.0
    facts = evaluate_query(query, scene_detections(scene))
    return sum(f.holds for f in facts) / len(facts)


def caption_attribute_recall(caption: str, scene: Scene) -> float:
    """Fraction of the scene's attribute facts the caption states correctly.

    The scene has four facts per object: its shape, color, size and cell.  A noun phrase ``g`` of
    the caption states, for every object it matches (in its cell, if it names one), the shape and
    whichever of color/size/cell it names, but only if all of g's own facts hold (a wrong count or
    cell voids the phrase).  0.0 if the caption does not parse."""
    if not scene.objects:
        raise ValueError("attribute recall is undefined for an empty scene")
    try:
        query = parse_caption(caption)
    except ValueError:
        return 0.0
    dets = scene_detections(scene)
    stated: set[tuple[int, str]] = set()
    for g in query.groups:
        if not all(f.holds for f in _phrase_facts(query, g, dets)):
            continue
        named = {"shape", *(a for a, v in (("color", g.color), ("size", g.size),
                                          ("position", g.cell)) if v is not None)}
        for i, d in enumerate(dets):
            if g.matches(d.shape, d.color, d.size) and g.cell in (None, d.cell):
                stated.update((i, a) for a in named)
    return len(stated) / (len(_OBJECT_ATTRIBUTES) * len(scene.objects))


def caption_scores(caption: str, scene: Scene) -> dict[str, float]:
    """``precision`` (:func:`caption_fact_precision`), ``recall``
    (:func:`caption_attribute_recall`) and their harmonic mean ``f1``."""
    p, r = caption_fact_precision(caption, scene), caption_attribute_recall(caption, scene)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


__all__ = [
    "CheckResult", "Detection", "Fact", "ShapeFit", "caption_attribute_recall",
    "caption_fact_precision", "caption_scores", "check", "check_scene", "connected_components",
    "detect", "evaluate_query", "fit_color_lines", "fit_shape", "grow_components", "match_objects",
    "normalize_caption", "parse_caption", "prompt_category", "scene_detections", "segment_colors",
    "to_rgb_array",
]
