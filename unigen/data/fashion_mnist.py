"""Fashion-MNIST (Xiao et al. 2017) from Debian's ``dataset-fashion-mnist`` package.

The package installs the four original IDX files (gzip) under ``/usr/share/datasets/fashion-mnist``;
nothing is downloaded.  Other folders holding the same four files (gzipped or not) work via ``root``.

Samples are the dict every unigen dataset returns, plus ``label``: the 28x28 grayscale image is padded
with black to 32x32 (so that 8x and 16x tokenizer grids divide it), then resized bicubically when
``image_size`` is not 32 (the framing is the same at every size), and replicated to 3 channels.
``caption`` is the class in one of :data:`CAPTION_TEMPLATES` ("a photo of a sneaker", "an ankle
boot"), fixed per sample by ``seed``; ``question`` is "what is this?" and ``answer`` the class name.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from einops import repeat
from PIL import Image
from torch.utils.data import Dataset, Subset

from unigen.data.imagefolder import SplitDataModule, make_sample, seeded_split

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "install it with: apt-get install dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# (answer, noun phrase with its article); the official names are "T-shirt/top", "Trouser", ...
CLASSES: tuple[tuple[str, str], ...] = (
    ("t-shirt", "a t-shirt"), ("trousers", "a pair of trousers"), ("pullover", "a pullover"),
    ("dress", "a dress"), ("coat", "a coat"), ("sandal", "a sandal"), ("shirt", "a shirt"),
    ("sneaker", "a sneaker"), ("bag", "a bag"), ("ankle boot", "an ankle boot"),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in CLASSES)
CAPTION_TEMPLATES: tuple[str, ...] = ("{}", "a photo of {}", "a picture of {}",
                                      "a black and white photo of {}", "a product photo of {}")
QUESTION = "what is this?"
NATIVE_SIZE, PADDED_SIZE = 28, 32

# IDX type byte -> numpy dtype (multi-byte values are big-endian)
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format), gzipped or not, into a numpy array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read IDX file {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'none'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"IDX file {path} holds {len(raw) - header} data bytes, its header "
                         f"{shape} of {dtype} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    hint = INSTALL_HINT if root == DEBIAN_ROOT else f"{INSTALL_HINT}, or pass root= a folder holding it"
    raise FileNotFoundError(f"Fashion-MNIST file not found: {root / (stem + '.gz')}; {hint}")


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of one split."""
    if split not in FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; known: {', '.join(FILES)}")
    root = DEBIAN_ROOT if root is None else Path(root)
    image_file, label_file = (_find(root, stem) for stem in FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (NATIVE_SIZE,) * 2:
        raise ValueError(f"{image_file} must hold uint8 [N, 28, 28] images, got {images.dtype} "
                         f"{list(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{label_file} must hold {len(images)} labels, got shape {list(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"{label_file} has labels outside [0, {len(CLASSES)})")
    return images, labels.astype(np.int64)


def caption_for(label: int, template: int) -> str:
    return CAPTION_TEMPLATES[template].format(CLASSES[label][1])


class FashionMNISTDataset(Dataset):
    """One Fashion-MNIST split as unigen samples (module docstring)."""

    def __init__(self, root: str | None = None, split: Literal["train", "test"] = "train",
                 image_size: int = 32, num_samples: int | None = None, seed: int = 0) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        images, labels = load_fashion_mnist(root, split)
        if num_samples is not None:
            if not 0 < num_samples <= len(images):
                raise ValueError(f"num_samples must lie in [1, {len(images)}], got {num_samples}")
            keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:num_samples])
            images, labels = images[keep], labels[keep]
        self.images, self.labels = images, labels
        self.image_size, self.split = image_size, split
        # the caption template of each sample is fixed so that epochs and runs see the same data
        self.templates = np.random.default_rng([seed, 1]).integers(0, len(CAPTION_TEMPLATES),
                                                                  size=len(images))

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> torch.Tensor:
        """float [3, image_size, image_size] in [0, 1]."""
        border = (PADDED_SIZE - NATIVE_SIZE) // 2
        padded = np.pad(self.images[index], border)  # black background, like the garments' own
        if self.image_size != PADDED_SIZE:
            resized = Image.fromarray(padded).resize((self.image_size,) * 2,
                                                               Image.Resampling.BICUBIC)
            padded = np.asarray(resized)
        gray = torch.from_numpy(padded.astype(np.float32) / 255.0)
        return repeat(gray, "h w -> c h w", c=3).contiguous()

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.images):
            raise IndexError(f"index {index} out of range for {len(self.images)} samples")
        label = int(self.labels[index])
        return make_sample(self.image(index), caption_for(label, int(self.templates[index])), index,
                           QUESTION, CLASS_NAMES[label], label=label)

    def texts(self) -> list[str]:
        """Every caption template for every class, the question and the answers (tokenizer corpus)."""
        captions = [caption_for(c, t) for c in range(len(CLASSES))
                    for t in range(len(CAPTION_TEMPLATES))]
        return captions + [QUESTION] + list(CLASS_NAMES)


class FashionMNISTDataModule(SplitDataModule):
    """Train/validation from the train file (seeded split of ``num_val``), test from t10k; the
    training order (seeded per epoch, split across DDP ranks, exact mid-epoch resume) is
    :class:`~unigen.data.imagefolder.SplitDataModule`'s."""

    def __init__(self, root: str | None = None, image_size: int = 32, batch_size: int = 64,
                 num_val: int = 1000, seed: int = 0, num_workers: int = 0,
                 num_samples: int | None = None) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_set is None and stage in (None, "fit", "validate"):
            full = FashionMNISTDataset(hp.root, "train", hp.image_size, hp.num_samples, hp.seed)
            train_idx, val_idx = seeded_split(len(full), hp.num_val, hp.seed)
            self.train_set, self.val_set = Subset(full, train_idx), Subset(full, val_idx)
        if self.test_set is None and stage in (None, "test", "predict"):
            self.test_set = FashionMNISTDataset(hp.root, "test", hp.image_size, seed=hp.seed)


__all__ = ["CAPTION_TEMPLATES", "CLASS_NAMES", "DEBIAN_ROOT", "FashionMNISTDataModule",
           "FashionMNISTDataset", "caption_for", "load_fashion_mnist", "read_idx"]
