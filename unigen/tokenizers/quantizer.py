"""The small interface a quantizer implements so one autoencoder can host VQ, FSQ or LFQ.

A quantizer maps a latent map ``[B, dim, h, w]`` to a quantized map of the same shape plus integer
codes ``[B, h, w]``; ``lookup`` inverts the codes back to the quantized map.  Each adapter wraps one
quantizer of ``vector-quantize-pytorch`` and reports its auxiliary losses *already weighted*, so a
trainer simply sums them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class Quantized:
    """What a quantizer returns for a latent map."""

    latent: Tensor  # [B, dim, h, w], straight-through in training
    codes: Tensor  # [B, h, w] long
    losses: dict[str, Tensor] = field(default_factory=dict)  # weighted auxiliary losses


class Quantizer(nn.Module, ABC):
    """Base class of the quantizer adapters (``vq.py``, ``fsq.py``, ``lfq.py``)."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Channels of the latent map the quantizer reads (the autoencoder projects to it)."""

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @abstractmethod
    def forward(self, latent: Tensor) -> Quantized: ...

    @abstractmethod
    def lookup(self, codes: Tensor) -> Tensor:
        """codes ``[B, h, w]`` -> quantized latent ``[B, dim, h, w]``."""

    def nearest_neighbour_codebook(self) -> Tensor:
        """An explicit codebook ``[codebook_size, dim]`` such that the euclidean nearest neighbour of a
        latent vector is its code and the entry is its quantized value (what a diffusers ``VQModel``
        computes).  Quantizers for which no such codebook exists raise ``ValueError``."""
        raise ValueError(f"{type(self).__name__} is not a nearest-neighbour lookup in an explicit "
                         "codebook, so it cannot be exported as a diffusers VQModel")
