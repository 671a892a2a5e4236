"""The layout modality trains, exports and decodes end to end: the unified module's recipe names
it, the pipeline saves and reloads it, and ``run_task`` runs its tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unigen.cli import main
from unigen.modalities import ShapesLayout, layout_scores
from unigen.pipeline import UnifiedPipeline
from tests.training.test_unified_module import batch_of, make, overfit

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = {"layout": {"kind": "shapes_layout"}}


@pytest.fixture(scope="module")
def layout_dirs(tokenizer_dirs, layout_text_tokenizer_dir):
    return {**tokenizer_dirs, "text_tokenizer": str(layout_text_tokenizer_dir)}


@pytest.fixture(scope="module")
def trained(layout_dirs):
    """A tiny model overfit on 8 scenes' layout -> image and image -> layout."""
    torch.manual_seed(0)
    module = make(layout_dirs, modalities=LAYOUT, tasks={"layout2i": 1.0, "i2layout": 1.0})
    batch = batch_of(8)
    losses = overfit(module, batch, 300)  # 150 steps: still mostly empty cells
    return module, batch, losses


def test_loss_falls_on_a_tiny_layout_overfit(trained):
    _, _, losses = trained
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.1 * first, (first, last)


def test_the_trained_model_parses_its_scenes_and_the_export_keeps_the_modality(trained, tmp_path):
    module, batch, _ = trained
    pipe = module.to_pipeline()
    truth = ShapesLayout().encode(batch["scene"])
    out = pipe.run_task("i2layout", {"image": batch["image"]}, num_steps=4, sampler="confident")
    assert out["layout_codes"].shape == (8, 3, 9)
    scores = layout_scores(out["layout_codes"], truth)
    assert scores["cell_accuracy"] >= 0.95 and scores["object_recall"] >= 0.9, scores
    assert [len(s.objects) for s in out["layout"]] == [int((t != 0).sum()) // 3 for t in out["layout_codes"]]
    pipe.save_pretrained(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "pipeline.json").read_text())
    assert meta["modalities"] == {"layout": {"kind": "shapes_layout"}}
    again = UnifiedPipeline.from_pretrained(tmp_path / "model")
    assert list(again.modalities) == ["layout"]
    reloaded = again.run_task("i2layout", {"image": batch["image"]}, num_steps=4, sampler="confident")
    assert torch.equal(reloaded["layout_codes"], out["layout_codes"])
    default = again.run_task("i2layout", {"image": batch["image"]}, num_steps=4)
    assert torch.equal(default["layout_codes"], out["layout_codes"])  # the task's own: confident
    uncached = again.run_task("i2layout", {"image": batch["image"]}, num_steps=4,
                              sampler="confident", use_cache=False)
    assert torch.equal(uncached["layout_codes"], out["layout_codes"])  # the prefix cache is exact
    drawn = again.run_task("layout2i", {"layout": batch["scene"][:2]}, num_steps=4, output="tensor",
                           seed=3)
    assert drawn["image"].shape == (2, 3, 32, 32)
    same = again.run_task("layout2i", {"layout": batch["scene"][:2]}, num_steps=4, output="tensor",
                          seed=3)
    assert torch.equal(drawn["image"], same["image"])  # seeded


def test_run_task_refuses_what_it_cannot_run(trained):
    module, batch, _ = trained
    pipe = module.to_pipeline()
    with pytest.raises(ValueError, match="'t2i' has its own method"):
        pipe.run_task("t2i", {"text": ["a red circle"]})
    with pytest.raises(ValueError, match=r"takes inputs \['layout'\]"):
        pipe.run_task("layout2i", {"image": batch["image"]})
    assert pipe.run_task("i2layout", {"image": batch["image"][:0]})["layout"] == []


def test_a_pipeline_must_be_given_the_transformers_modalities(trained):
    module, _, _ = trained
    with pytest.raises(ValueError, match=r"extra segments \['layout'\], the pipeline was given the "
                                         r"modalities \[\]"):
        UnifiedPipeline(module.net, module.image_tokenizer, module.space.text_tokenizer)


