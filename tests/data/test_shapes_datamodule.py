"""ShapesDataModule: batches, splits, reproducible and resumable order."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from unigen.data.resumable import EpochShuffleSampler
from unigen.data.shapes import Scene
from unigen.data.shapes_datamodule import ShapesDataModule


def first_batch(dm: ShapesDataModule, which: str = "train") -> dict:
    return next(iter(getattr(dm, f"{which}_dataloader")()))


def test_batch_shapes_and_types():
    dm = ShapesDataModule(image_size=32, batch_size=4, num_train=16, num_val=6, num_test=5)
    batch = first_batch(dm)
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["index"].dtype == torch.long and batch["index"].shape == (4,)
    for key in ("caption", "question", "answer", "scene"):
        assert isinstance(batch[key], list) and len(batch[key]) == 4
        assert all(isinstance(t, str) and t for t in batch[key])
    assert len(dm.train_dataloader()) == 4
    val = list(dm.val_dataloader())
    assert [len(b["index"]) for b in val] == [4, 2]
    assert torch.cat([b["index"] for b in val]).tolist() == list(range(6))  # in order
    test = first_batch(dm, "test")
    assert all(any(o.is_heldout for o in Scene.from_json(s).objects) for s in test["scene"])
    assert torch.equal(first_batch(dm, "predict")["image"], test["image"])


def test_splits_differ_and_same_seed_reproduces():
    a = ShapesDataModule(image_size=32, batch_size=8, num_train=64, seed=1)
    b = ShapesDataModule(image_size=32, batch_size=8, num_train=64, seed=1)
    c = ShapesDataModule(image_size=32, batch_size=8, num_train=64, seed=2)
    ba, bb, bc = first_batch(a), first_batch(b), first_batch(c)
    assert torch.equal(ba["image"], bb["image"]) and ba["caption"] == bb["caption"]
    assert ba["index"].tolist() == bb["index"].tolist()
    assert ba["index"].tolist() != bc["index"].tolist()
    assert not torch.equal(first_batch(a, "val")["image"], first_batch(c, "val")["image"])
    assert ba["scene"] != first_batch(a, "val")["scene"]


def test_sampler_is_a_function_of_seed_and_epoch():
    s = EpochShuffleSampler(50, seed=3)
    epoch0 = list(s)
    assert sorted(epoch0) == list(range(50)) and epoch0 == list(s)
    s.set_epoch(1)
    epoch1 = list(s)
    assert epoch1 != epoch0 and sorted(epoch1) == list(range(50))
    s.set_epoch(0)
    s.skip_once(20)
    assert list(s) == epoch0[20:] and list(s) == epoch0  # the skip applies once
    assert list(EpochShuffleSampler(50, seed=4)) != epoch0


def test_bad_arguments():
    with pytest.raises(ValueError, match="test_split"):
        ShapesDataModule(test_split="test")
    with pytest.raises(ValueError, match="num_train"):
        ShapesDataModule(batch_size=8, num_train=4)
    with pytest.raises(ValueError, match="task_text"):
        ShapesDataModule(task_text="speech")


class _Recorder(L.LightningModule):
    """Trains a single weight and records the sample indices of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        return (batch["image"].mean() - self.weight) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
                     **kwargs)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resuming_mid_epoch_replays_the_exact_order(tmp_path, num_workers):
    # with workers the loader reads the sampler as soon as Lightning first calls iter(), before the
    # epoch loop sets the epoch: the resumed epoch's order must already be in place then
    def data() -> ShapesDataModule:
        return ShapesDataModule(image_size=16, batch_size=4, num_train=24, seed=7, task_text="qa",
                                num_workers=num_workers)

    full = _Recorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1,
                           filename="{step}")
    _trainer(tmp_path, callbacks=[ckpt]).fit(full, datamodule=data())
    assert len(full.seen) == 18  # 3 epochs x 6 batches
    epochs = [sorted(sum(full.seen[e * 6:(e + 1) * 6], [])) for e in range(3)]
    assert all(e == list(range(24)) for e in epochs)
    assert full.seen[:6] != full.seen[6:12]  # a new order every epoch

    resumed = _Recorder()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not resumable.*")
        _trainer(tmp_path, enable_checkpointing=False).fit(resumed, datamodule=data(),
                                                           ckpt_path=tmp_path / "step=8.ckpt")
    assert resumed.seen == full.seen[8:]

    other = ShapesDataModule(image_size=16, batch_size=4, num_train=24, seed=8)
    with pytest.raises(ValueError, match="cannot resume"):
        _trainer(tmp_path, enable_checkpointing=False).fit(_Recorder(), datamodule=other,
                                                           ckpt_path=tmp_path / "step=8.ckpt")


def test_instantiates_from_a_recipe_data_section():
    import yaml
    from lightning.pytorch.cli import instantiate_class

    config = yaml.safe_load("""
    data:
      class_path: unigen.data.shapes_datamodule.ShapesDataModule
      init_args: {image_size: 32, batch_size: 2, num_train: 8, test_split: val, seed: 3}
    """)
    dm = instantiate_class((), config["data"])
    assert isinstance(dm, ShapesDataModule) and dm.hparams.test_split == "val"
    assert first_batch(dm)["image"].shape == (2, 3, 32, 32)
