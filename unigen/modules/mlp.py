"""Feed-forward blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SwiGLU(nn.Module):
    """Gated MLP with SiLU gate (Shazeer 2020, "GLU Variants Improve Transformer").

    The hidden width is ``mlp_ratio * dim * 2 / 3`` rounded up to ``multiple_of`` so the parameter
    count matches a plain 4x MLP, as in LLaMA.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, multiple_of: int = 64, dropout: float = 0.0):
        super().__init__()
        hidden = int(mlp_ratio * dim * 2 / 3)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)  # one matmul for both branches
        self.down = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.dropout(self.down(F.silu(gate) * up))
