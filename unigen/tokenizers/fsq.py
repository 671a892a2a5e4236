"""FSQ image tokenizer: finite scalar quantization (Mentzer et al. 2023, "Finite Scalar
Quantization: VQ-VAE Made Simple").

Each of ``len(levels)`` latent channels is bounded and rounded to ``levels[i]`` values; the code is
the mixed-radix number of the rounded channels, so the codebook is implicit, has
``prod(levels)`` entries, needs no auxiliary loss and does not collapse.  The paper's recommended
level sets: ``[8, 5, 5, 5]`` (1000 codes), ``[8, 8, 8, 5, 5, 5]`` (64000), ``[8, 8, 8, 6, 5]`` (15360).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

from torch import Tensor
from vector_quantize_pytorch import FSQ

from unigen.tokenizers.autoencoder import QuantizedAutoencoder, as_ints
from unigen.tokenizers.base import register_tokenizer
from unigen.tokenizers.quantizer import Quantized, Quantizer


class FSQQuantizer(Quantizer):
    """Adapter around ``vector_quantize_pytorch.FSQ`` reading ``len(levels)`` channels."""

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        levels = as_ints("FSQ levels", levels)
        if not levels or any(level < 3 for level in levels):
            # vector-quantize-pytorch refuses level 2 unless symmetry-preserving; say so up front
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 3, got {levels}")
        self.levels = levels
        self.fsq = FSQ(levels=levels)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def forward(self, latent: Tensor) -> Quantized:
        quantized, codes = self.fsq(latent)
        return Quantized(quantized, codes.long())

    def lookup(self, codes: Tensor) -> Tensor:
        return self.fsq.indices_to_codes(codes)


@register_tokenizer("fsq")
class FSQTokenizer(QuantizedAutoencoder):
    """Autoencoder + FSQ.  ``levels`` sets the codebook (``prod(levels)`` codes); the other arguments
    are the shared architecture of :class:`~unigen.tokenizers.autoencoder.QuantizedAutoencoder`."""

    def __init__(self, levels: Sequence[int] = (8, 5, 5, 5), **autoencoder: Any) -> None:
        levels = as_ints("FSQ levels", levels)  # names the field, unlike int("abc")'s error
        super().__init__(partial(FSQQuantizer, levels), {"levels": levels}, **autoencoder)