def test_an_unknown_saved_modality_names_the_file(trained, tmp_path):
    module, _, _ = trained
    module.to_pipeline().save_pretrained(tmp_path / "model")
    meta_path = tmp_path / "model" / "pipeline.json"
    meta = json.loads(meta_path.read_text())
    meta["modalities"] = {"layout": {"kind": "audio_codes", "module": "my_audio"}}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(KeyError, match="unknown modality 'audio_codes'.*--plugin my_audio.*pipeline.json"):
        UnifiedPipeline.from_pretrained(tmp_path / "model")


def test_validation_scores_the_layout_parser_exactly(trained, tmp_path, monkeypatch):
    from unigen.training import validation_sampling
    from unigen.training.validation_sampling import sample_segment_tasks

    module, batch, _ = trained
    monkeypatch.setattr(validation_sampling, "_log_dir", lambda m: tmp_path)  # no trainer here
    metrics = sample_segment_tasks(module, module.to_pipeline(), batch, 8, 4, 4, "maskgit", 0, "val")
    truth = ShapesLayout().encode(batch["scene"])
    parsed = module.to_pipeline().run_task("i2layout", {"image": batch["image"]}, num_steps=4,
                                           sampler="confident")["layout_codes"]
    assert metrics["val/i2layout_code_accuracy"] == float((parsed == truth).float().mean())
    assert "val/layout2i_code_accuracy" not in metrics  # an image is not scored by its codes
    assert (tmp_path / "samples" / "layout2i_step0000000.png").exists()


def test_layout_debug_recipe_fits_and_exports(layout_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "recipes" / "debug" / "layout_debug.yaml"),
          "--model.init_args.image_tokenizer", layout_dirs["image_tokenizer"],
          "--model.init_args.text_tokenizer", layout_dirs["text_tokenizer"],
          "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
          "--export_dir", str(tmp_path / "model")])
    logs = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "val/loss_i2layout" in logs and "val/loss_layout2i" in logs
    assert "val/i2layout_code_accuracy" in logs  # the segment tasks are decoded and scored
    assert list(tmp_path.rglob("samples/layout2i_step*.png")), "layout-to-image sample grids"
    pipe = UnifiedPipeline.from_pretrained(tmp_path / "model")
    assert pipe.transformer.sequence.extra == {"layout": (3, 9)}
    out = pipe.run_task("i2layout", {"image": torch.rand(2, 3, 32, 32)}, num_steps=2)
    assert out["layout_codes"].shape == (2, 3, 9)


def test_a_layout_checkpoint_in_a_model_without_the_layout_is_one_line(trained, layout_dirs):
    module, _, _ = trained
    plain = make(layout_dirs, tasks={"t2i": 1.0})
    with pytest.raises(ValueError, match="codebook size mismatch.*or other modalities") as err:
        plain.check_state_shapes(module.state_dict())
    assert "\n" not in str(err.value)


def test_a_task_whose_segment_the_model_lacks_is_one_line_before_training(layout_dirs, tmp_path):
    with pytest.raises(ValueError, match=r"task 't2layout' uses the segment 'layout', which this "
                                         r"model lacks \(name a modality 'layout' in model.init_args."
                                         r"modalities; its further segments: \['scene'\]\)"):
        make(layout_dirs, modalities={"scene": {"kind": "shapes_layout"}},
             tasks={"t2i": 1.0, "t2layout": 1.0})
    plain = make(layout_dirs, tasks={"t2i": 1.0})
    plain.to_pipeline().save_pretrained(tmp_path / "plain")
    from unigen.training.finetune import FinetuneModule

    tune = FinetuneModule(str(tmp_path / "plain"), image_size=32, tasks={"i2layout": 1.0})
    with pytest.raises(ValueError, match=r"task 'i2layout' uses the segment 'layout', which this "
                                         r"model lacks \(the pipeline at .*plain was trained "
                                         r"without it; its further segments: none\)"):
        tune.configure_model()
