"""CLIPScore (Hessel et al., 2021) with a CLIP loaded from a LOCAL ``transformers`` directory.

Per image-caption pair the score is ``100 * max(cos(E_img, E_txt), 0)``, averaged over pairs (the
scale torchmetrics reports). The computation is unigen's own rather than
``torchmetrics.multimodal.CLIPScore``: that class accepts only hub model names or a loader
callable, and with transformers 5 ``get_image_features`` returns a model output, not a tensor,
which it does not handle. A directory is anything ``CLIPModel.save_pretrained`` +
``CLIPProcessor.save_pretrained`` wrote: an OpenAI CLIP copied to disk or a small CLIP trained by
``recipes/clip_shapes.yaml``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from unigen.metrics.base import TEXT_IMAGE, check_same_length, register_metric
from unigen.metrics.features import check_images, files_sha1

# the files of a CLIP directory that hold weights (one file, or the shards of a large model)
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")

_HOW_TO_GET = ("train one with `unigen fit --config recipes/clip_shapes.yaml --export_dir DIR`, or "
               "save an OpenAI CLIP there with CLIPModel/CLIPProcessor.save_pretrained")


def _as_tensor(output: Any) -> Tensor:
    # transformers < 5 returns the projected embeddings; 5.x a model output whose pooler_output is
    return output if torch.is_tensor(output) else output.pooler_output


class ClipEncoder(nn.Module):
    """A ``CLIPModel`` and its ``CLIPProcessor``: unigen images ([0, 1]) and captions in,
    L2-normalised embeddings out."""

    def __init__(self, model: nn.Module, processor: Any, source: str = "") -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.source = source
        self._sha1: str | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "ClipEncoder":
        from transformers import CLIPModel, CLIPProcessor

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"CLIP directory not found: {path}; {_HOW_TO_GET}")
        for name in ("config.json", "tokenizer_config.json"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"CLIP directory {path} lacks {name}; {_HOW_TO_GET}")
        try:
            model = CLIPModel.from_pretrained(path, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            first = str(err).splitlines()[0]
            raise ValueError(f"cannot load a CLIP from {path}: {first}") from None
        return cls(model.eval(), processor, str(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def weights_sha1(self) -> str:
        """sha1 of the weights files in :attr:`source` (name order); of the parameters in memory
        when the encoder was not loaded from a directory."""
        if self._sha1 is None:
            files = (sorted({f for pattern in _WEIGHT_PATTERNS
                             for f in Path(self.source).glob(pattern)})
                     if self.source and Path(self.source).is_dir() else [])
            if files:
                self._sha1 = files_sha1(files)
            else:
                digest = hashlib.sha1()
                for key, value in sorted(self.model.state_dict().items()):
                    digest.update(key.encode())
                    digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                                  .numpy().tobytes())
                self._sha1 = digest.hexdigest()
        return self._sha1

    def describe(self) -> dict[str, Any]:
        """Where the CLIP was read from and the sha1 of its weights."""
        return {"path": self.source, "weights_sha1": self.weights_sha1()}

    @property
    def max_text_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def pixel_values(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> the processor's pixel values (resize, crop, normalise)."""
        check_images(images)
        # HF image processors expect 0..255 images (they rescale by 1/255 themselves)
        as_uint8 = (images.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu()
        pixels = self.processor(images=list(as_uint8), return_tensors="pt")["pixel_values"]
        return pixels.to(self.device)

    def text_inputs(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of str")
        enc = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True,
                             max_length=self.max_text_length)
        return {"input_ids": enc["input_ids"].to(self.device),
                "attention_mask": enc["attention_mask"].to(self.device)}

    def encode_images(self, images: Tensor) -> Tensor:
        out = self.model.get_image_features(pixel_values=self.pixel_values(images))
        return nn.functional.normalize(_as_tensor(out), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        out = self.model.get_text_features(**self.text_inputs(texts))
        return nn.functional.normalize(_as_tensor(out), dim=-1)


@register_metric("clip_score", TEXT_IMAGE)
class CLIPScore(Metric):
    """Mean ``100 * max(cos, 0)`` over (image, caption) pairs; ``clip`` is a local directory or a
    loaded :class:`ClipEncoder`."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, clip: str | os.PathLike | ClipEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder = clip if isinstance(clip, ClipEncoder) else ClipEncoder.from_pretrained(clip)
        self.encoder.requires_grad_(False)
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def pair_scores(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        check_same_length(images, texts, "images", "texts")
        with torch.no_grad():
            cos = (self.encoder.encode_images(images) * self.encoder.encode_texts(texts)).sum(-1)
        return 100.0 * cos.double().clamp(min=0)

    def update(self, images: Tensor, texts: Sequence[str]) -> None:
        scores = self.pair_scores(images, texts)
        self.score_sum += scores.sum().to(self.score_sum.device)
        self.count += scores.numel()

    def compute(self) -> Tensor:
        if self.count == 0:
            raise RuntimeError("clip_score: compute() called before any update()")
        return self.score_sum / self.count

    def describe(self) -> dict[str, Any]:
        return {"clip": self.encoder.describe()}
