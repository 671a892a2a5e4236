"""Captioned images from a local folder, in the Hugging Face ``imagefolder`` layout.

::

    root/
      metadata.jsonl        one JSON object per line
      0001.png              (file names may also point into sub-folders: "train/0001.png")
      ...

Each line holds ``file_name`` (relative to ``root``) and ``text`` (the caption), and optionally
``question`` + ``answer`` (both or neither) for VQA; other keys are ignored, blank lines skipped.  One
line per image: a repeated ``file_name`` is an error, because the same picture in the train and the
validation split would leak.  Only ``root/metadata.jsonl`` is read (no per-folder metadata, no CSV).

Samples are the dict every unigen dataset returns: ``image`` float ``[3, H, W]`` in ``[0, 1]``,
``caption``, ``question`` / ``answer`` ("" when absent), ``scene`` ("": no scene graph here), ``index``.

Checks.  The metadata is validated at construction, together with each image's header (it exists, is
an image PIL can identify, its size and mode are acceptable): cheap, no pixels decoded.  With
``verify="full"`` every image is also decoded once at construction, which also finds truncated files.
A bad sample is one clear error naming the file (and the metadata line) unless ``skip_bad=True``: then
it is left out, counted in ``num_skipped`` / ``skipped`` and logged as one warning.  A file that only
fails when decoded (truncation, with ``verify="header"``) still raises at load time, whatever
``skip_bad`` says: a dataset cannot drop an index it has already promised.

Modes.  ``convert_mode=True`` (default) turns grayscale, palette, CMYK... into RGB and composites
transparent images onto white (dropping alpha would expose whatever colour transparent pixels hold);
``convert_mode=False`` makes any non-RGB image a bad sample.  16/32-bit and float images (modes
``I``, ``I;16``, ``F``) are always refused: their value range is not defined by the file.  EXIF
orientation is applied (photos from cameras are stored rotated).

Resize policies (bicubic): ``center_crop`` scales the shorter side to ``image_size`` and crops the
centre; ``resize`` stretches to a square; ``pad`` scales the longer side to ``image_size`` and pads
with ``pad_value``; ``none`` requires images of exactly ``image_size`` x ``image_size``.

Training (:class:`ImageFolderDataModule`, and ``FashionMNISTDataModule`` through
:class:`SplitDataModule`): the order is a pure function of ``(seed, epoch)``, each DDP rank reads a
disjoint share of every epoch (Lightning does not re-wrap the sampler) and a run resumed from a
mid-epoch checkpoint continues with the batch after the last one trained
(:mod:`unigen.data.resumable`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset

from unigen.data.batch_transforms import BatchTransforms
from unigen.data.loaders import data_loader
from unigen.data.resumable import shuffled_loader

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
ResizePolicy = Literal["center_crop", "resize", "pad", "none"]
RESIZE_POLICIES: tuple[str, ...] = ("center_crop", "resize", "pad", "none")
VerifyLevel = Literal["header", "full"]
_CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX",
                                "CMYK", "YCbCr", "LAB", "HSV"})
_ALPHA_BACKGROUND = (255, 255, 255)


class BadSampleError(ValueError):
    """One sample (metadata line or image file) that cannot be used; the message names it."""


@dataclass(frozen=True)
class MetadataRow:
    line: int  # 1-based line number in metadata.jsonl
    file_name: str
    text: str
    question: str = ""
    answer: str = ""


def parse_metadata_line(raw: str, line: int, source: str | os.PathLike = METADATA_FILE
                        ) -> MetadataRow:
    """One ``metadata.jsonl`` line -> :class:`MetadataRow`; :class:`BadSampleError` names the line."""
    where = f"{source} line {line}"
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as err:
        raise BadSampleError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise BadSampleError(f"{where} must be a JSON object, got {type(obj).__name__}")
    fields: dict[str, str] = {}
    for key in ("file_name", "text", "question", "answer"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise BadSampleError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        fields[key] = value or ""
    if not fields["file_name"].strip():
        raise BadSampleError(f"{where} has no 'file_name'")
    if not fields["text"].strip():
        raise BadSampleError(f"{where} ({fields['file_name']}) has an empty or missing 'text'")
    if bool(fields["question"].strip()) != bool(fields["answer"].strip()):
        raise BadSampleError(f"{where} ({fields['file_name']}) has a question without an answer "
                             "or an answer without a question")
    return MetadataRow(line=line, **fields)


def read_metadata(path: str | os.PathLike, skip_bad: bool = False
                  ) -> tuple[list[MetadataRow], list[tuple[str, str]]]:
    """All rows of a ``metadata.jsonl`` and the ``(where, why)`` of the lines left out (skip_bad)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path} (an image folder needs a "
                                f"{METADATA_FILE} with file_name and text per line)")
    rows: list[MetadataRow] = []
    skipped: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for line, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = parse_metadata_line(raw, line, path)
                key = os.path.normpath(row.file_name)
                if key in first_line:
                    raise BadSampleError(f"{path} line {line} repeats file_name {row.file_name!r} "
                                         f"of line {first_line[key]}")
            except BadSampleError as err:
                if not skip_bad:
                    raise
                skipped.append((f"{path} line {line}", str(err)))
                continue
            first_line[key] = line
            rows.append(row)
    return rows, skipped


