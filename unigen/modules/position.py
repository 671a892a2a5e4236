"""Position encodings that fit each modality: 1-D for text, 2-D for the image grid.

Two families, chosen by the recipe:
- ``learned``: absolute embeddings, a 1-D table for text positions and a factorised row + column
  table for image positions (as in ViT / Show-o's image grid).
- ``rope``: multimodal rotary embeddings (M-RoPE, Qwen2-VL): every position carries a (row, col)
  pair; text tokens use (i, i) so they reduce to 1-D RoPE, image tokens use their grid cell offset
  after the preceding text.  Half of each head's rotary pairs rotate with the row, half with the col.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LearnedPositions(nn.Module):
    """Adds absolute learned embeddings; ``axes`` is a [S, 2] long tensor of (row, col) per position
    and ``is_image`` marks which positions use the 2-D table."""

    def __init__(self, dim: int, max_1d: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.pos_1d = nn.Embedding(max_1d, dim)
        self.row = nn.Embedding(grid[0], dim)
        self.col = nn.Embedding(grid[1], dim)
        for emb in (self.pos_1d, self.row, self.col):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, index_1d: Tensor, axes: Tensor, is_image: Tensor) -> Tensor:
        """Returns [S, dim] embeddings for the given positions."""
        flat = self.pos_1d(index_1d)
        grid = self.row(axes[:, 0].clamp_max(self.row.num_embeddings - 1)) + self.col(
            axes[:, 1].clamp_max(self.col.num_embeddings - 1))
        return torch.where(is_image[:, None], grid, flat)


class MultimodalRotary(nn.Module):
    """M-RoPE: rotary frequencies split between a row axis and a column axis."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"rope needs head_dim divisible by 4, got {head_dim}")
        self.half, self.base = head_dim // 2, base
        self.register_buffer("inv_freq", self._frequencies(None), persistent=False)

    def _frequencies(self, device: torch.device | None) -> Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.half, dtype=torch.float32, device=device) / self.half))

    def _apply(self, fn, recurse: bool = True):
        # a cast of the model (pipe.to(torch.bfloat16)) moves the frequencies but keeps them
        # float32: in bf16 the angle of position 59 is off by up to 0.03 rad, and more further on
        super()._apply(fn, recurse)
        self.inv_freq = self._frequencies(self.inv_freq.device)
        return self

    def angles(self, axes: Tensor) -> tuple[Tensor, Tensor]:
        """axes [..., S, 2] -> (cos, sin) each [..., S, head_dim // 2]."""
        half = self.inv_freq.numel()
        # even frequency slots follow the row, odd slots the column, so both axes get the full band
        which = torch.arange(half, device=axes.device) % 2
        pos = axes.float()[..., which]  # [..., S, half]
        theta = pos * self.inv_freq
        return theta.cos(), theta.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs of ``x`` [B, H, S, Dh] by the angles (cos/sin [S, Dh/2])."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)
