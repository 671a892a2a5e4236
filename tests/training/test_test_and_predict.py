"""``test_step`` / ``predict_step`` of the unified and autoregressive modules, the prediction
writer, the checks of ``val_sampling`` and the model size at construction, and per-task training
losses that appear in the logs only at steps where their task had rows."""

import csv
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from unigen.data.shapes_datamodule import ShapesDataModule
from unigen.training.ar_module import AutoregressiveModule
from unigen.training.unified_module import UnifiedModule

SMALL = dict(image_size=32, max_text_len=24, dim=32, depth=1, heads=4)
SAMPLING = {"num_samples": 2, "num_steps": 2, "text_steps": 2}


def trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    args.update(kw)
    return L.Trainer(**args)


def data(**kw):
    return ShapesDataModule(**{"image_size": 32, "batch_size": 4, "num_train": 8, "num_val": 4,
                               "num_test": 4, **kw})


@pytest.mark.parametrize("cls, kwargs", [
    (UnifiedModule, {"val_sampling": {"num_samplez": 3}}),
    (AutoregressiveModule, {"val_sampling": {"num_steps": 3}}),
])
def test_val_sampling_typos_fail_at_construction(tokenizer_dirs, cls, kwargs):
    with pytest.raises(ValueError, match="val_sampling: unknown option"):
        cls(**tokenizer_dirs, **SMALL | kwargs)


@pytest.mark.parametrize("cls", [UnifiedModule, AutoregressiveModule])
@pytest.mark.parametrize("kwargs, message", [
    ({"dim": 0}, "dim must be a positive integer, got 0"),
    ({"depth": 0}, "depth must be a positive integer, got 0"),
    ({"depth": -1}, "depth must be a positive integer, got -1"),
    ({"heads": 0}, "heads must be a positive integer, got 0"),
    ({"heads": 3}, "dim 32 is not divisible by heads 3"),
])
def test_transformer_sizes_are_checked_at_construction(tokenizer_dirs, cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**tokenizer_dirs, **SMALL | kwargs)


