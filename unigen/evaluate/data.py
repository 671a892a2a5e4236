"""Evaluation data: every source (registered in :data:`EVAL_DATA`) yields one :class:`EvalSample`
per index, an image plus the texts each task needs.
"""

from __future__ import annotations

import inspect
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from torch import Tensor

from unigen.data.shapes import (Scene, ShapesWorld, captions, description, render_array,
                                 render_tensor)
from unigen.evaluate.config import _coerce
from unigen.registry import Registry


@dataclass
class EvalSample:
    """One evaluation item: what each task feeds the model and scores against."""

    index: int
    image: Tensor  # [3, H, W] in [0, 1]: the real image (FID reference, caption / VQA input)
    prompt: str  # t2i prompt
    references: list[str]  # reference captions (BLEU-4 / CIDEr-D)
    question: str = ""
    answer: str = ""
    question_kind: str = ""
    scene: Any = None  # a shapes Scene when the source has one (checker caption metrics)


class EvalData(ABC):
    """A fixed, ordered evaluation set; sample ``i`` is a pure function of the source options."""

    has_scenes: bool = False

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def sample(self, index: int) -> EvalSample: ...

    def first_missing(self, fields: Sequence[str]) -> tuple[int, str] | None:
        """``(index, field)`` of the first sample with an empty text ``field`` (an
        :class:`EvalSample` attribute) among ``fields``; None when every sample has them all.
        Checked before anything is generated; sources override it to skip loading images."""
        for index in range(len(self)):
            found = _missing(self.sample(index), fields)
            if found is not None:
                return index, found
        return None


def _has_text(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple)):  # references: one text is enough
        return any(_has_text(v) for v in value)
    return value is not None


def _missing(sample: EvalSample, fields: Sequence[str]) -> str | None:
    return next((f for f in fields if not _has_text(getattr(sample, f))), None)


EVAL_DATA: Registry[type[EvalData]] = Registry("eval data source")


@EVAL_DATA.register("shapes")
class ShapesEvalData(EvalData):
    """The shapes world (``heldout`` = compositions never seen in training); all caption templates
    that apply to a scene and its exhaustive description (a true caption too, the text that
    recipes train captioning on) are its references."""

    has_scenes = True

    def __init__(self, image_size: int, split: str = "heldout", num_samples: int = 64,
                 seed: int = 0) -> None:
        if num_samples < 1:
            raise ValueError(f"data.num_samples must be positive, got {num_samples}")
        self.world = ShapesWorld(split, seed)
        self.num_samples, self.image_size = num_samples, image_size
        render_array(Scene(), image_size)  # validates the size

    def __len__(self) -> int:
        return self.num_samples

    def first_missing(self, fields: Sequence[str]) -> tuple[int, str] | None:
        return None  # the templates give every scene a caption, references, a question, an answer

    def sample(self, index: int) -> EvalSample:
        scene = self.world.scene(index)
        qa = self.world.qa(index, scene)
        references = captions(scene, self.world.rng(index, 1))
        full = description(scene)
        if full not in references:  # a one-object scene's description can equal a template's
            references.append(full)
        return EvalSample(index, render_tensor(scene, self.image_size),
                          self.world.caption(index, scene), references, qa.question, qa.answer,
                          qa.kind, scene)


class _DatasetEvalData(EvalData):
    """A unigen dataset (items: image, caption, question, answer) limited to ``num_samples``."""

    def __init__(self, dataset: Any, num_samples: int | None, what: str) -> None:
        if num_samples is not None and not 1 <= num_samples <= len(dataset):
            raise ValueError(f"data.num_samples must lie in [1, {len(dataset)}] for {what}, got "
                             f"{num_samples}")
        self.dataset = dataset
        self.num_samples = len(dataset) if num_samples is None else num_samples

    def __len__(self) -> int:
        return self.num_samples

    def references(self, index: int, item: dict[str, Any]) -> list[str]:
        return [item["caption"]]

    def sample(self, index: int) -> EvalSample:
        item = self.dataset[index]
        return EvalSample(index, item["image"], item["caption"], self.references(index, item),
                          item["question"], item["answer"])


