"""`unigen eval` runs the tasks of further modalities (unigen/evaluate/segment_tasks.py): the layout's
planning, drawing and parsing, scored from records that the tests recompute independently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unigen.data.checker import check
from unigen.data.shapes import Scene, render_tensor
from unigen.evaluate import build_data, evaluate_pipeline, parse_config
from unigen.evaluate.segment_tasks import eval_task, eval_task_names
from unigen.modalities import ShapesLayout, layout_scores
from unigen.pipeline import UnifiedPipeline

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHAPES = {"source": "shapes", "split": "heldout", "num_samples": 5, "image_size": 32}


@pytest.fixture(scope="module")
def layout_pipe(tokenizer_dirs, layout_text_tokenizer_dir, tmp_path_factory):
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    module = UnifiedModule(image_tokenizer=tokenizer_dirs["image_tokenizer"],
                           text_tokenizer=str(layout_text_tokenizer_dir), image_size=32,
                           max_text_len=24, dim=32, depth=2, heads=4,
                           modalities={"layout": {"kind": "shapes_layout"}},
                           tasks={"t2i": 1, "t2layout": 1, "layout2i": 1, "i2layout": 1})
    out = tmp_path_factory.mktemp("layout_eval") / "pipeline"
    module.to_pipeline().save_pretrained(out)
    return UnifiedPipeline.from_pretrained(out)


def _records(folder: Path, task: str) -> list[dict]:
    rows = [json.loads(x) for x in (folder / "records.jsonl").read_text().splitlines()]
    return [r for r in rows if r["task"] == task]


@pytest.fixture(scope="module")
def debug_run(layout_pipe, tmp_path_factory):
    from unigen.evaluate import load_eval_config

    out = tmp_path_factory.mktemp("layout_eval") / "run"
    config = load_eval_config(RECIPES / "debug" / "eval_layout_debug.yaml")
    return evaluate_pipeline(layout_pipe, config, out, progress=False), out, config


def test_every_segment_task_is_an_eval_task():
    names = eval_task_names()
    assert names[:4] == ["caption", "fill", "t2i", "vqa"]
    assert {"t2layout", "layout2i", "i2layout"} <= set(names)
    spec = eval_task("i2layout")
    assert spec is eval_task("i2layout") and spec.image_kinds == () and spec.method == "run_task"
    assert eval_task("layout2i").image_kinds == ("distribution",)
    with pytest.raises(KeyError, match="'nope'"):
        eval_task("nope")


def test_the_debug_recipe_scores_every_layout_task(debug_run):
    result, out, config = debug_run
    metrics = result["metrics"]
    # a further modality's task names the metrics it shares with others: no clash with t2i's
    assert {"compositional_accuracy/t2layout/overall", "compositional_accuracy/layout2i/overall",
            "layout_cell_accuracy", "layout_object_recall", "segment_exact_match/i2layout",
            "code_accuracy/i2layout", "model_calls/t2layout"} <= set(metrics), sorted(metrics)
    assert "compositional_accuracy/layout2i/category/scene" in metrics  # exhaustive scene checks
    assert not any(k.startswith("compositional_accuracy/overall") for k in metrics)
    assert all(0 <= metrics[k] <= 1 for k in metrics if "model_calls" not in k)
    used = result["metadata"]["tasks"]
    assert used["i2layout"]["sampler"] == "confident" and used["i2layout"]["num_steps"] == 3
    assert used["t2layout"]["sampler"] == "maskgit"  # the task's default: sampled plans
    for task in ("t2layout", "layout2i", "i2layout"):
        assert (out / f"samples_{task}.png").is_file()
        assert len(_records(out, task)) == 6


def test_parsing_scores_equal_layout_scores_of_the_same_run(debug_run, layout_pipe):
    result, out, _ = debug_run
    data = build_data(SHAPES | {"num_samples": 6}, 32)
    samples = [data.sample(i) for i in range(6)]
    images = torch.stack([s.image for s in samples])
    direct = layout_pipe.run_task("i2layout", {"image": images}, num_steps=3, seed=range(6))
    layout = ShapesLayout()
    truth = layout.encode([s.scene for s in samples])
    want = layout_scores(direct["layout_codes"], truth)
    records = _records(out, "i2layout")
    parsed = torch.tensor([r["layout_codes"] for r in records])
    assert torch.equal(parsed, direct["layout_codes"].cpu())  # records hold the parse
    assert [r["layout"] for r in records] == [layout.to_json(s) for s in direct["layout"]]
    metrics = result["metrics"]
    assert metrics["layout_cell_accuracy"] == pytest.approx(want["cell_accuracy"])
    assert metrics["layout_object_recall"] == pytest.approx(want["object_recall"])
    slots = (parsed == truth).flatten(1).float().mean(1)
    assert [r["code_accuracy"] for r in records] == pytest.approx(slots.tolist())
    assert result["metrics"]["segment_exact_match/i2layout"] == want["exact_match"]
    assert [r["layout_text"] for r in records] == layout.describe(direct["layout"])


def test_plan_and_drawing_verdicts_are_the_checkers(debug_run, layout_pipe):
    _, out, _ = debug_run
    data = build_data(SHAPES | {"num_samples": 6}, 32)
    samples = [data.sample(i) for i in range(6)]
    for record, sample in zip(_records(out, "t2layout"), samples):
        assert record["prompt"] == sample.prompt
        picture = render_tensor(Scene.from_dict(record["layout"]), 32)
        assert record["correct"] == check(picture, sample.prompt).correct
    drawn = layout_pipe.run_task("layout2i", {"layout": [s.scene for s in samples]}, num_steps=4,
                                 seed=range(6), output="tensor")["image"]
    for record, sample, image in zip(_records(out, "layout2i"), samples, drawn):
        assert Scene.from_dict(record["layout"]).to_dict() == sample.scene.to_dict()
        assert record["correct"] == check(image.float().cpu(), sample.scene).correct


def test_segment_task_metrics_and_models_are_checked(layout_pipe, pipeline_dir, tmp_path):
    def recipe(task, metrics, data=SHAPES):
        return {"data": data, "grid_size": 0, "tasks": {task: {"metrics": metrics}}}

    with pytest.raises(ValueError, match="'layout_cell_accuracy' scores task 'i2layout', not "
                                         "tasks.t2layout"):
        parse_config(recipe("t2layout", ["layout_cell_accuracy"]))
    with pytest.raises(ValueError, match="'code_accuracy' reads the records' 'code_accuracy', "
                                         "which tasks.t2i does not write"):
        parse_config(recipe("t2i", ["code_accuracy"]))
    with pytest.raises(ValueError, match="unknown task 'tasks.t2lay'; known: caption, fill, t2i, vqa, "
                                         "i2layout"):
        parse_config(recipe("t2lay", ["model_calls"]))
    plain = UnifiedPipeline.from_pretrained(pipeline_dir)
    with pytest.raises(ValueError, match="tasks.layout2i needs the 'layout' segment, which this "
                                         r"model lacks \(its modalities: none\)"):
        evaluate_pipeline(plain, recipe("layout2i", ["compositional_accuracy"]), tmp_path / "a",
                          progress=False)
    with pytest.raises(ValueError, match="compositional_accuracy on tasks.i2layout: the task is "
                                         "given neither text nor an item"):
        evaluate_pipeline(layout_pipe, recipe("i2layout", ["compositional_accuracy"]),
                          tmp_path / "b", progress=False)


def test_a_source_without_scenes_names_the_missing_field(layout_pipe, tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    root.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "0.png")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "text": "a red"}) + "\n")
    recipe = {"data": {"source": "folder", "root": str(root)}, "grid_size": 0,
              "tasks": {"i2layout": {"metrics": ["layout_cell_accuracy"]}}}
    with pytest.raises(ValueError, match=r"tasks.i2layout needs each sample's layout "
                                         r"\(ShapesLayout reads the data's 'scene' field\); "
                                         "sample 0 has none"):
        evaluate_pipeline(layout_pipe, recipe, tmp_path / "run", progress=False)


class OracleLayoutPipe:
    """The layout pipeline's modalities and sizes, with ``run_task`` answering from the data:
    the truth for even samples, an empty scene (or a blank image) for odd ones."""

    def __init__(self, pipe, data):
        self.pipe, self.data = pipe, data

    def __getattr__(self, name):  # weights, sizes, modalities: the real pipeline's
        return getattr(self.pipe, name)

    def run_task(self, task, inputs, seed, output, return_calls, **options):
        layout = self.modalities["layout"]
        scenes = [self.data.sample(i).scene if i % 2 == 0 else Scene([]) for i in seed]
        if task == "layout2i":
            out = {"image": torch.stack([render_tensor(s, self.image_size) for s in scenes])}
        else:
            out = {"layout": scenes, "layout_codes": layout.encode(scenes)}
        return out, [1] * len(seed)


def test_scores_of_known_answers_are_exact(layout_pipe, tmp_path):
    data = build_data(SHAPES | {"num_samples": 6}, 32)
    recipe = {"data": SHAPES | {"num_samples": 6}, "batch_size": 4, "grid_size": 0, "tasks": {
        "t2layout": {"metrics": ["compositional_accuracy"]},
        "layout2i": {"metrics": ["compositional_accuracy"]},
        "i2layout": {"metrics": ["layout_cell_accuracy", "layout_object_recall",
                                 "segment_exact_match", "code_accuracy"]}}}
    out = evaluate_pipeline(OracleLayoutPipe(layout_pipe, data), recipe, tmp_path, progress=False)
    metrics = out["metrics"]
    objects = [len(data.sample(i).scene.objects) for i in range(6)]
    # true plans satisfy their captions and true drawings show their scenes: 3 of 6
    assert metrics["compositional_accuracy/t2layout/overall"] == 0.5
    assert metrics["compositional_accuracy/layout2i/overall"] == 0.5
    assert metrics["segment_exact_match/i2layout"] == 0.5
    assert metrics["layout_object_recall"] == pytest.approx(sum(objects[::2]) / sum(objects))
    # an empty parse still reads the empty cells right
    assert metrics["layout_cell_accuracy"] == pytest.approx(
        (27 + sum(9 - n for n in objects[1::2])) / 54)
    assert metrics["code_accuracy/i2layout"] == pytest.approx(
        (81 + sum(27 - 3 * n for n in objects[1::2])) / 162)


def test_a_drawn_image_feeds_distribution_metrics_under_the_tasks_name(layout_pipe, tmp_path,
                                                                       domain_classifier_dir):
    data = build_data(SHAPES | {"num_samples": 4}, 32)
    recipe = {"data": SHAPES | {"num_samples": 4}, "grid_size": 0,
              "resources": {"extractor": {"name": "domain_classifier",
                                          "path": str(domain_classifier_dir)}},
              "tasks": {"layout2i": {"metrics": [{"name": "kid", "subset_size": 2,
                                                  "subsets": 3}]}}}
    out = evaluate_pipeline(OracleLayoutPipe(layout_pipe, data), recipe, tmp_path / "run",
                            progress=False)
    assert {"kid/layout2i", "kid_std/layout2i"} == set(out["metrics"])


def test_sweeps_draw_the_headlines_of_further_modalities_tasks():
    from unigen.evaluate.sweep import _is_headline

    for name in ("compositional_accuracy/t2layout/overall", "kid/layout2i", "model_calls/i2layout",
                 "layout_cell_accuracy", "compositional_accuracy/overall", "fid"):
        assert _is_headline(name), name
    for name in ("kid_std/layout2i", "kid_std", "compositional_accuracy/t2layout/category/scene",
                 "compositional_accuracy/t2layout/sample_accuracy",
                 "compositional_accuracy/sample_accuracy"):
        assert not _is_headline(name), name


def test_a_modality_without_pictures_shows_the_data_images_in_its_grid(layout_pipe, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setattr(ShapesLayout, "render", lambda self, items, size: None)
    recipe = {"data": SHAPES | {"num_samples": 2}, "grid_size": 2,
              "tasks": {"t2layout": {"num_steps": 2, "metrics": ["model_calls"]}}}
    out = evaluate_pipeline(layout_pipe, recipe, tmp_path / "run", progress=False)
    assert Path(out["paths"]["samples_t2layout"]).is_file()
    data = build_data(SHAPES | {"num_samples": 2}, 32)
    shown = sorted((tmp_path / "run" / "samples" / "t2layout").glob("*.png"))
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    for path, i in zip(shown, range(2)):
        image = pil_to_tensor(Image.open(path).convert("RGB")).float() / 255
        assert torch.allclose(image, data.sample(i).image, atol=1 / 255)
    recipe["tasks"]["t2layout"]["metrics"] = ["compositional_accuracy"]
    with pytest.raises(ValueError, match="compositional_accuracy on tasks.t2layout checks a "
                                         r"picture of each predicted layout, and ShapesLayout "
                                         r"draws none \(Modality.render\)"):
        evaluate_pipeline(layout_pipe, recipe, tmp_path / "run2", progress=False)