# -- images --------------------------------------------------------------------------------------
def check_image_header(path: Path, image_size: int, resize: str, convert_mode: bool,
                       min_size: int | None) -> None:
    """Cheap checks that need no pixel decoding; raises :class:`BadSampleError` naming ``path``."""
    if not path.is_file():
        raise BadSampleError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            size, mode = img.size, img.mode
    except (UnidentifiedImageError, OSError) as err:
        raise BadSampleError(f"cannot read image {path}: {err}") from None
    if mode not in _CONVERTIBLE_MODES:
        raise BadSampleError(f"image {path} has mode {mode!r}, which unigen does not convert "
                             "(save it as 8-bit RGB)")
    if not convert_mode and mode != "RGB":
        raise BadSampleError(f"image {path} has mode {mode!r}, not RGB (pass convert_mode=True to "
                             "convert it)")
    if min_size is not None and min(size) < min_size:
        raise BadSampleError(f"image {path} is {size[0]}x{size[1]}, smaller than min_size={min_size}")
    if resize == "none" and size != (image_size, image_size):
        raise BadSampleError(f"image {path} is {size[0]}x{size[1]}, not {image_size}x{image_size} "
                             "(resize='none' does not resize)")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any 8-bit PIL mode -> RGB, compositing transparency onto white."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _ALPHA_BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def load_image(path: Path, convert_mode: bool) -> Image.Image:
    """Decode a whole image file into an RGB PIL image; errors name the file."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise BadSampleError(f"cannot decode image {path}: {err}") from None
    if img.mode not in _CONVERTIBLE_MODES:  # as check_image_header: 16/32-bit or float pixels
        raise BadSampleError(f"image {path} has mode {img.mode!r}, which unigen does not convert "
                             "(save it as 8-bit RGB)")
    if img.mode != "RGB":
        if not convert_mode:
            raise BadSampleError(f"image {path} has mode {img.mode!r}, not RGB (pass "
                                 "convert_mode=True to convert it)")
        img = to_rgb(img)
    return img


def fit_image(img: Image.Image, size: int, policy: str, pad_value: float = 0.0) -> Image.Image:
    """Bring ``img`` to ``size`` x ``size`` with one of :data:`RESIZE_POLICIES`."""
    w, h = img.size
    if policy == "none":
        if (w, h) != (size, size):
            raise BadSampleError(f"image is {w}x{h}, not {size}x{size} (resize='none')")
        return img
    if policy == "resize":
        return img.resize((size, size), Image.Resampling.BICUBIC)
    if policy == "center_crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    if policy == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        fill = round(255 * pad_value)
        canvas = Image.new("RGB", (size, size), (fill, fill, fill))
        canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
        return canvas
    raise ValueError(f"unknown resize policy {policy!r}; known: {', '.join(RESIZE_POLICIES)}")


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float ``[3, H, W]`` in ``[0, 1]``."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def make_sample(image: torch.Tensor, caption: str, index: int, question: str = "",
                answer: str = "", **extra: Any) -> dict[str, Any]:
    """The sample dict shared by unigen datasets."""
    return {"image": image, "caption": caption, "question": question, "answer": answer,
            "scene": "", "index": index, **extra}


class ImageFolderDataset(Dataset):
    """Images + ``metadata.jsonl`` (module docstring for the layout, checks and policies)."""

    def __init__(self, root: str | os.PathLike, image_size: int = 64,
                 resize: ResizePolicy = "center_crop", skip_bad: bool = False,
                 convert_mode: bool = True, verify: VerifyLevel = "header",
                 min_size: int | None = None, pad_value: float = 0.0) -> None:
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"unknown resize policy {resize!r}; known: {', '.join(RESIZE_POLICIES)}")
        if verify not in ("header", "full"):
            raise ValueError(f"verify must be 'header' or 'full', got {verify!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not 0.0 <= pad_value <= 1.0:
            raise ValueError(f"pad_value must lie in [0, 1], got {pad_value}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.image_size, self.resize, self.convert_mode = image_size, resize, convert_mode
        self.pad_value = pad_value
        rows, skipped = read_metadata(self.root / METADATA_FILE, skip_bad)
        self.rows: list[MetadataRow] = []
        for row in rows:
            try:
                path = self._path(row)
                check_image_header(path, image_size, resize, convert_mode, min_size)
                if verify == "full":
                    fit_image(load_image(path, convert_mode), image_size, resize, pad_value)
            except BadSampleError as err:
                if not skip_bad:
                    raise BadSampleError(f"{err} ({METADATA_FILE} line {row.line})") from None
                skipped.append((f"{METADATA_FILE} line {row.line}", str(err)))
                continue
            self.rows.append(row)
        self.skipped: list[tuple[str, str]] = skipped
        if skipped:
            logger.warning("skipped %d bad samples in %s; first: %s", len(skipped), self.root,
                           skipped[0][1])
        if not self.rows:
            raise ValueError(f"no usable samples in {self.root} ({len(skipped)} skipped)")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def _path(self, row: MetadataRow) -> Path:
        path = (self.root / row.file_name).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise BadSampleError(f"file_name {row.file_name!r} points outside {self.root}")
        return path

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} samples")
        row = self.rows[index]
        path = self._path(row)
        img = fit_image(load_image(path, self.convert_mode), self.image_size, self.resize,
                        self.pad_value)
        return make_sample(image_to_tensor(img), row.text, index, row.question, row.answer)

    def texts(self) -> list[str]:
        """Every caption, question and answer: the corpus to train a text tokenizer on."""
        return [t for r in self.rows for t in (r.text, r.question, r.answer) if t]


# -- data modules --------------------------------------------------------------------------------
def seeded_split(n: int, num_val: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, val) index lists: a seeded permutation, each part kept in order."""
    if not 0 <= num_val < n:
        raise ValueError(f"cannot hold out {num_val} of {n} samples for validation and keep any "
                         "for training")
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[num_val:].tolist()), sorted(perm[:num_val].tolist())


