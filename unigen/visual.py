"""Image grids and small figures people look at (training logs, eval reports, the demo)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from unigen import io


def make_grid(images: Tensor, ncol: int | None = None, pad: int = 2, fill: float = 1.0) -> Tensor:
    """[N, 3, H, W] -> one [3, H', W'] grid (rows of ``ncol``)."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), fill, dtype=images.dtype)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i].cpu()
    return grid


def to_pil(image: Tensor) -> Image.Image:
    arr = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    with io.atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def wrap_caption(text: str, chars: int, max_lines: int) -> list[str]:
    """``text`` in lines of at most ``chars`` characters (a longer word stands alone); past
    ``max_lines`` the last line ends in "..." so a cut caption does not read as a whole one."""
    words, line, lines = text.split(), "", []
    for word in words:
        if line and len(line) + 1 + len(word) > chars:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1][: max(1, chars - 3)] + "..."]
    return lines


def captioned_grid(images: Tensor, captions: Sequence[str], ncol: int = 4, scale: int = 2,
                   text_height: int = 24) -> Image.Image:
    """A grid where each image has its caption (wrapped) underneath, for humans to read."""
    n = images.shape[0]
    tiles = [to_pil(img).resize((img.shape[-1] * scale, img.shape[-2] * scale), Image.NEAREST)
             for img in images]
    tw, th = tiles[0].size
    lines_per = 3
    cell_h = th + text_height * lines_per // 2
    nrow = math.ceil(n / ncol)
    canvas = Image.new("RGB", (ncol * (tw + 8) + 8, nrow * (cell_h + 8) + 8), "white")
    draw = ImageDraw.Draw(canvas)
    chars = max(8, tw // 6)
    for i, (tile, text) in enumerate(zip(tiles, captions)):
        r, c = divmod(i, ncol)
        x, y = 8 + c * (tw + 8), 8 + r * (cell_h + 8)
        canvas.paste(tile, (x, y))
        lines = wrap_caption(text, chars, lines_per)
        for j, ln in enumerate(lines):
            draw.text((x, y + th + 2 + 11 * j), ln, fill="black")
    return canvas
