"""A further modality is encoded in the DataLoader workers (unigen.data.batch_transforms): the model
hands its data module the transform in ``setup``, the batches arrive with ``layout_codes`` beside the
raw ``scene``, and training is bitwise what it was with the codes made in the training step."""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Subset

from unigen.data.batch_transforms import (EncodeModalities, TransformCollate, codes_key,
                                          segment_codes)
from unigen.data.shapes import ShapesDataset
from unigen.data.shapes_datamodule import ShapesDataModule
from unigen.modalities import ShapesLayout
from unigen.training.unified_module import ENCODE_TRANSFORM, UnifiedModule
from tests.training.test_unified_module import batch_of, make

LAYOUT = {"layout": {"kind": "shapes_layout"}}
# the tiny layout debug recipe's model (recipes/debug/layout_debug.yaml)
RECIPE = dict(image_size=32, max_text_len=24, question_slot=12, dim=64, depth=2, heads=4,
              modalities=LAYOUT, tasks={"t2i": 1.0, "t2layout": 0.5, "layout2i": 1.0,
                                        "i2layout": 1.0, "vqa": 0.5},
              loss_reduction="tasks", complementary_masking=True, cond_dropout=0.1, lr=1e-3,
              warmup_steps=2, val_sampling={"num_samples": 4, "num_steps": 2})
DATA = dict(image_size=32, batch_size=8, num_train=64, num_val=8, num_test=8, seed=0)


@pytest.fixture(scope="module")
def layout_dirs(tokenizer_dirs, layout_text_tokenizer_dir):
    return {**tokenizer_dirs, "text_tokenizer": str(layout_text_tokenizer_dir)}


def test_the_transform_adds_codes_beside_the_raw_field_and_pickles():
    batch = batch_of(4)
    encode = EncodeModalities({"layout": ShapesLayout()})
    out = pickle.loads(pickle.dumps(TransformCollate((encode,))))(
        [{k: v[i] for k, v in batch.items()} for i in range(4)])
    assert torch.equal(out["layout_codes"], ShapesLayout().encode(batch["scene"]))
    assert out["scene"] == batch["scene"]  # validation sampling describes the raw scenes
    assert encode({"caption": ["x"]}) == {"caption": ["x"]}  # no field, nothing to encode
    data = ShapesDataModule(**DATA)
    assert data.worker_collate() is None  # torch's default collate until a model hands one over
    data.set_batch_transform("t", encode)
    assert isinstance(data.worker_collate(), TransformCollate)
    data.set_batch_transform("t", None)
    assert data.worker_collate() is None and data.batch_transforms == {}


def test_the_codes_are_made_in_a_spawned_worker():
    dataset = Subset(ShapesDataset("train", 4, 32, seed=0), range(4))
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn",
                        collate_fn=TransformCollate((EncodeModalities({"layout": ShapesLayout()}),)))
    batch = next(iter(loader))
    assert torch.equal(batch["layout_codes"], ShapesLayout().encode(batch["scene"]))


def test_plain_batches_are_encoded_in_the_step_and_given_codes_are_used(layout_dirs):
    module = make(layout_dirs, modalities=LAYOUT, tasks={"i2layout": 1.0})
    batch = batch_of(4)
    truth = ShapesLayout().encode(batch["scene"])
    assert torch.equal(module.task_inputs(batch).segments["layout"], truth)
    given = torch.zeros_like(truth)  # codes in the batch win: the step does not parse again
    assert torch.equal(module.task_inputs({**batch, codes_key("layout"): given}).segments["layout"],
                       given)
    assert segment_codes({"caption": ["x"]}, "layout", ShapesLayout()) is None


class HostOnlyData(L.LightningDataModule):
    """The same shapes data through a data module without batch transforms: the step encodes."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.inner = ShapesDataModule(**kwargs)

    def setup(self, stage: str) -> None:
        self.inner.trainer = self.trainer  # resume and rank split as the shapes module does
        self.inner.setup(stage)

    def train_dataloader(self):
        return self.inner.train_dataloader()

    def val_dataloader(self):
        return self.inner.val_dataloader()


class Record(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.had_codes: list[bool] = []
        self.handed: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.had_codes.append(codes_key("layout") in batch and "scene" in batch)
        data = trainer.datamodule
        self.handed.append(ENCODE_TRANSFORM in getattr(data, "batch_transforms", {}))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def fit(dirs, root, data, steps=4, ckpt_path=None, callbacks=()):
    L.seed_everything(0)
    torch.manual_seed(0)
    module = UnifiedModule(**dirs, **RECIPE)
    record = Record()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=bool(callbacks), limit_val_batches=1,
                        val_check_interval=2, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, gradient_clip_val=1.0, default_root_dir=root,
                        callbacks=[record, *callbacks])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, record, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_training_is_bitwise_the_same_with_codes_from_the_workers(layout_dirs, tmp_path):
    workers = ShapesDataModule(**DATA, num_workers=1)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1,
                            filename="{step}")
    on, on_record, on_metrics = fit(layout_dirs, tmp_path / "on", workers, callbacks=[saver])
    host, host_record, host_metrics = fit(layout_dirs, tmp_path / "host", HostOnlyData(**DATA))
    assert on_record.had_codes == [True] * 4 and on_record.handed == [True] * 4
    assert host_record.had_codes == [False] * 4  # encoded in the step, as before
    assert workers.batch_transforms == {}  # taken back at teardown
    assert on_record.losses == host_record.losses
    assert "val/i2layout_code_accuracy" in on_metrics and on_metrics == host_metrics
    host_state = host.state_dict()
    assert all(torch.equal(v, host_state[k]) for k, v in on.state_dict().items())

    # resumed mid-epoch from step 2 with the transform: the uninterrupted run's last steps
    resumed, resumed_record, _ = fit(layout_dirs, tmp_path / "resumed",
                                     ShapesDataModule(**DATA, num_workers=1),
                                     ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")
    assert resumed_record.had_codes == [True] * 2
    assert resumed_record.losses == on_record.losses[2:]
    assert all(torch.equal(v, host_state[k]) for k, v in resumed.state_dict().items())


def test_a_finetune_hands_over_its_pipelines_modalities(layout_dirs, tmp_path):
    from unigen.training.finetune import FinetuneModule

    make(layout_dirs, modalities=LAYOUT, tasks={"i2layout": 1.0}).export(tmp_path / "model")
    tune = FinetuneModule(str(tmp_path / "model"), image_size=32, tasks={"i2layout": 1.0})
    assert tune.net is None and list(tune.data_modalities()) == ["layout"]  # before configure_model
    missing = FinetuneModule(str(tmp_path / "none"), image_size=32)
    assert missing.data_modalities() == {}  # configure_model names that error