class SplitDataModule(BatchTransforms, L.LightningDataModule):
    """Loaders shared by unigen data modules: a seeded shuffle for train, fixed order otherwise.

    The training order is a pure function of ``(seed, epoch)``, split across ranks under DDP (each
    rank a disjoint share of every epoch) and resumed exactly mid-epoch: the loader is
    :func:`unigen.data.resumable.shuffled_loader` (see there).  The last partial batch is kept.

    Subclasses fill ``train_set`` / ``val_set`` (and optionally ``test_set``) in ``setup``."""

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _require(self, dataset: Dataset | None, name: str) -> Dataset:
        if dataset is None:
            # a user error when a verb asks for a split the data does not have (`unigen test` on
            # an image folder, which splits into train and validation only)
            raise ValueError(f"{type(self).__name__} has no {name} set (the data has none, or "
                             "setup() was not called)")
        return dataset

    def _loader(self, dataset: Dataset | None, name: str) -> DataLoader:
        return data_loader(self._require(dataset, name), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=self.worker_collate())

    def train_dataloader(self) -> DataLoader:
        return shuffled_loader(self, self._require(self.train_set, "train"), self.seed,
                               self.batch_size, self.num_workers, drop_last=False,
                               collate_fn=self.worker_collate())

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is not None and len(self.val_set) == 0:
            return []  # validation disabled
        return self._loader(self.val_set, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        """``unigen predict`` reads the test set, as :class:`ShapesDataModule` does."""
        return self._loader(self.test_set, "test")


class ImageFolderDataModule(SplitDataModule):
    """An image folder split into train / validation by a seeded permutation of its rows."""

    def __init__(self, root: str, image_size: int = 64, batch_size: int = 32,
                 val_fraction: float = 0.05, seed: int = 0, num_workers: int = 0,
                 resize: ResizePolicy = "center_crop", skip_bad: bool = False,
                 convert_mode: bool = True, verify: VerifyLevel = "header",
                 min_size: int | None = None, pad_value: float = 0.0) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.dataset: ImageFolderDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        hp = self.hparams
        self.dataset = ImageFolderDataset(hp.root, hp.image_size, hp.resize, hp.skip_bad,
                                          hp.convert_mode, hp.verify, hp.min_size, hp.pad_value)
        n = len(self.dataset)
        # any positive fraction keeps at least one validation sample
        num_val = max(1, round(hp.val_fraction * n)) if hp.val_fraction > 0 else 0
        train_idx, val_idx = seeded_split(n, num_val, self.seed)
        self.train_set, self.val_set = Subset(self.dataset, train_idx), Subset(self.dataset, val_idx)


__all__ = ["BadSampleError", "ImageFolderDataModule", "ImageFolderDataset", "MetadataRow",
           "RESIZE_POLICIES", "SplitDataModule", "fit_image", "image_to_tensor", "load_image",
           "make_sample", "parse_metadata_line", "read_metadata", "seeded_split", "to_rgb"]
