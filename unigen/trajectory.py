"""A decode's trajectory: the image at chosen steps, revealed tokens drawn and masked ones gray.

The figure of MaskGIT (Chang et al. 2022, Fig. 2) and of the Halton scheduler (Besnier et al.
2025): which tokens each step commits to, and in what order, is what tells samplers apart; the
final images alone do not show it.  :class:`TrajectoryRecorder` is a pipeline ``callback`` that
keeps every step's state (token ids only, a few KB a step); :meth:`TrajectoryRecorder.grid` draws
evenly spaced steps, one row per image.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from PIL import Image
from torch import Tensor

from unigen.visual import captioned_grid

if TYPE_CHECKING:
    from unigen.pipeline import UnifiedPipeline

MIN_TILE_PIXELS = 128  # a frame's width in the grid, at least
NOTHING_RECORDED = "no step was recorded: pass the recorder as the pipeline's callback="


def frame_steps(num_recorded: int, frames: int) -> list[int]:
    """``frames`` indices into ``num_recorded`` steps, evenly spaced, the last step always among
    them (fewer when there are fewer steps)."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if num_recorded < 1:
        raise ValueError(NOTHING_RECORDED)
    if frames == 1:
        return [num_recorded - 1]
    picked = torch.linspace(0, num_recorded - 1, min(frames, num_recorded)).round().long()
    return sorted(set(picked.tolist()))


class TrajectoryRecorder:
    """``callback`` for :class:`~unigen.pipeline.UnifiedPipeline`'s decoding methods: records
    ``(step_index, tokens, is_masked)`` after every step of one decode (one call of a decoding
    method: ``text_to_image``, ``inpaint``, ``image_to_image``, ``infill``, ``caption``,
    ``answer``; with ``candidates > 1`` every candidate's decode would append, so use one
    recorder per single-candidate call)."""

    def __init__(self) -> None:
        self.states: list[tuple[int, Tensor, Tensor]] = []

    def __call__(self, step_index: int, tokens: Tensor, is_masked: Tensor) -> None:
        self.states.append((step_index, tokens.cpu(), is_masked.cpu()))

    def frames(self, pipe: "UnifiedPipeline", frames: int = 6) -> tuple[list[int], Tensor, Tensor]:
        """``(steps, images, revealed)``: the chosen step indices, their partial images
        ``[F, B, 3, H, W]`` (:meth:`UnifiedPipeline.partial_images`) and the fraction of each
        image's tokens revealed ``[F, B]``."""
        chosen = frame_steps(len(self.states), frames)
        image = pipe.space.sequence.image
        images, revealed = [], []
        for index in chosen:
            _, tokens, is_masked = self.states[index]
            images.append(pipe.partial_images(tokens, is_masked))
            revealed.append(1.0 - is_masked[:, image].float().mean(-1))
        return [self.states[i][0] for i in chosen], torch.stack(images), torch.stack(revealed)

    def texts(self, pipe: "UnifiedPipeline") -> list[list[dict[str, int | str]]]:
        """Every step's partial text of each row (:meth:`UnifiedPipeline.partial_text`), as
        ``[{"step": 1, "text": "a red _ _"}, ...]`` per row: how a caption or answer filled in."""
        if not self.states:
            raise ValueError(NOTHING_RECORDED)
        per_step = [pipe.partial_text(tokens, is_masked) for _, tokens, is_masked in self.states]
        return [[{"step": step + 1, "text": texts[row]}
                 for (step, _, _), texts in zip(self.states, per_step)]
                for row in range(len(per_step[0]))]

    def grid(self, pipe: "UnifiedPipeline", frames: int = 6,
             labels: Sequence[str] | None = None) -> Image.Image:
        """One row per image, one column per chosen step, captioned with the step and the share
        of the image's tokens revealed by then; ``labels`` (one per image, e.g. the prompts)
        caption each row's last frame instead."""
        steps, images, revealed = self.frames(pipe, frames)
        if labels is not None and len(labels) != images.shape[1]:
            raise ValueError(f"got {len(labels)} labels for {images.shape[1]} images")
        total = self.states[-1][0] + 1
        num_frames, batch = images.shape[:2]
        tiles = images.transpose(0, 1).reshape(num_frames * batch, *images.shape[2:])
        captions = [f"step {steps[f] + 1}/{total}: {100 * float(revealed[f, b]):.0f}% shown"
                    for b in range(batch) for f in range(num_frames)]
        if labels is not None:  # on the last frame, all shown: the label says more there
            for b, label in enumerate(labels):
                captions[b * num_frames + num_frames - 1] = f"{label} (step {steps[-1] + 1}/{total})"
        # small images are drawn larger, so each caption (about 20 characters) fits on its tile
        scale = max(2, math.ceil(MIN_TILE_PIXELS / images.shape[-1]))
        return captioned_grid(tiles, captions, ncol=num_frames, scale=scale)
