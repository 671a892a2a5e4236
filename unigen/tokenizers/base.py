"""The one interface every image tokenizer implements.

Images in and out are float tensors ``[B, 3, H, W]`` with values in ``[0, 1]``; codes are
``LongTensor[B, h, w]`` with values in ``[0, codebook_size)`` where ``h = H // downsample_factor``.
A directory written by :meth:`ImageTokenizer.save_pretrained` holds ``config.json`` (the tokenizer's
registered type, format version and constructor arguments) and ``model.safetensors``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from pathlib import Path
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from unigen import io
from unigen.registry import Registry

IMAGE_TOKENIZERS: Registry[type["ImageTokenizer"]] = Registry("image tokenizer")

FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = io.CONFIG_FILE, io.WEIGHTS_FILE

# accepted pixel range of ``encode`` input: [0, 1] widened by this much on each side, because
# bicubic / Lanczos resizing rings past the original range at sharp edges (a few hundredths, rarely
# ~0.2) and that is still a [0, 1] image; [-1, 1] images and 0..255 floats fall far outside it
VALUE_TOLERANCE = 0.25


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run the block with every submodule of ``module`` in eval mode, then give each submodule back
    its own previous ``training`` flag (a blanket ``.train()`` would also flip submodules that were
    deliberately kept in eval, e.g. a frozen perceptual net)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@dataclass
class TokenizerOutput:
    """What a training forward pass returns."""

    reconstruction: Tensor  # [B, 3, H, W], unclamped, ~[0, 1]
    codes: Tensor  # [B, h, w] long
    losses: dict[str, Tensor] = field(default_factory=dict)  # quantizer losses (commitment, entropy)


class ImageTokenizer(nn.Module, ABC):
    """Base class. Subclasses register with ``@register_tokenizer("name")`` (which also sets the
    ``type_name`` that ``save_pretrained`` writes), call ``super().__init__()``, store their
    constructor arguments in ``self.config`` (JSON-serialisable) and implement ``forward``,
    ``encode_codes`` and ``decode_codes``.

    ``encode``/``decode`` are the inference API: they check their input, run without autograd and
    in eval mode whatever the module's mode (so they never update a codebook), and have no side
    effects."""

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
        """Shape and dtype checks of an image batch (no host read, so free on any device)."""
        if not torch.is_tensor(images) or images.ndim != 4:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got {shape}")
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels, got {images.shape[1]}")
        if images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f"images must have a positive height and width, got "
                             f"{images.shape[2]}x{images.shape[3]}")
        self.latent_grid((images.shape[2], images.shape[3]))
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")

    @staticmethod
    def check_image_values(images: Tensor) -> None:
        """Refuse non-finite pixels and pixels outside [0, 1] (give or take ``VALUE_TOLERANCE``).
        This reads two numbers back to the host, i.e. waits for the device."""
        if images.numel() == 0:
            return
        lo, hi = torch.stack(torch.aminmax(images.detach())).float().tolist()  # one host read
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"images contain non-finite values (NaN or inf): observed range "
                             f"[{lo:g}, {hi:g}]")
        if lo < -VALUE_TOLERANCE or hi > 1.0 + VALUE_TOLERANCE:
            raise ValueError(f"images must have values in [0, 1], observed range [{lo:g}, {hi:g}] "
                             "(uint8 pixels: divide by 255; images in [-1, 1]: map with "
                             "(x + 1) / 2)")

    def check_codes(self, codes: Tensor) -> None:
        """Codes must be an integer tensor [B, h, w] (h, w > 0) with values in [0, codebook_size)."""
        if not torch.is_tensor(codes):
            raise ValueError(f"codes must be an integer torch tensor [B, h, w], got "
                             f"{type(codes).__name__} (wrap it with torch.as_tensor)")
        if codes.dtype == torch.bool or codes.is_floating_point() or codes.is_complex():
            # a float code would be truncated (3.7 -> 3) and NaN would become INT64_MIN
            raise ValueError(f"codes must have an integer dtype (e.g. torch.long), got {codes.dtype}")
        if codes.ndim != 3:
            raise ValueError(f"codes must be [B, h, w], got shape {tuple(codes.shape)}")
        if codes.shape[1] == 0 or codes.shape[2] == 0:
            raise ValueError(f"codes must have a positive grid height and width, got "
                             f"{codes.shape[1]}x{codes.shape[2]}")
        if codes.numel():
            lo, hi = torch.stack(torch.aminmax(codes.long())).tolist()  # one host read
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{lo}, {hi}]")

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
    def encode(self, images: Tensor, *, check_values: bool = True) -> Tensor:
        """Float images [B, 3, H, W] in [0, 1] -> codes ``LongTensor[B, h, w]``.

        ``check_values=False`` skips the NaN / [0, 1] range check, whose host read waits for the
        device; pass it only where the data pipeline guarantees the range (the training loop).
        Shape and dtype checks always run (they are free)."""
        self.check_images(images)
        if images.shape[0] == 0:  # the encoder's reshapes fail on an empty batch
            h, w = self.latent_grid((images.shape[2], images.shape[3]))
            return torch.empty(0, h, w, dtype=torch.long, device=self.device)
        if check_values:
            self.check_image_values(images)
        # float64/16 input would meet float32 weights inside a conv and fail there
        images = images.to(device=self.device, dtype=self.dtype)
        with eval_mode(self):
            return self.encode_codes(images).long()

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes [B, h, w] -> images [B, 3, H, W] clamped to [0, 1]."""
        self.check_codes(codes)
        if codes.shape[0] == 0:
            f = self.downsample_factor
            return torch.empty(0, 3, codes.shape[1] * f, codes.shape[2] * f, dtype=self.dtype,
                               device=self.device)
        with eval_mode(self):
            return self.decode_codes(codes.to(self.device).long()).clamp(0.0, 1.0)

    def _first_tensor(self) -> Tensor | None:
        # a tokenizer need not learn anything (pixel binning): then its buffers say where it is
        return next(itertools.chain(self.parameters(), self.buffers()), None)

    @property
    def device(self) -> torch.device:
        """Device of the weights (or buffers); the CPU for a tokenizer that holds no tensors."""
        tensor = self._first_tensor()
        return torch.device("cpu") if tensor is None else tensor.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights (images are cast to it before encoding); float32 for a tokenizer
        with no floating-point tensors."""
        floats = (t for t in itertools.chain(self.parameters(), self.buffers()) if t.is_floating_point())
        tensor = next(floats, None)
        return torch.float32 if tensor is None else tensor.dtype

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
        inner = io.dir_path(path, "image tokenizer") / "image_tokenizer"
        if not (Path(path) / CONFIG_NAME).is_file() and (inner / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path} is a pipeline directory, not an image tokenizer; its "
                                    f"image tokenizer is {inner}")
        path, meta = io.read_model_dir(path, "image tokenizer", "train one with `unigen fit "
                                       "--config recipes/tokenizer_fsq_shapes.yaml`", CONFIG_NAME)
        config_file = path / CONFIG_NAME
        if meta.get("_class_name") == "VQModel":  # diffusers' own config.json
            raise ValueError(f"{config_file} is a diffusers VQModel config, not a unigen image "
                             f"tokenizer one: load it with DiffusersVQTokenizer.from_diffusers("
                             f"{str(path)!r})")
        if meta.get("format_version") != FORMAT_VERSION or "type" not in meta:
            raise ValueError(f"{config_file} is not a unigen image tokenizer config of format "
                             f"version {FORMAT_VERSION} (found {meta.get('format_version')!r})")
        name, config = io.typed_model_config(config_file, meta, "image tokenizer")
        module = meta.get("module")  # recorded for tokenizers defined outside unigen
        try:
            target = IMAGE_TOKENIZERS.get(name, saved_by=module if isinstance(module, str) else None)
        except KeyError as err:
            message = str(err.args[0]) if err.args else f"unknown image tokenizer {name!r}"
            if "import" not in message:  # unless the registry's message already says how
                message += " (a custom tokenizer's module must be imported before loading it)"
            raise KeyError(f"{message}; in {config_file}") from None
        if cls is not ImageTokenizer and not issubclass(target, cls):
            raise ValueError(f"{path} holds a {name!r} tokenizer, not a {cls.__name__}")
        with io.config_errors(config_file, "image tokenizer"):
            model = target(**config)
        model = io.load_typed_weights(model, path / WEIGHTS_NAME, config_file, meta)
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
    if not items:
        raise ValueError("no images given")
    arrays = []
    for img in items:
        if not isinstance(img, Image.Image):
            raise ValueError(f"expected PIL images, got {type(img).__name__}")
        if img.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {img.mode!r} (convert it explicitly)")
        arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"images in one batch must share a size, got {sorted(sizes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_pil(images: Tensor) -> list[Image.Image]:
    """float [B, 3, H, W] in [0, 1] -> list of PIL RGB images (values outside are clamped)."""
    if (not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3
            or images.shape[2] == 0 or images.shape[3] == 0):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a float [B, 3, H, W] tensor, got {shape}")
    if not images.is_floating_point():
        # a uint8 0..255 tensor would clamp to a black-and-white image, silently
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype} (uint8 pixels: "
                         "divide by 255)")
    if images.shape[0] and not bool(torch.isfinite(images).all()):
        raise ValueError("images contain non-finite values (NaN or inf)")
    arr = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(a.numpy(), mode="RGB") for a in arr]
