"""Output heads, picked by the recipe (``head: shared | separate``).

Every head maps hidden states to logits over the *whole* unified vocabulary; the transformer then adds
the per-modality legal bias so a text position can only emit text ids and an image position only
image codes.
- ``shared``: one projection over the whole vocabulary (Show-o).
- ``separate``: one projection per modality (UniDisc-style), concatenated into the unified id order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unigen.registry import Registry

HEADS: Registry[type[nn.Module]] = Registry("output head")


@HEADS.register("shared")
class SharedHead(nn.Module):
    def __init__(self, dim: int, text_size: int, image_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, text_size + image_size, bias=False)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden)


@HEADS.register("separate")
class SeparateHeads(nn.Module):
    def __init__(self, dim: int, text_size: int, image_size: int) -> None:
        super().__init__()
        self.text = nn.Linear(dim, text_size, bias=False)
        self.image = nn.Linear(dim, image_size, bias=False)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.cat((self.text(hidden), self.image(hidden)), dim=-1)
