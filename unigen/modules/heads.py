"""Output heads, picked by the recipe (``head: shared | separate``).

Every head maps hidden states to logits over the *whole* unified vocabulary; the transformer then adds
the per-modality legal bias so a text position can only emit text ids and an image position only
image codes.
- ``shared``: one projection over the whole vocabulary (Show-o).
- ``separate``: one projection per modality (UniDisc-style), concatenated into the unified id order.

``forward(hidden, vocab_limit=None)``: with ``vocab_limit`` only the first ``vocab_limit`` ids are
scored.  Decoding text passes the text vocabulary's size: every image code is illegal at a text
position, so skipping them loses nothing a sampler reads and saves the projection onto the
codebook (15,360 codes against ~100 words for the shapes world).  A new head takes the argument too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigen.registry import Registry

HEADS: Registry[type[nn.Module]] = Registry("output head")


@HEADS.register("shared")
class SharedHead(nn.Module):
    def __init__(self, dim: int, text_size: int, image_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, text_size + image_size, bias=False)

    def forward(self, hidden: Tensor, vocab_limit: int | None = None) -> Tensor:
        if vocab_limit is None:
            return self.proj(hidden)
        if type(self.proj) is nn.Linear:
            return F.linear(hidden, self.proj.weight[:vocab_limit])
        return self.proj(hidden)[..., :vocab_limit]  # wrapped (e.g. LoRA): score all, keep the first ids


@HEADS.register("separate")
class SeparateHeads(nn.Module):
    def __init__(self, dim: int, text_size: int, image_size: int) -> None:
        super().__init__()
        self.text = nn.Linear(dim, text_size, bias=False)
        self.image = nn.Linear(dim, image_size, bias=False)
        self.text_size = text_size

    def forward(self, hidden: Tensor, vocab_limit: int | None = None) -> Tensor:
        if vocab_limit is not None and vocab_limit <= self.text_size:
            return self.text(hidden)[..., :vocab_limit]
        logits = torch.cat((self.text(hidden), self.image(hidden)), dim=-1)
        return logits if vocab_limit is None else logits[..., :vocab_limit]
