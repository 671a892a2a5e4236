"""The shared training order (unigen.data.resumable) of the shapes, image-folder and Fashion-MNIST
data modules: exact mid-epoch resume, disjoint per-epoch DDP shards, no re-wrapping by Lightning."""

from __future__ import annotations

import gzip
import json
import struct
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import RunningStage
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from unigen.data import fashion_mnist as fm
from unigen.data.fashion_mnist import FashionMNISTDataModule
from unigen.data.imagefolder import ImageFolderDataModule
from unigen.data.resumable import EpochShuffleSampler
from unigen.data.shapes_datamodule import ShapesDataModule

BATCH = 4


def fake_trainer(world: int = 1, rank: int = 0, processed: int | None = None) -> SimpleNamespace:
    """What the loaders read of a Trainer: world size, rank, and (``processed`` given) the restored
    batch counter of a run resuming mid-epoch."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed or 0))
    fit_loop = SimpleNamespace(restarting=processed is not None,
                               epoch_loop=SimpleNamespace(batch_progress=progress))
    return SimpleNamespace(world_size=world, global_rank=rank, fit_loop=fit_loop)


def write_fashion(root: Path, n_train: int = 40, n_test: int = 8) -> Path:
    """A tiny Fashion-MNIST folder (gzipped IDX files written by hand)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        arrays = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                  np.arange(n, dtype=np.uint8) % 10)
        for stem, array in zip(fm.FILES[split], arrays):
            header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
            header += struct.pack(f">{array.ndim}I", *array.shape)
            (root / f"{stem}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    return root


def write_images(root: Path, n: int = 24) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(root / f"{i}.png")
    rows = [json.dumps({"file_name": f"{i}.png", "text": f"image {i}"}) for i in range(n)]
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(params=["shapes", "folder", "fashion_mnist"])
def make_dm(request, tmp_path):
    """A factory of fresh data modules of one kind (train sets of 24, 19 and 30 samples)."""
    if request.param == "shapes":
        return lambda seed=0: ShapesDataModule(image_size=16, batch_size=BATCH, num_train=24,
                                               num_val=4, num_test=4, seed=seed)
    if request.param == "folder":
        root = str(write_images(tmp_path / "folder"))
        return lambda seed=0: ImageFolderDataModule(root, image_size=8, batch_size=BATCH,
                                                    val_fraction=0.2, seed=seed)
    root = str(write_fashion(tmp_path / "fm"))
    return lambda seed=0: FashionMNISTDataModule(root, batch_size=BATCH, num_val=10, seed=seed)


def epoch_batches(dm: L.LightningDataModule, epoch: int, trainer: SimpleNamespace
                  ) -> list[list[int]]:
    dm.trainer = trainer
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
    return [batch["index"].tolist() for batch in loader]


def test_resuming_mid_epoch_gives_the_uninterrupted_batches(make_dm):
    runs = [epoch_batches(make_dm(), epoch, fake_trainer()) for epoch in range(2)]
    for epoch, batches in enumerate(runs):
        assert len({i for b in batches for i in b}) == sum(map(len, batches))  # no repeats
    assert runs[0] != runs[1]  # a new order every epoch
    for epoch, batches in enumerate(runs):
        for done in range(1, len(batches)):
            resumed = epoch_batches(make_dm(), epoch, fake_trainer(processed=done))
            assert resumed == batches[done:], (epoch, done)
    # only the first pass after the restore is shortened
    dm = make_dm()
    dm.trainer = fake_trainer(processed=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert [b["index"].tolist() for b in loader] == runs[0][2:]
    assert [b["index"].tolist() for b in loader] == runs[0]


def test_the_loader_state_refuses_other_training_data(make_dm):
    dm = make_dm()
    dm.setup("fit")
    state = dm.train_dataloader().state_dict()
    assert state["global_batch"] == BATCH and state["seed"] == 0
    other = make_dm(seed=1)
    other.setup("fit")
    with pytest.raises(ValueError, match="cannot resume"):
        other.train_dataloader().load_state_dict(state)
    dm.train_dataloader().load_state_dict(state)  # the same data resumes


def test_shapes_checkpoints_of_the_old_loader_still_resume():
    dm = ShapesDataModule(image_size=16, batch_size=BATCH, num_train=24, seed=3)
    dm.train_dataloader().load_state_dict({"seed": 3, "num_samples": 24, "batch_size": BATCH})
    with pytest.raises(ValueError, match="cannot resume"):
        dm.train_dataloader().load_state_dict({"seed": 3, "num_samples": 24, "batch_size": 8})


@pytest.mark.parametrize("n", [24, 25])
def test_two_ranks_take_disjoint_shards_of_each_epoch(n):
    def rank_epoch(rank: int, epoch: int) -> list[int]:
        sampler = EpochShuffleSampler(n, seed=5, batch_size=BATCH, num_replicas=2, rank=rank)
        sampler.set_epoch(epoch)
        return list(sampler)

    for epoch in range(2):
        ranks = [rank_epoch(r, epoch) for r in range(2)]
        assert len(ranks[0]) == len(ranks[1]) == n // 2
        assert not set(ranks[0]) & set(ranks[1])
        assert len(set(ranks[0]) | set(ranks[1])) == n // 2 * 2  # the epoch, less n % 2 samples
        single = EpochShuffleSampler(n, seed=5)
        single.set_epoch(epoch)
        assert sorted(ranks[0] + ranks[1]) == sorted(list(single)[:n // 2 * 2])
    for rank in range(2):
        assert rank_epoch(rank, 1) != rank_epoch(rank, 0)
        assert set(rank_epoch(rank, 1)) != set(rank_epoch(rank, 0))  # another shard, not reordered


def test_ranks_of_every_data_module_split_each_epoch_and_resume_exactly(make_dm):
    for epoch in range(2):
        ranks = [epoch_batches(make_dm(), epoch, fake_trainer(2, r)) for r in range(2)]
        seen = [{i for b in batches for i in b} for batches in ranks]
        assert len(seen[0]) == len(seen[1]) == sum(map(len, ranks[0]))
        assert not seen[0] & seen[1]
        for rank, batches in enumerate(ranks):
            resumed = epoch_batches(make_dm(), epoch, fake_trainer(2, rank, processed=2))
            assert resumed == batches[2:]
    dm = make_dm()
    dm.trainer = fake_trainer(2, 1)
    dm.setup("fit")
    assert dm.train_dataloader().state_dict()["global_batch"] == 2 * BATCH


def test_a_loader_without_a_trainer_takes_the_launchers_world_and_rank(make_dm, monkeypatch):
    """Built outside ``fit`` (no trainer) under a launcher, the loader still splits the epoch:
    Lightning never re-splits a DistributedSampler, so 1 / 0 would give every rank all the data."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    dm = make_dm()
    assert dm.trainer is None
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (2, 1)
    assert loader.state_dict()["global_batch"] == 2 * BATCH
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    dm = make_dm()
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    assert (sampler.num_replicas, sampler.rank) == (1, 0)  # no launcher, no trainer: one process


def test_lightning_uses_the_train_sampler_as_it_is(make_dm):
    """Under DDP Lightning replaces a loader's sampler only when it is not a DistributedSampler."""
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    dm = make_dm()
    dm.trainer = trainer
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.num_replicas == 2
    connector = trainer._data_connector
    assert connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING) is loader
    assert connector._requires_distributed_sampler(DataLoader(range(8), shuffle=True))  # contrast


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        return (self.scale * batch["image"]).mean() ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("step, limit", [(11, None), (5, 5)])
def test_fashion_mnist_resumes_exactly_with_a_real_trainer(tmp_path, step, limit):
    """30 training samples in batches of 4: 8 steps an epoch, the last one partial; the checkpoint
    after step 11 lies mid-epoch 1.  With limit_train_batches 5 the checkpoint after step 5 ends
    epoch 0 (Lightning rolls it over into epoch 1, which must start at its first batch)."""
    root = str(write_fashion(tmp_path / "fm"))
    limited = {} if limit is None else {"limit_train_batches": limit}

    def fit(module: _Recorder, ckpt_path: Path | None = None, **trainer_args) -> None:
        trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, limit_val_batches=0,
                            enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path, **limited, **trainer_args)
        data = FashionMNISTDataModule(root, batch_size=BATCH, num_val=10, seed=2)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)

    full = _Recorder()
    fit(full, callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=step, save_top_k=-1,
                                         filename="{step}")])
    if limit is None:
        assert [len(b) for b in full.seen[:8]] == [4] * 7 + [2]
        epochs = [sorted(i for b in full.seen[e * 8:(e + 1) * 8] for i in b) for e in range(3)]
        assert epochs[0] == epochs[1] == epochs[2] and len(epochs[0]) == 30
        assert full.seen[:8] != full.seen[8:16]
    else:
        assert len(full.seen) == 3 * limit
    resumed = _Recorder()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not resumable.*")
        fit(resumed, ckpt_path=tmp_path / f"step={step}.ckpt", enable_checkpointing=False)
    assert resumed.seen == full.seen[step:]


def test_train_batches_are_pinned_only_when_training_on_cuda():
    from unigen.data.resumable import pins_memory

    def trainer_on(device: str) -> SimpleNamespace:
        return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))

    assert pins_memory(trainer_on("cuda:0")) and not pins_memory(trainer_on("cpu"))
    assert not pins_memory(None)
    dm = ShapesDataModule(image_size=32, batch_size=4, num_train=16, num_val=4, num_test=4)
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    assert dm.train_dataloader().pin_memory is False