@EVAL_DATA.register("folder")
class FolderEvalData(_DatasetEvalData):
    """An image folder with ``metadata.jsonl`` (:mod:`unigen.data.imagefolder`); the first
    ``num_samples`` rows (all when null)."""

    def __init__(self, image_size: int, root: str, num_samples: int | None = None,
                 resize: str = "center_crop") -> None:
        from unigen.data.imagefolder import ImageFolderDataset

        super().__init__(ImageFolderDataset(root, image_size, resize), num_samples, str(root))

    def first_missing(self, fields: Sequence[str]) -> tuple[int, str] | None:
        # the metadata rows hold every text, so no image is loaded; the caption is the prompt and
        # the one reference
        column = {"prompt": "text", "references": "text"}
        for index, row in enumerate(self.dataset.rows[:self.num_samples]):
            for field in fields:
                if not getattr(row, column.get(field, field)).strip():
                    return index, field
        return None


@EVAL_DATA.register("fashion_mnist")
class FashionMNISTEvalData(_DatasetEvalData):
    """Fashion-MNIST (local files); every caption template of a sample's class is a reference."""

    def __init__(self, image_size: int, split: str = "test", num_samples: int | None = None,
                 seed: int = 0, root: str | None = None) -> None:
        from unigen.data.fashion_mnist import FashionMNISTDataset

        super().__init__(FashionMNISTDataset(root, split, image_size, num_samples, seed), None,
                         "Fashion-MNIST")

    def first_missing(self, fields: Sequence[str]) -> tuple[int, str] | None:
        return None  # every sample has a templated caption and the class question and answer

    def references(self, index: int, item: dict[str, Any]) -> list[str]:
        from unigen.data.fashion_mnist import CAPTION_TEMPLATES, caption_for

        return [caption_for(item["label"], t) for t in range(len(CAPTION_TEMPLATES))]


def data_options(spec: Mapping[str, Any]) -> tuple[type[EvalData], dict[str, Any]]:
    """The source class named by a recipe's ``data:`` block and its checked options (every key but
    ``source`` and ``image_size``)."""
    options = {k: v for k, v in spec.items() if k not in ("source", "image_size")}
    cls = EVAL_DATA.get(spec["source"])
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    if "image_size" not in params:  # build_data passes the model's size to every source
        raise ValueError(f"eval data source {spec['source']!r} ({cls.__name__}) must take an "
                         "image_size argument: the model's image size is passed to every source")
    hints = typing.get_type_hints(cls.__init__)
    for key, value in options.items():
        if key not in params or key == "image_size":
            known = ["source", "image_size", *(p for p in params if p != "image_size")]
            raise ValueError(f"unknown recipe key 'data.{key}' for source {spec['source']!r}; "
                             f"known: {', '.join(known)}")
        # an unannotated option is passed as the recipe gives it (no type to check it against)
        options[key] = _coerce(value, hints[key], f"data.{key}") if key in hints else value
    signature = inspect.signature(cls.__init__).parameters
    missing = [p for p in params if p != "image_size" and p not in options
               and signature[p].default is inspect.Parameter.empty
               and signature[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if missing:
        raise ValueError(f"data source {spec['source']!r} needs recipe key 'data.{missing[0]}'")
    if spec.get("image_size") is not None:
        _coerce(spec["image_size"], int, "data.image_size")
    return cls, options


def build_data(spec: Mapping[str, Any], model_image_size: int) -> EvalData:
    """The recipe's ``data:`` block -> :class:`EvalData`; its ``image_size`` (optional) must be the
    model's."""
    cls, options = data_options(spec)
    size = spec.get("image_size")
    if size is not None and size != model_image_size:
        raise ValueError(f"data.image_size is {size} but the model makes {model_image_size}x"
                         f"{model_image_size} images")
    return cls(image_size=model_image_size, **options)
