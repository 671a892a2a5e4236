"""Convolutional autoencoder shared by the VQ, FSQ and LFQ image tokenizers.

The encoder and decoder are diffusers' ``Encoder``/``Decoder`` (the VQGAN/LDM architecture of Esser
et al. 2021 and Rombach et al. 2022: ResNet blocks, stride-2 down/up-sampling, optional mid-block
attention).  1x1 convolutions project the encoder output to the quantizer's dimension and back, the
layout of a diffusers ``VQModel`` (``encoder -> quant_conv -> quantize -> post_quant_conv ->
decoder``), which is what lets ``vqmodel.export_to_diffusers`` write a trained tokenizer in that
format.  A low quantizer dimension is the factorized code lookup of ViT-VQGAN (Yu et al. 2022) and
LlamaGen (Sun et al. 2024).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import torch
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import Tensor, nn

from unigen.tokenizers.base import ImageTokenizer, TokenizerOutput
from unigen.tokenizers.quantizer import Quantizer


# Constructor-argument checks: a config.json edited by hand ("levels": "abc", "seed": "x") must fail
# with the argument's name, not with int()'s or a comparison's message (or, for a bool, be accepted).
def as_int(name: str, value: Any) -> int:
    """``value`` as an int; an integral number is accepted, anything else is a ``ValueError``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{name} must be an integer, got {value!r}")


def as_ints(name: str, values: Any) -> list[int]:
    """A sequence of integers (not a string) as a list of ints."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of integers, got {values!r}")
    try:
        return [as_int(name, v) for v in values]
    except ValueError:
        raise ValueError(f"{name} must be a list of integers, got {values!r}") from None


def as_float(name: str, value: Any) -> float:
    """A finite real number as a float."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{name} must be a finite number, got {value!r}")


def as_bool(name: str, value: Any) -> bool:
    """A real bool: the string "false" would otherwise be truthy."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _check_architecture(block_out_channels: Sequence[int], layers_per_block: int,
                        latent_channels: int, norm_num_groups: int) -> None:
    if not block_out_channels:
        raise ValueError("block_out_channels must name at least one block")
    if layers_per_block < 1 or latent_channels < 1 or norm_num_groups < 1:
        raise ValueError(f"layers_per_block ({layers_per_block}), latent_channels "
                         f"({latent_channels}) and norm_num_groups ({norm_num_groups}) must be >= 1")
    bad = [c for c in block_out_channels if c < 1 or c % norm_num_groups]
    if bad:
        raise ValueError(f"block_out_channels {list(block_out_channels)} must be positive multiples of "
                         f"norm_num_groups={norm_num_groups} (GroupNorm), offending: {bad}")


class QuantizedAutoencoder(ImageTokenizer):
    """Encoder -> 1x1 projection -> quantizer -> 1x1 projection -> decoder.

    Subclasses (one per quantizer) pass a zero-argument ``quantizer`` factory and the JSON config of
    its arguments; everything else is the shared architecture below.  The downsample factor is
    ``2 ** (len(block_out_channels) - 1)``.  Construction is seeded by ``seed`` (without touching the
    global RNG), so equal configs give equal initial weights.

    Args:
        block_out_channels: channels of each resolution level, highest resolution first.
        layers_per_block: ResNet blocks per encoder level (the decoder uses one more, as in LDM).
        latent_channels: channels of the encoder output / decoder input.
        norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
        mid_block_attention: self-attention in the lowest-resolution mid block (costly on CPU).
        seed: seed for the initial weights.
    """

    def __init__(self, quantizer: Callable[[], Quantizer], quantizer_config: dict[str, Any], *,
                 block_out_channels: Sequence[int] = (64, 128, 128), layers_per_block: int = 1,
                 latent_channels: int = 32, norm_num_groups: int = 32,
                 mid_block_attention: bool = False, seed: int = 0) -> None:
        super().__init__()
        block_out_channels = as_ints("block_out_channels", block_out_channels)
        layers_per_block = as_int("layers_per_block", layers_per_block)
        latent_channels = as_int("latent_channels", latent_channels)
        norm_num_groups = as_int("norm_num_groups", norm_num_groups)
        mid_block_attention = as_bool("mid_block_attention", mid_block_attention)
        seed = as_int("seed", seed)
        _check_architecture(block_out_channels, layers_per_block, latent_channels, norm_num_groups)
        self.config = {**quantizer_config, "block_out_channels": block_out_channels,
                       "layers_per_block": layers_per_block, "latent_channels": latent_channels,
                       "norm_num_groups": norm_num_groups,
                       "mid_block_attention": mid_block_attention, "seed": seed}
        levels = len(block_out_channels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = Encoder(
                in_channels=3, out_channels=latent_channels,
                down_block_types=("DownEncoderBlock2D",) * levels,
                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                norm_num_groups=norm_num_groups, act_fn="silu", double_z=False,
                mid_block_add_attention=mid_block_attention)
            self.quantizer = quantizer()
            self.quant_conv = nn.Conv2d(latent_channels, self.quantizer.dim, 1)
            self.post_quant_conv = nn.Conv2d(self.quantizer.dim, latent_channels, 1)
            self.decoder = Decoder(
                in_channels=latent_channels, out_channels=3,
                up_block_types=("UpDecoderBlock2D",) * levels,
                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                norm_num_groups=norm_num_groups, act_fn="silu", norm_type="group",
                mid_block_add_attention=mid_block_attention)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    @property
    def last_layer(self) -> Tensor:
        """Weight of the decoder's output conv: the VQGAN adaptive GAN weight balances gradients here."""
        return self.decoder.conv_out.weight

    def encode_latent(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> pre-quantization latent [B, dim, h, w]."""
        return self.quant_conv(self.encoder(images * 2.0 - 1.0))

    def decode_latent(self, latent: Tensor) -> Tensor:
        """Quantized latent [B, dim, h, w] -> images [B, 3, H, W], ~[0, 1] (unclamped)."""
        return (self.decoder(self.post_quant_conv(latent)) + 1.0) / 2.0

    def forward(self, images: Tensor) -> TokenizerOutput:
        self.check_images(images)
        quantized = self.quantizer(self.encode_latent(images))
        return TokenizerOutput(self.decode_latent(quantized.latent), quantized.codes.long(),
                               quantized.losses)

    def encode_codes(self, images: Tensor) -> Tensor:
        return self.quantizer(self.encode_latent(images)).codes

    def decode_codes(self, codes: Tensor) -> Tensor:
        # FSQ's lookup computes its grid values in float32 whatever the weights' dtype; the decoder
        # convolutions need their own (bf16/fp16 weights otherwise refuse the float32 latent)
        latent = self.quantizer.lookup(codes)
        return self.decode_latent(latent.to(self.post_quant_conv.weight.dtype))
