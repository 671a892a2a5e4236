"""Perceptual (feature-space) reconstruction loss for tokenizer training.

``PerceptualLoss`` is LPIPS without its learned per-channel weights (Zhang et al. 2018, the "baseline"
variant): features from a frozen network are unit-normalised along channels at each tap, and the
squared differences are summed over channels, averaged over positions and summed over taps.  VQGAN
(Esser et al. 2021) and LlamaGen train tokenizers with this loss on VGG16 features.

The feature network is pluggable (:class:`FeatureNetwork`).  Pretrained weights are never downloaded:
:class:`VGG16Features` reads a local file holding torchvision's ``vgg16`` state dict (safetensors, or
a ``.pth`` read with ``weights_only=True``).  :class:`ConvFeatures` builds any VGG-style stack and may be
left randomly initialised (seeded), which still gives a usable multi-scale structural signal and lets
tests exercise the loss offline.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigen import io

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def load_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a local state dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature network weights file not found: {path}")
    if path.suffix == ".safetensors":
        return io.load_safetensors(path)
    if path.suffix in (".pt", ".pth", ".bin"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        return state
    raise ValueError(f"unsupported weights file type {path.suffix!r} for {path} "
                     "(use .safetensors, .pt or .pth)")


class FeatureNetwork(nn.Module, ABC):
    """A frozen network mapping images ``[B, 3, H, W]`` in [0, 1] to a list of feature maps."""

    @abstractmethod
    def forward(self, images: Tensor) -> list[Tensor]: ...


class ConvFeatures(FeatureNetwork):
    """VGG-style stack: stages of 3x3 conv + ReLU separated by 2x2 max-pooling, tapped after each stage.

    The module layout (``features.<i>``) is torchvision's VGG, so its state dicts load unchanged.

    Args:
        stages: output channels of the convs of each stage.
        weights_path: local weights file; ``None`` keeps the seeded random initialisation.
        seed: seed of the random initialisation.
    """

    def __init__(self, stages: Sequence[Sequence[int]] = ((16, 16), (32, 32), (64, 64)),
                 weights_path: str | None = None, seed: int = 0) -> None:
        super().__init__()
        if not stages or any(not stage for stage in stages):
            raise ValueError(f"stages must be a non-empty list of non-empty channel lists, got {stages}")
        layers: list[nn.Module] = []
        self.taps: list[int] = []
        channels = 3
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for index, stage in enumerate(stages):
                if index:
                    layers.append(nn.MaxPool2d(2, 2))
                for out in stage:
                    layers += [nn.Conv2d(channels, int(out), 3, padding=1), nn.ReLU(inplace=True)]
                    channels = int(out)
                self.taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights_path is not None:
            self._load(weights_path)
        self.requires_grad_(False)
        self.eval()

    def _load(self, weights_path: str) -> None:
        state = {k: v for k, v in load_weights(weights_path).items() if k.startswith("features.")}
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as err:  # torch lists every problem on its own line; keep the first
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise ValueError(f"{weights_path} does not match the feature network: {first}") from None

    def train(self, mode: bool = True) -> "ConvFeatures":
        return super().train(False)  # frozen: never leaves eval mode

    def forward(self, images: Tensor) -> list[Tensor]:
        x = (images - self.mean) / self.std
        taps = set(self.taps)
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in taps:
                out.append(x)
            if index == self.taps[-1]:
                break
        return out


class VGG16Features(ConvFeatures):
    """VGG16 tapped at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the LPIPS taps).

    ``weights_path``: a local file with torchvision's ``vgg16`` ImageNet state dict (``features.*`` keys
    are used).  It is required: a randomly initialised VGG16 is not what anyone means by LPIPS.
    """

    def __init__(self, weights_path: str) -> None:
        super().__init__(stages=VGG16_STAGES, weights_path=weights_path)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on a frozen :class:`FeatureNetwork`; ``weight`` scales it in the total loss."""

    def __init__(self, network: FeatureNetwork, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"perceptual weight must be >= 0, got {weight}")
        self.network = network
        self.weight = weight

    def forward(self, reconstructions: Tensor, targets: Tensor) -> Tensor:
        total = reconstructions.new_zeros(())
        for rec, tgt in zip(self.network(reconstructions), self.network(targets)):
            diff = F.normalize(rec, dim=1, eps=1e-10) - F.normalize(tgt, dim=1, eps=1e-10)
            total = total + diff.pow(2).sum(dim=1).mean()
        return total
