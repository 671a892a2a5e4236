"""The one interface every image tokenizer implements.

Images in and out are float tensors ``[B, 3, H, W]`` with values in ``[0, 1]``; codes are
``LongTensor[B, h, w]`` with values in ``[0, codebook_size)`` where ``h = H // downsample_factor``.
A directory written by :meth:`ImageTokenizer.save_pretrained` holds ``config.json`` (the tokenizer's
registered type, format version and constructor arguments) and ``model.safetensors``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from unigen import io
from unigen.registry import Registry

IMAGE_TOKENIZERS: Registry[type["ImageTokenizer"]] = Registry("image tokenizer")

FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = io.CONFIG_FILE, io.WEIGHTS_FILE


@dataclass
class TokenizerOutput:
    """What a training forward pass returns."""

    reconstruction: Tensor  # [B, 3, H, W], unclamped, ~[0, 1]
    codes: Tensor  # [B, h, w] long
    losses: dict[str, Tensor] = field(default_factory=dict)  # quantizer losses (commitment, entropy)


class ImageTokenizer(nn.Module, ABC):
    """Base class. Subclasses register with ``@IMAGE_TOKENIZERS.register("name")``, call
    ``super().__init__()``, store their constructor arguments in ``self.config`` (JSON-serialisable)
    and implement ``forward``, ``encode_codes`` and ``decode_codes``."""

    config: dict[str, Any]
    type_name: str = ""

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def downsample_factor(self) -> int: ...

    def latent_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} is not divisible by the downsample factor {f}")
        return h // f, w // f

    def check_images(self, images: Tensor) -> None:
        if not torch.is_tensor(images) or images.ndim != 4:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got {shape}")
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels, got {images.shape[1]}")
        self.latent_grid((images.shape[2], images.shape[3]))
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")

    def check_codes(self, codes: Tensor) -> None:
        if codes.ndim != 3:
            raise ValueError(f"codes must be [B, h, w], got shape {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")

    @abstractmethod
    def forward(self, images: Tensor) -> TokenizerOutput:
        """Training pass: encode, quantize (straight-through), decode; images in [0, 1]."""

    @abstractmethod
    def encode_codes(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, h, w] long (no input checks, may keep autograd)."""

    @abstractmethod
    def decode_codes(self, codes: Tensor) -> Tensor:
        """[B, h, w] long -> [B, 3, H, W] (unclamped)."""

    @torch.inference_mode()
    def encode(self, images: Tensor) -> Tensor:
        self.check_images(images)
        return self.encode_codes(images.to(self.device)).long()

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        self.check_codes(codes)
        return self.decode_codes(codes.to(self.device).long()).clamp(0.0, 1.0)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors``; the directory is complete or absent."""
        name = type(self).type_name
        if not name:
            raise TypeError(f"{type(self).__name__} is not registered in IMAGE_TOKENIZERS")
        io.save_typed_model(path, self, name, FORMAT_VERSION, self.config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
                        ) -> "ImageTokenizer":
        """Load from a local directory written by ``save_pretrained`` (never from a hub)."""
        path, meta = io.read_model_dir(path, "image tokenizer", "train one with `unigen fit "
                                       "--config recipes/tokenizer_fsq_shapes.yaml`", CONFIG_NAME)
        if meta.get("format_version") != FORMAT_VERSION or "type" not in meta:
            raise ValueError(f"{path / CONFIG_NAME} is not a unigen image tokenizer config of format "
                             f"version {FORMAT_VERSION} (found {meta.get('format_version')!r})")
        target = IMAGE_TOKENIZERS.get(meta["type"])
        if cls is not ImageTokenizer and not issubclass(target, cls):
            raise ValueError(f"{path} holds a {meta['type']!r} tokenizer, not a {cls.__name__}")
        model = io.load_weights(target(**meta["config"]), path / WEIGHTS_NAME)
        return model.to(map_location).eval()


def register_tokenizer(name: str):
    """Class decorator: register under ``name`` and remember it for ``save_pretrained``."""

    def wrap(cls: type[ImageTokenizer]) -> type[ImageTokenizer]:
        cls.type_name = name
        return IMAGE_TOKENIZERS.register(name)(cls)

    return wrap


# -- PIL helpers ---------------------------------------------------------------------------------
def pil_to_tensor(images: Image.Image | list[Image.Image]) -> Tensor:
    """PIL image(s) -> float [B, 3, H, W] in [0, 1]; RGBA/grayscale are refused, not guessed."""
    items = images if isinstance(images, (list, tuple)) else [images]
    arrays = []
    for img in items:
        if img.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {img.mode!r} (convert it explicitly)")
        arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"images in one batch must share a size, got {sorted(sizes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_pil(images: Tensor) -> list[Image.Image]:
    """float [B, 3, H, W] in [0, 1] -> list of PIL RGB images."""
    arr = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(a.numpy(), mode="RGB") for a in arr]
