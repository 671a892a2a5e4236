"""diffusers ``VQModel`` <-> unigen image tokenizer.

:class:`DiffusersVQTokenizer` wraps a ``VQModel`` (the VQGAN of Esser et al. 2021 as packaged by
diffusers, e.g. aMUSEd's tokenizer) so any such checkpoint can tokenize images for the unified model.
:func:`export_to_diffusers` writes a trained unigen tokenizer as a ``VQModel`` directory.

What is exportable: a :class:`~unigen.tokenizers.autoencoder.QuantizedAutoencoder` shares the
``VQModel`` layout (same diffusers ``Encoder``/``Decoder``, ``quant_conv``, ``post_quant_conv``), so
those weights copy one to one; only the quantizer must be an explicit-codebook nearest-neighbour
lookup.  VQ exports exactly (euclidean or cosine: with unit-norm codes the euclidean nearest neighbour
is the cosine one).  LFQ exports exactly too (its code is the nearest corner ``{-1, 1}^d``; the
codebook is materialised, so keep ``codebook_size`` moderate).  FSQ does not export: its bounded
per-channel rounding is not a nearest-neighbour lookup on the same latent.  Exported codes equal
ours; decodes agree to float rounding (``cdist`` vs. matmul distances).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import VQModel
from torch import Tensor

from unigen import io
from unigen.tokenizers.autoencoder import QuantizedAutoencoder, as_bool
from unigen.tokenizers.base import ImageTokenizer, TokenizerOutput, register_tokenizer

DIFFUSERS_CONFIG_NAME = "config.json"
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@register_tokenizer("diffusers_vq")
class DiffusersVQTokenizer(ImageTokenizer):
    """A diffusers ``VQModel`` behind the unigen tokenizer interface.

    Args:
        vqmodel_config: the ``VQModel`` config (the content of its ``config.json``).
        normalize: the model expects images in ``[-1, 1]`` (diffusers' default image processing);
            ``False`` feeds ``[0, 1]`` as is (e.g. aMUSEd's VQ-GAN) and reads outputs in ``[0, 1]``.
    """

    def __init__(self, vqmodel_config: dict[str, Any], normalize: bool = True) -> None:
        super().__init__()
        if not isinstance(vqmodel_config, Mapping):
            raise ValueError(f"vqmodel_config must be a mapping (a VQModel config), got "
                             f"{type(vqmodel_config).__name__}")
        normalize = as_bool("normalize", normalize)
        config = {k: v for k, v in dict(vqmodel_config).items() if not k.startswith("_")}
        if config.get("in_channels", 3) != 3 or config.get("out_channels", 3) != 3:
            raise ValueError("a VQModel image tokenizer needs in_channels = out_channels = 3, got "
                             f"{config.get('in_channels')} and {config.get('out_channels')}")
        with torch.random.fork_rng(devices=[]):  # random init is overwritten by the checkpoint
            torch.manual_seed(0)
            self.model = VQModel.from_config(config)
        public = {k: v for k, v in self.model.config.items() if not k.startswith("_")}
        self.config = {"vqmodel_config": _jsonable(public), "normalize": normalize}
        self.normalize = normalize

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.num_vq_embeddings)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    @property
    def last_layer(self) -> Tensor:
        return self.model.decoder.conv_out.weight

    def _latents(self, images: Tensor) -> Tensor:
        return self.model.encode(images * 2.0 - 1.0 if self.normalize else images).latents

    def _decode_quantized(self, quant: Tensor) -> Tensor:
        # exactly VQModel.decode after its quantization step
        spatial = quant if self.model.config.norm_type == "spatial" else None
        decoded = self.model.decoder(self.model.post_quant_conv(quant), spatial)
        return (decoded + 1.0) / 2.0 if self.normalize else decoded

    def forward(self, images: Tensor) -> TokenizerOutput:
        self.check_images(images)
        latents = self._latents(images)
        quant, loss, (_, _, indices) = self.model.quantize(latents)
        codes = indices.reshape(latents.shape[0], *latents.shape[2:]).long()
        return TokenizerOutput(self._decode_quantized(quant), codes, {"vq": loss})

    def encode_codes(self, images: Tensor) -> Tensor:
        latents = self._latents(images)
        _, _, (_, _, indices) = self.model.quantize(latents)
        return indices.reshape(latents.shape[0], *latents.shape[2:])

    def decode_codes(self, codes: Tensor) -> Tensor:
        b, h, w = codes.shape
        dim = self.model.quantize.vq_embed_dim
        quant = self.model.quantize.get_codebook_entry(codes.reshape(-1), (b, h, w, dim))
        return self._decode_quantized(quant)

    @classmethod
    def from_diffusers(cls, path: str | os.PathLike, normalize: bool = True,
                       map_location: str | torch.device = "cpu") -> "DiffusersVQTokenizer":
        """Load a local diffusers ``VQModel`` directory (``config.json`` +
        ``diffusion_pytorch_model.safetensors``); nothing is downloaded."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"diffusers VQModel directory not found: {path}")
        config_file = path / DIFFUSERS_CONFIG_NAME
        config = io.read_json_object(config_file, "diffusers VQModel config")
        if config.get("_class_name", "VQModel") != "VQModel":
            raise ValueError(f"{config_file} describes a {config['_class_name']!r}, not a VQModel")
        # diffusers' own errors ("Bogus does not exist.") do not say which file they come from
        with io.config_errors(config_file, "diffusers VQModel"):
            model = cls(config, normalize=normalize)
        # strict and one line (torch's mismatch error is a page that names no file)
        io.load_weights(model.model, path / DIFFUSERS_WEIGHTS_NAME)
        return model.to(map_location).eval()


def export_to_diffusers(tokenizer: QuantizedAutoencoder, path: str | os.PathLike,
                        sample_size: int = 64) -> None:
    """Write ``tokenizer`` as a diffusers ``VQModel`` directory (atomically).

    The result expects images in ``[-1, 1]`` (load it with ``DiffusersVQTokenizer.from_diffusers(path)``
    or ``VQModel.from_pretrained(path)``).  Raises ``ValueError`` for quantizers without an explicit
    nearest-neighbour codebook (FSQ); see the module docstring.
    """
    if not isinstance(tokenizer, QuantizedAutoencoder):
        raise TypeError(f"only QuantizedAutoencoder tokenizers export to a VQModel, got "
                        f"{type(tokenizer).__name__}")
    codebook = tokenizer.quantizer.nearest_neighbour_codebook()
    cfg = tokenizer.config
    levels = len(cfg["block_out_channels"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vqmodel = VQModel(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(cfg["block_out_channels"]),
            layers_per_block=cfg["layers_per_block"], act_fn="silu",
            latent_channels=cfg["latent_channels"], sample_size=sample_size,
            num_vq_embeddings=codebook.shape[0], norm_num_groups=cfg["norm_num_groups"],
            vq_embed_dim=codebook.shape[1], norm_type="group",
            mid_block_add_attention=cfg["mid_block_attention"])
    for name in ("encoder", "quant_conv", "post_quant_conv", "decoder"):
        getattr(vqmodel, name).load_state_dict(getattr(tokenizer, name).state_dict())
    with torch.no_grad():
        vqmodel.quantize.embedding.weight.copy_(codebook)
    with io.atomic_directory(path, marker="config.json") as tmp:  # diffusers' own
        vqmodel.save_pretrained(tmp, safe_serialization=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
