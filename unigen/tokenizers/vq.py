"""VQ image tokenizer: nearest-neighbour vector quantization (VQ-VAE, van den Oord et al. 2017;
VQGAN, Esser et al. 2021) with the fixes that keep large codebooks alive, each switchable:

* low-dimensional (factorized) codes, ``codebook_dim`` << ``latent_channels`` (ViT-VQGAN, Yu et al.
  2022; LlamaGen, Sun et al. 2024 use 8-32 dims);
* l2-normalised codes and inputs, i.e. cosine-similarity lookup (``cosine``, same papers);
* codebook updated by exponential moving averages of the assigned vectors (``ema_update``, VQ-VAE
  appendix; Razavi et al. 2019) instead of by gradients;
* k-means initialisation of the codebook on the first training batch (``kmeans_init``);
* replacement of codes whose EMA usage falls below ``dead_code_threshold`` by random batch vectors
  (Dhariwal et al. 2020, Jukebox);
* the rotation trick for gradients through the quantizer (``rotation_trick``, Fifty et al. 2024).

With all of them off (``cosine=False, ema_update=False, kmeans_init=False, dead_code_threshold=0,
rotation_trick=False``) this is plain VQ-VAE: a codebook learned by gradient through the straight-
through estimator, which on a large codebook collapses to a few codes (the benchmark shows it).
Its loss is VQ-VAE's ``||sg(z) - e||^2 + beta ||z - sg(e)||^2`` (van den Oord et al. 2017, eq. 3):
vector-quantize-pytorch's learnable codebook gives ``beta ||z - e||^2`` to both sides, so the
quantizer adds ``(1 - beta) ||sg(z) - e||^2`` and the codebook learns at weight 1, not ``beta``.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from vector_quantize_pytorch import VectorQuantize

from unigen.tokenizers.autoencoder import QuantizedAutoencoder, as_bool, as_float, as_int
from unigen.tokenizers.base import register_tokenizer
from unigen.tokenizers.quantizer import Quantized, Quantizer


class VQQuantizer(Quantizer):
    """Adapter around ``vector_quantize_pytorch.VectorQuantize`` (one head, codes of ``codebook_dim``)."""

    def __init__(self, codebook_size: int, codebook_dim: int, *, cosine: bool, ema_update: bool,
                 decay: float, kmeans_init: bool, kmeans_iters: int, dead_code_threshold: float,
                 commitment_weight: float, rotation_trick: bool) -> None:
        super().__init__()
        if codebook_size < 2 or codebook_dim < 1:
            raise ValueError(f"VQ needs codebook_size >= 2 and codebook_dim >= 1, got "
                             f"{codebook_size} and {codebook_dim}")
        if cosine and not ema_update:
            raise ValueError("a cosine (l2-normalised) VQ codebook needs ema_update=True: "
                             "vector-quantize-pytorch cannot learn it by gradient")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"VQ EMA decay must lie in (0, 1), got {decay}")
        self._dim = codebook_dim
        self._dead_code_threshold = dead_code_threshold
        self._codebook_weight = max(0.0, 1.0 - commitment_weight) if not ema_update else 0.0
        self._usage_checked = False
        self.vq = VectorQuantize(
            dim=codebook_dim, codebook_size=codebook_size, use_cosine_sim=cosine,
            ema_update=ema_update, learnable_codebook=not ema_update, decay=decay,
            kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=dead_code_threshold, commitment_weight=commitment_weight,
            rotation_trick=rotation_trick, accept_image_fmap=True)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def codebook_size(self) -> int:
        return self.vq.codebook_size

    def _check_initialised(self, always: bool = False) -> None:
        # vector-quantize-pytorch would otherwise silently run k-means on whatever batch it sees
        # first, validation data included; k-means belongs to the first *training* batch
        if (always or not self.training) and not bool(self.vq._codebook.initted):
            raise ValueError("the VQ codebook uses kmeans_init and has not been initialised yet: run a "
                             "training step first (in Lightning set trainer.num_sanity_val_steps: 0)")

    def _check_dead_code_threshold(self, latent: Tensor) -> None:
        # a code is re-seeded when its EMA use per step falls below the threshold: at or above the
        # mean use (vectors per step / codes) some codes are always below it, most often half
        vectors = latent.shape[0] * latent.shape[2] * latent.shape[3]
        if self._dead_code_threshold * self.codebook_size >= vectors:
            warnings.warn(f"VQ dead_code_threshold {self._dead_code_threshold:g} with "
                          f"{self.codebook_size} codes needs more than "
                          f"{self._dead_code_threshold * self.codebook_size:g} vectors a step, this batch "
                          f"has {vectors}: codes are re-seeded every step (lower the threshold below "
                          f"{vectors / self.codebook_size:g}, the mean use, or raise the batch size)",
                          stacklevel=3)
        self._usage_checked = True

    def forward(self, latent: Tensor) -> Quantized:
        self._check_initialised()
        if self.training and not self._usage_checked:
            self._check_dead_code_threshold(latent)
        quantized, codes, loss = self.vq(latent)
        losses = {}
        if self.training:
            losses["commitment"] = loss
            if self._codebook_weight:
                chosen = self.vq._codebook.embed[0][codes.long()]  # [B, h, w, d], with gradient
                target = rearrange(latent.detach(), "b d h w -> b h w d")
                losses["codebook"] = self._codebook_weight * F.mse_loss(chosen, target)
        return Quantized(quantized, codes.long(), losses)

    def lookup(self, codes: Tensor) -> Tensor:
        self._check_initialised()
        return self.vq.get_output_from_indices(codes)

    def nearest_neighbour_codebook(self) -> Tensor:
        self._check_initialised(always=True)  # an uninitialised codebook is all zeros
        codebook = self.vq.codebook.detach()
        # with unit-norm codes, the euclidean nearest neighbour of an unnormalised input is its
        # cosine nearest neighbour, so the l2-normalised codebook reproduces the lookup exactly
        return F.normalize(codebook, dim=-1) if self.vq.use_cosine_sim else codebook


@register_tokenizer("vq")
class VQTokenizer(QuantizedAutoencoder):
    """Autoencoder + vector quantization; defaults are the "VQ with tricks" setting.

    Args:
        codebook_size: number of codes.
        codebook_dim: dimension of each code (the 1x1 projection maps ``latent_channels`` to it).
        cosine: l2-normalised codes / cosine lookup.
        ema_update: EMA codebook updates (else the codebook is learned by gradient).
        decay: EMA decay of the codebook statistics.
        kmeans_init: initialise the codebook by k-means on the first training batch.
        kmeans_iters: k-means iterations.
        dead_code_threshold: replace codes whose EMA cluster size drops below this (0 disables).
        commitment_weight: weight ``beta`` of the commitment loss ``||z - sg(q)||^2`` (without EMA
            the codebook loss ``||sg(z) - q||^2`` has weight 1, as in VQ-VAE).
        rotation_trick: rotation-trick gradients instead of the straight-through estimator.
        **autoencoder: the shared architecture of :class:`QuantizedAutoencoder`.
    """

    def __init__(self, codebook_size: int = 1024, codebook_dim: int = 8, cosine: bool = True,
                 ema_update: bool = True, decay: float = 0.8, kmeans_init: bool = True,
                 kmeans_iters: int = 10, dead_code_threshold: float = 2.0,
                 commitment_weight: float = 0.25, rotation_trick: bool = False,
                 **autoencoder: Any) -> None:
        # typed here, so a hand-edited config.json fails naming the argument
        quantizer_config = dict(
            codebook_size=as_int("codebook_size", codebook_size),
            codebook_dim=as_int("codebook_dim", codebook_dim), cosine=as_bool("cosine", cosine),
            ema_update=as_bool("ema_update", ema_update), decay=as_float("decay", decay),
            kmeans_init=as_bool("kmeans_init", kmeans_init),
            kmeans_iters=as_int("kmeans_iters", kmeans_iters),
            dead_code_threshold=as_float("dead_code_threshold", dead_code_threshold),
            commitment_weight=as_float("commitment_weight", commitment_weight),
            rotation_trick=as_bool("rotation_trick", rotation_trick))
        super().__init__(partial(VQQuantizer, **quantizer_config), quantizer_config, **autoencoder)
