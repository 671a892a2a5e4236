"""Side-by-side reconstruction grids (original | reconstruction), for logs and reports."""

from __future__ import annotations

import os

import torch
from einops import rearrange
from PIL import Image
from torch import Tensor

from unigen import io


def comparison_grid(originals: Tensor, reconstructions: Tensor, max_images: int = 8) -> Tensor:
    """Two ``[B, 3, H, W]`` batches in [0, 1] -> one ``[3, rows * H, 2 * W]`` image in [0, 1]: each row
    shows an original and its reconstruction."""
    if originals.shape != reconstructions.shape or originals.ndim != 4:
        raise ValueError(f"need two [B, 3, H, W] batches of one shape, got {tuple(originals.shape)} "
                         f"and {tuple(reconstructions.shape)}")
    pair = torch.stack([originals[:max_images], reconstructions[:max_images]])
    return rearrange(pair.detach().float().clamp(0, 1).cpu(), "pair b c h w -> c (b h) (pair w)")


def save_png(image: Tensor, path: str | os.PathLike) -> None:
    """``[3, H, W]`` in [0, 1] -> PNG file, written atomically."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    with io.atomic_path(path) as tmp:
        Image.fromarray(rearrange(array, "c h w -> h w c").numpy(), mode="RGB").save(tmp, format="PNG")
