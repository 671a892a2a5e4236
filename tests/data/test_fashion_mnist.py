import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from unigen.data import fashion_mnist as fm
from unigen.data.fashion_mnist import (CLASS_NAMES, FashionMNISTDataModule, FashionMNISTDataset,
                                       load_fashion_mnist, read_idx)

HAVE_DEBIAN = all((fm.DEBIAN_ROOT / f"{stem}.gz").is_file()
                  for pair in fm.FILES.values() for stem in pair)
needs_debian = pytest.mark.skipif(not HAVE_DEBIAN, reason="Debian package dataset-fashion-mnist is "
                                  "not installed (apt-get install dataset-fashion-mnist)")


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """IDX written by hand (independent of the parser): magic, big-endian dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True
                ) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stem, data in zip(fm.FILES[split], (idx_bytes(images, 0x08), idx_bytes(labels, 0x08))):
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        write_split(tmp_path / "fm", split, images, np.arange(n, dtype=np.uint8) % 10)
    return tmp_path / "fm"


@pytest.mark.parametrize("dtype, code", [("u1", 0x08), ("i1", 0x09), ("i2", 0x0B), ("i4", 0x0C),
                                         ("f4", 0x0D), ("f8", 0x0E)])
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_parses_every_type(tmp_path, dtype, code, gz):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    data = idx_bytes(array, code)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_damaged_files(tmp_path):
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8), 0x08)
    (tmp_path / "cut").write_bytes(data[:-10])
    with pytest.raises(ValueError, match=r"cut holds 2342 data bytes, its header \(3, 28, 28\)"):
        read_idx(tmp_path / "cut")
    (tmp_path / "magic").write_bytes(b"\x00\x00\x07\x01" + data[4:])
    with pytest.raises(ValueError, match="magic is not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "header").write_bytes(data[:9])
    with pytest.raises(ValueError, match="truncated inside its header"):
        read_idx(tmp_path / "header")
    noisy = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (3, 28, 28), np.uint8),
                                    0x08))
    (tmp_path / "badgz").write_bytes(noisy[: len(noisy) // 2])
    with pytest.raises(ValueError, match="cannot read IDX file .*badgz"):
        read_idx(tmp_path / "badgz")


def test_missing_files_say_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="install it with: apt-get install "
                                                "dataset-fashion-mnist, or pass root="):
        FashionMNISTDataset(root=str(tmp_path))
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path / "not-installed")
    with pytest.raises(FileNotFoundError, match=r"not-installed/train-images-idx3-ubyte\.gz; "
                                                "install it with: apt-get install"):
        FashionMNISTDataset()


def test_inconsistent_files_are_refused(tmp_path):
    write_split(tmp_path, "train", np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 10], np.uint8))
    with pytest.raises(ValueError, match=r"labels outside \[0, 10\)"):
        load_fashion_mnist(tmp_path)
    write_split(tmp_path, "train", np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="must hold 4 labels, got shape"):
        load_fashion_mnist(tmp_path)
    write_split(tmp_path, "train", np.zeros((4, 20, 20), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match=r"uint8 \[N, 28, 28\] images, got uint8 \[4, 20, 20\]"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split 'val'"):
        load_fashion_mnist(tmp_path, "val")


def test_samples_pad_and_describe_the_garment(tiny_root):
    raw, labels = load_fashion_mnist(tiny_root, "train")
    ds = FashionMNISTDataset(str(tiny_root), "train", image_size=32)
    sample = ds[9]
    image = sample["image"]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert torch.equal(image[0], image[2])  # grayscale replicated
    assert image[:, :2].abs().max() == 0 and image[:, :, -2:].abs().max() == 0  # black border
    assert torch.equal(image[0, 2:30, 2:30], torch.from_numpy(raw[9] / np.float32(255)))
    assert sample["label"] == 9 and sample["answer"] == "ankle boot"
    assert sample["question"] == "what is this?" and sample["scene"] == "" and sample["index"] == 9
    assert sample["caption"].endswith("an ankle boot")
    assert ds[1]["caption"].endswith("a pair of trousers")
    assert all(ds[i]["caption"] in ds.texts() for i in range(len(ds)))
    assert len({ds[i]["caption"].removesuffix(CLASS_NAMES[i % 10]) for i in range(40)}) > 1


def test_other_sizes_resize_the_padded_image(tiny_root):
    big = FashionMNISTDataset(str(tiny_root), "test", image_size=64)[0]["image"]
    small = FashionMNISTDataset(str(tiny_root), "test", image_size=32)[0]["image"]
    assert big.shape == (3, 64, 64)
    pooled = torch.nn.functional.avg_pool2d(big[None], 2)[0]
    assert (pooled - small).abs().mean() < 0.1  # same framing, just more pixels


def test_subsets_and_captions_are_seeded(tiny_root):
    a = FashionMNISTDataset(str(tiny_root), num_samples=10, seed=1)
    b = FashionMNISTDataset(str(tiny_root), num_samples=10, seed=1)
    c = FashionMNISTDataset(str(tiny_root), num_samples=10, seed=2)
    assert [a[i]["caption"] for i in range(10)] == [b[i]["caption"] for i in range(10)]
    assert np.array_equal(a.labels, b.labels) and not np.array_equal(a.images, c.images)
    with pytest.raises(ValueError, match=r"num_samples must lie in \[1, 40\], got 41"):
        FashionMNISTDataset(str(tiny_root), num_samples=41)


def test_datamodule_splits_train_and_reads_test(tiny_root):
    dm = FashionMNISTDataModule(str(tiny_root), batch_size=8, num_val=10, seed=0)
    dm.setup(None)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 12)
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["label"].shape == (8,)


def _train_order(root: Path, seed: int) -> list[int]:
    dm = FashionMNISTDataModule(str(root), batch_size=8, num_val=10, seed=seed)
    dm.setup("fit")
    return [i for b in dm.train_dataloader() for i in b["index"].tolist()]


def test_datamodule_shuffle_is_seeded(tiny_root):
    assert _train_order(tiny_root, 0) == _train_order(tiny_root, 0)
    assert _train_order(tiny_root, 0) != _train_order(tiny_root, 1)


@needs_debian
def test_debian_package_files():
    train = FashionMNISTDataset(split="train")
    test = FashionMNISTDataset(split="test", num_samples=100)
    assert len(train) == 60_000 and len(test) == 100
    assert np.bincount(train.labels).tolist() == [6000] * 10
    image = train[0]["image"]
    assert image.shape == (3, 32, 32) and 0.0 <= image.min() and image.max() <= 1.0
    assert image.max() > 0.5  # a garment, not an empty frame