def test_unified_test_step_logs_every_task_and_the_sample_metrics(tokenizer_dirs, tmp_path):
    torch.manual_seed(0)
    module = UnifiedModule(**tokenizer_dirs, **SMALL, val_sampling=SAMPLING,
                           tasks={"t2i": 1, "caption": 1, "vqa": 1})
    (metrics,) = trainer(tmp_path).test(module, datamodule=data(), verbose=False)
    assert {"test/loss", "test/loss_t2i", "test/loss_caption", "test/loss_vqa",
            "test/t2i_checker_accuracy", "test/vqa_exact_match",
            "test/caption_attribute_recall"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["test_caption_step0000000.png", "test_t2i_step0000000.png"]


def test_unified_test_without_val_sampling_logs_only_losses(tokenizer_dirs, tmp_path):
    module = UnifiedModule(**tokenizer_dirs, **SMALL, val_sampling={})
    (metrics,) = trainer(tmp_path).test(module, datamodule=data(), verbose=False)
    assert set(metrics) == {"test/loss", "test/loss_t2i"}


def test_unified_predict_writes_images_captions_and_answers(tokenizer_dirs, tmp_path):
    torch.manual_seed(0)
    module = UnifiedModule(**tokenizer_dirs, **SMALL, val_sampling=SAMPLING,
                           tasks={"t2i": 1, "caption": 1, "vqa": 1})
    batches = trainer(tmp_path).predict(module, datamodule=data(num_test=6))
    assert [b["index"] for b in batches] == [[0, 1, 2, 3], [4, 5]]
    assert batches[0]["generated"].dtype == torch.uint8 and batches[0]["generated"].shape == (4, 3, 32, 32)
    folder = tmp_path / "predictions"
    written = json.loads((folder / "predictions.json").read_text())
    assert written["settings"] == {"num_steps": 2, "guidance_scale": 1.0, "sampler": "maskgit",
                                   "text_steps": 2, "seed": 0, "checkpoint": None}
    rows = written["predictions"]
    assert [r["index"] for r in rows] == list(range(6))
    test_set = data(num_test=6)
    test_set.setup()
    for row in rows:
        sample = test_set.datasets["test"][row["index"]]
        assert row["prompt"] == sample["caption"] and row["question"] == sample["question"]
        assert isinstance(row["caption"], str) and isinstance(row["answer"], str)
        assert (folder / row["generated"]).is_file() and (folder / row["input"]).is_file()
    # sample i uses seed + i: its image does not depend on the batch it came in
    again = trainer(tmp_path / "b").predict(module, datamodule=data(num_test=6, batch_size=6))
    assert torch.equal(again[0]["generated"], torch.cat([b["generated"] for b in batches]))


def test_autoregressive_test_and_predict(tokenizer_dirs, tmp_path):
    torch.manual_seed(0)
    module = AutoregressiveModule(**tokenizer_dirs, **SMALL, val_sampling={"num_samples": 2})
    (metrics,) = trainer(tmp_path).test(module, datamodule=data(), verbose=False)
    assert {"test/loss", "test/t2i_checker_accuracy"} <= set(metrics)
    (batch,) = trainer(tmp_path).predict(module, datamodule=data())
    assert set(batch) == {"index", "prompt", "generated"}
    rows = json.loads((tmp_path / "predictions" / "predictions.json").read_text())["predictions"]
    assert len(rows) == 4 and all((tmp_path / "predictions" / r["generated"]).is_file() for r in rows)


class RecordsTasks(UnifiedModule):
    """Remembers which tasks had rows at each step whose losses were logged."""

    def _log_task_losses(self, stage, per_row, assignment):
        present = {name for i, name in enumerate(self.mixture.names) if (assignment == i).any()}
        self.present.append(present)
        super()._log_task_losses(stage, per_row, assignment)


def test_task_losses_are_logged_only_at_steps_with_their_rows(tokenizer_dirs, tmp_path):
    """Lightning re-emits an ``on_step`` value that was not logged in a step; a task without rows
    in a step must not show an earlier step's loss (metrics.csv)."""
    tasks = {"t2i": 1.0, "caption": 0.5, "inpaint": 0.15}
    module = RecordsTasks(**tokenizer_dirs, **SMALL, tasks=tasks, val_sampling={})
    module.present = []
    logger = CSVLogger(tmp_path, name="logs", flush_logs_every_n_steps=1)
    trainer(tmp_path, max_steps=8, log_every_n_steps=1, logger=logger,
            limit_val_batches=0).fit(module, datamodule=data(num_train=32))
    with open(logger.log_dir + "/metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/loss")]
    assert len(rows) == len(module.present) == 8
    # the precondition of the test: some task is missing at a step after it was logged
    assert any(name in before and name not in now for before, now in
               zip(module.present, module.present[1:]) for name in tasks)
    for row, present in zip(rows, module.present):
        logged = {name for name in tasks if row.get(f"train/loss_{name}")}
        assert logged == present, (row, present)


def test_a_validation_metrics_missing_network_stops_fit_before_any_step(tokenizer_dirs, tmp_path):
    sampling = {**SAMPLING, "metrics": [{"name": "class_accuracy",
                                         "classifier": str(tmp_path / "no_classifier")}]}
    module = UnifiedModule(**tokenizer_dirs, **SMALL, val_sampling=sampling)
    with pytest.raises(FileNotFoundError, match="domain classifier directory not found") as err:
        trainer(tmp_path, max_steps=5, val_check_interval=5).fit(module, datamodule=data())
    assert "classifier_fashion_mnist.yaml" in str(err.value)
    assert module.global_step == 0


def test_validation_metrics_are_built_once_for_the_run(tokenizer_dirs, tmp_path,
                                                                   monkeypatch):
    from unigen.training import validation_sampling

    built = []
    real_build = validation_sampling.build_recipe_metrics
    monkeypatch.setattr(validation_sampling, "build_recipe_metrics",
                        lambda *a: built.append(a) or real_build(*a))
    torch.manual_seed(0)
    module = UnifiedModule(**tokenizer_dirs, **SMALL, tasks={"t2i": 1, "caption": 1},
                           val_sampling={**SAMPLING, "metrics": ["bleu4"]})
    fit = trainer(tmp_path, max_steps=4, val_check_interval=2, num_sanity_val_steps=0,
                  limit_val_batches=1)
    fit.fit(module, datamodule=data())
    assert len(built) == 1  # at setup; both validations reuse it
    assert "val/bleu4" in fit.callback_metrics
    assert "_val_sampling_metrics" not in "".join(module.state_dict())  # never checkpointed
