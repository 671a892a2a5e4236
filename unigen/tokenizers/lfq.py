"""LFQ image tokenizer: lookup-free quantization (Yu et al. 2023, MAGVIT-v2, "Language Model Beats
Diffusion -- Tokenizer is Key to Visual Generation").

The latent has ``log2(codebook_size)`` channels and each is quantized to its sign, so the code is the
bit pattern and no codebook lookup (or codebook to collapse) exists.  An entropy loss keeps each
token's soft assignment confident (low per-sample entropy) while spreading the batch over all codes
(high codebook entropy, weighted by ``diversity_gamma``), as in the paper's equation (5).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from torch import Tensor
from vector_quantize_pytorch import LFQ

from unigen.tokenizers.autoencoder import QuantizedAutoencoder, as_float, as_int
from unigen.tokenizers.base import register_tokenizer
from unigen.tokenizers.quantizer import Quantized, Quantizer


class LFQQuantizer(Quantizer):
    """Adapter around ``vector_quantize_pytorch.LFQ`` with the losses reported separately."""

    def __init__(self, codebook_size: int, *, entropy_loss_weight: float,
                 commitment_loss_weight: float, diversity_gamma: float,
                 inverse_temperature: float) -> None:
        super().__init__()
        if codebook_size < 2 or codebook_size & (codebook_size - 1):
            raise ValueError(f"LFQ codebook_size must be a power of 2 >= 2, got {codebook_size}")
        self._codebook_size = codebook_size
        self._dim = int(math.log2(codebook_size))
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.diversity_gamma = diversity_gamma
        self.inverse_temperature = inverse_temperature
        # LFQ only computes the commitment term when its weight is positive; we weight it ourselves
        self.lfq = LFQ(dim=self._dim, codebook_size=codebook_size, entropy_loss_weight=1.0,
                       commitment_loss_weight=1.0 if commitment_loss_weight > 0 else 0.0,
                       diversity_gamma=diversity_gamma)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    def forward(self, latent: Tensor) -> Quantized:
        (quantized, codes, _), parts = self.lfq(latent, inv_temperature=self.inverse_temperature,
                                                return_loss_breakdown=True)
        losses = {}
        if self.training:
            losses["entropy"] = self.entropy_loss_weight * (
                parts.per_sample_entropy - self.diversity_gamma * parts.batch_entropy)
            if self.commitment_loss_weight > 0:
                losses["commitment"] = self.commitment_loss_weight * parts.commitment
        return Quantized(quantized, codes.long(), losses)

    def lookup(self, codes: Tensor) -> Tensor:
        return self.lfq.indices_to_codes(codes)

    def nearest_neighbour_codebook(self) -> Tensor:
        # the nearest of the equal-norm corners {-s, s}^d is the sign pattern: exactly LFQ's rule
        return self.lfq.codebook.detach().clone()


@register_tokenizer("lfq")
class LFQTokenizer(QuantizedAutoencoder):
    """Autoencoder + lookup-free quantization.

    Args:
        codebook_size: a power of 2; the latent has ``log2(codebook_size)`` channels.
        entropy_loss_weight: weight of the entropy loss (MAGVIT-v2 uses 0.1).
        commitment_loss_weight: weight of ``||z - sg(sign(z))||^2``.
        diversity_gamma: weight of the codebook-entropy term inside the entropy loss.
        inverse_temperature: sharpness of the soft code assignment used by the entropy loss.
        **autoencoder: the shared architecture of :class:`QuantizedAutoencoder`.
    """

    def __init__(self, codebook_size: int = 1024, entropy_loss_weight: float = 0.1,
                 commitment_loss_weight: float = 0.25, diversity_gamma: float = 1.0,
                 inverse_temperature: float = 100.0, **autoencoder: Any) -> None:
        # typed here, so a hand-edited config.json fails naming the argument
        quantizer_config = dict(
            codebook_size=as_int("codebook_size", codebook_size),
            entropy_loss_weight=as_float("entropy_loss_weight", entropy_loss_weight),
            commitment_loss_weight=as_float("commitment_loss_weight", commitment_loss_weight),
            diversity_gamma=as_float("diversity_gamma", diversity_gamma),
            inverse_temperature=as_float("inverse_temperature", inverse_temperature))
        super().__init__(partial(LFQQuantizer, **quantizer_config), quantizer_config, **autoencoder)
