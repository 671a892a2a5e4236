"""Halton-order decoding (Besnier et al., "Halton Scheduler for Masked Generative Image
Transformer", ICLR 2025).

MaskGIT reveals the tokens the network is surest of. Sure tokens cluster (background next to
background, the inside of one object), and tokens revealed together in one step are drawn
independently, so neighbours decided at the same step can disagree: two halves of one object, or
an object drawn twice. The Halton scheduler instead fixes the order in advance: positions follow
a 2-D Halton sequence (bases 2 and 3) over the token grid, a low-discrepancy order in which each
step's new tokens are spread evenly over the image and far from each other, so the tokens drawn
together are the least dependent ones. The count per step follows a schedule (the paper's
``arccos``); the tokens themselves are sampled from the network's distribution. No confidence
ranking, no choice noise.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from unigen.diffusion.schedules import NoiseSchedule
from unigen.sampling.base import SAMPLERS, Sampler, SamplerOutput, resolve_schedule
from unigen.sampling.categorical import check_temperatures
from unigen.sampling.confidence import sample_with_confidence
from unigen.sampling.rng import GeneratorArg
from unigen.sampling.selection import masked_counts, reveal_counts, select_top_k

#: points of a low-discrepancy sequence drawn before giving up on covering every cell (a grid of
#: 256 x 256 tokens needs about 3e5; this bound only guards against a bug looping for ever)
MAX_POINTS = 50_000_000


def radical_inverse(index: Tensor, base: int) -> Tensor:
    """The base-``base`` radical inverse of each integer in ``index`` (>= 0): its digits mirrored
    about the point, ``0.d1 d2 d3...`` for ``index = ...d3 d2 d1`` (van der Corput; a Halton
    sequence is one such coordinate per prime base).  Float64, exact for the indices used here."""
    result = torch.zeros(index.shape, dtype=torch.float64)
    scale = 1.0 / base
    rest = index.clone()
    while bool((rest > 0).any()):
        result += (rest % base).double() * scale
        rest = rest // base
        scale /= base
    return result


def _first_visits(cells: Tensor, num_cells: int, order: list[int], seen: Tensor) -> None:
    """Append to ``order`` the cells of ``cells`` (in sequence order) not seen before."""
    new = cells[~seen[cells]]
    if len(new):
        # keep the first occurrence of each cell within this chunk, in sequence order
        first = torch.full((num_cells,), len(new), dtype=torch.long)
        first.scatter_reduce_(0, new, torch.arange(len(new)), reduce="amin")
        keep = new[first[new] == torch.arange(len(new))]
        order.extend(keep.tolist())
        seen[keep] = True


@lru_cache(maxsize=64)
def halton_order(height: int, width: int) -> tuple[int, ...]:
    """Raster indices (``row * width + col``) of a ``height x width`` grid in Halton order: point
    ``i = 1, 2, ...`` of the Halton sequence in bases 2 (rows) and 3 (columns) visits cell
    ``(floor(h x_i), floor(w y_i))``; each cell counts at its first visit.  A ``1 x n`` or
    ``n x 1`` grid is van der Corput's order (base 2) along the line."""
    if height < 1 or width < 1:
        raise ValueError(f"a Halton order needs a grid of at least 1 x 1, got {height} x {width}")
    num_cells = height * width
    order: list[int] = []
    seen = torch.zeros(num_cells, dtype=torch.bool)
    start, chunk = 1, max(1024, 4 * num_cells)
    line = height == 1 or width == 1
    while len(order) < num_cells:
        if start > MAX_POINTS:
            raise RuntimeError(f"the Halton sequence left cells of the {height} x {width} grid "
                               f"unvisited after {MAX_POINTS} points")
        index = torch.arange(start, start + chunk)
        if line:
            cells = (radical_inverse(index, 2) * num_cells).floor().long()
        else:
            rows = (radical_inverse(index, 2) * height).floor().long()
            cols = (radical_inverse(index, 3) * width).floor().long()
            cells = rows * width + cols
        _first_visits(cells, num_cells, order, seen)
        start += chunk
    return tuple(order)


def reveal_ranks(length: int, grid: tuple[int, int] | None) -> Tensor:
    """``[length]``: each position's place in the reveal order of a view of ``length`` positions.

    2-D Halton order when the view is a grid: ``grid`` given and ``length == h * w``, or ``grid``
    ``None`` and ``length`` a square (the pipeline's image view: the image segment, raster order).
    Otherwise (text, a view mixing segments) van der Corput's 1-D order along the sequence."""
    if grid is not None and grid[0] * grid[1] == length:
        height, width = grid
    elif grid is None and length > 1 and math.isqrt(length) ** 2 == length:
        height = width = math.isqrt(length)
    else:
        height, width = 1, length
    ranks = torch.empty(length, dtype=torch.long)
    ranks[torch.tensor(halton_order(height, width))] = torch.arange(length)
    return ranks


@SAMPLERS.register("halton")
class HaltonSampler(Sampler):
    """Schedule-driven unmasking in a fixed, spread-out order (Halton scheduler, Besnier et al. 2025).

    Args:
        schedule: how many stay masked after each step, a registered :class:`NoiseSchedule` name
            or instance (``arccos``, the paper's; ``cosine`` is MaskGIT's). As in ``maskgit``,
            each step reveals at least one token and the last step the rest.
        temperature: token sampling temperature (0 = greedy). The paper samples at 1.
        grid: ``(height, width)`` of the token grid; the pipeline fills in the grid of each view
            it decodes (the image's, or ``(1, length)`` for text).  ``None`` on its own reads a
            square view as a square grid (see :func:`reveal_ranks`). Positions outside the region
            being decoded keep their rank but are never candidates, so inpainting reveals its holes
            in the grid's Halton order.
        mask_id: the mask token id (or assign ``sampler.mask_id`` later).
    """

    needs_editable = True
    needs_grid = True  # the pipeline passes the grid of each view it decodes

    def __init__(self, schedule: str | NoiseSchedule = "arccos", temperature: float = 1.0,
                 grid: tuple[int, int] | list[int] | None = None, mask_id: int | None = None) -> None:
        super().__init__(mask_id=mask_id)
        check_temperatures(temperature=temperature)
        if grid is not None:
            if (len(grid) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                      for n in grid)):
                raise ValueError(f"grid must be two positive integers (height, width), got {grid!r}")
            grid = (int(grid[0]), int(grid[1]))
        self.schedule = resolve_schedule(schedule)
        self.temperature = float(temperature)
        self.grid = grid

    def step(self, logits: Tensor, tokens: Tensor, is_masked: Tensor, step_index: int,
             generator: GeneratorArg = None, editable: Tensor | None = None) -> SamplerOutput:
        logits = self.prepare_step(logits, tokens, is_masked, step_index, generator, editable)
        assert editable is not None and self.time_grid is not None
        _, sampled, confidence = sample_with_confidence(logits, is_masked, self.temperature, generator, "prob")
        target_after = masked_counts(self.schedule, self.time_grid, editable.sum(-1))[:, step_index + 1]
        num_reveal = reveal_counts(is_masked.sum(-1), target_after)
        # earliest in the order first: the score is the negated rank (ranks are distinct)
        earliness = -reveal_ranks(tokens.shape[1], self.grid).to(tokens.device, torch.float32)
        revealed = select_top_k(earliness.expand_as(is_masked), is_masked, num_reveal)
        return SamplerOutput(self.reveal(tokens, sampled, revealed), is_masked & ~revealed, confidence)

    def _repr_fields(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "temperature": self.temperature, "grid": self.grid,
                **super()._repr_fields()}
