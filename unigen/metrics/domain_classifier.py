"""A small CNN classifier trained on unigen's own data, used as a domain feature extractor.

InceptionV3 features say little about 64x64 synthetic shapes or Fashion-MNIST; a classifier trained
on the domain gives features that separate what matters there (the idea of domain-specific FID
backbones, e.g. Kynkaanniemi et al., 2023, "The role of ImageNet classes in FID"). Its penultimate
activations feed FID/KID and, for single-label tasks, its logits feed the Inception Score.
A directory holds ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from unigen import io

TYPE_NAME = "domain_classifier"
FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = io.CONFIG_FILE, io.WEIGHTS_FILE


def _conv_block(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU(),
        # strided conv rather than pooling so the network learns what to keep at each scale
        nn.Conv2d(c_out, c_out, 3, stride=2, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU(),
    )


class DomainClassifier(nn.Module):
    """Conv blocks (each halves the resolution) -> global average pool -> MLP feature -> head.

    ``multilabel=False``: one class per image (softmax); ``True``: independent labels (sigmoid),
    e.g. which (color, shape) objects a scene contains."""

    def __init__(self, class_names: Sequence[str], image_size: int = 64, in_channels: int = 3,
                 channels: Sequence[int] = (32, 64, 128), feature_dim: int = 128,
                 multilabel: bool = False, groups: int = 8) -> None:
        super().__init__()
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise ValueError("class_names must list at least 2 distinct classes, got "
                             f"{list(class_names)}")
        if any(c % groups for c in channels):
            raise ValueError(f"every entry of channels {list(channels)} must be divisible by "
                             f"groups={groups}")
        self.config: dict[str, Any] = {
            "class_names": list(class_names), "image_size": image_size, "in_channels": in_channels,
            "channels": list(channels), "feature_dim": feature_dim, "multilabel": multilabel,
            "groups": groups}
        widths = [in_channels, *channels]
        self.blocks = nn.Sequential(*[_conv_block(a, b, groups)
                                      for a, b in zip(widths, widths[1:])])
        self.feature = nn.Sequential(nn.Linear(channels[-1], feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, len(class_names))

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"]

    @property
    def multilabel(self) -> bool:
        return self.config["multilabel"]

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, C, H, W] in [0, 1] -> (features [B, feature_dim], logits [B, num_classes])."""
        x = self.blocks(images * 2.0 - 1.0)
        x = rearrange(x, "b c h w -> b c (h w)").mean(dim=-1)
        features = self.feature(x)
        return features, self.head(features)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        io.save_typed_model(path, self, TYPE_NAME, FORMAT_VERSION, self.config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
                        ) -> "DomainClassifier":
        path, meta = io.read_model_dir(path, "domain classifier", "train one with `unigen fit "
                                       "--config recipes/classifier_<data>.yaml`, e.g. "
                                       "classifier_fashion_mnist.yaml or classifier_shapes.yaml",
                                       CONFIG_NAME)
        if meta.get("type") != TYPE_NAME or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path / CONFIG_NAME} is not a {TYPE_NAME} config of format version "
                             f"{FORMAT_VERSION} (type {meta.get('type')!r}, "
                             f"version {meta.get('format_version')!r})")
        model = io.load_typed_weights(cls(**meta["config"]), path / WEIGHTS_NAME,
                                      path / CONFIG_NAME, meta)
        return model.to(map_location).eval()
