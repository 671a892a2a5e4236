"""evaluate_pipeline with an oracle in place of a model: it answers from the evaluation data itself,
right for even samples and wrong for odd ones, so every metric has an exactly known value."""

import json

import pytest
import torch
from PIL import Image

from unigen.data.checker import caption_attribute_recall, prompt_category
from unigen.evaluate import EVAL_DATA, build_data, evaluate_pipeline


def oracle_calls(index: int) -> int:
    """The network calls the oracle claims for sample ``index``: 1, 2, 3, 1, 2, 3, ..."""
    return index % 3 + 1


class OraclePipeline:
    """The pipeline interface evaluate_pipeline uses. Sample ``i`` comes with seed ``seed + i``
    (recipe seed 0 here), which is how the oracle finds the sample it is asked about."""

    def __init__(self, data, image_size: int) -> None:
        self.data, self.image_size, self.device = data, image_size, torch.device("cpu")
        self.transformer, self.image_tokenizer = torch.nn.Linear(2, 2), torch.nn.Identity()
        self.calls: list[tuple[str, int, dict]] = []

    def _samples(self, method, seed, options):
        self.calls.append((method, len(seed), options))
        return [self.data.sample(s) for s in seed]

    @staticmethod
    def _reply(outputs, samples, return_calls):
        assert return_calls  # evaluate always records the network calls
        return outputs, [oracle_calls(s.index) for s in samples]

    def text_to_image(self, prompts, seed, output, return_calls=False, **options):
        assert output == "tensor"
        samples = self._samples("t2i", seed, options)
        assert prompts == [s.prompt for s in samples]
        blank = torch.zeros(3, self.image_size, self.image_size)
        return self._reply(torch.stack([s.image if s.index % 2 == 0 else blank for s in samples]),
                           samples, return_calls)

    def caption(self, images, seed, return_calls=False, **options):
        samples = self._samples("caption", seed, options)
        assert torch.equal(images, torch.stack([s.image for s in samples]))
        return self._reply([s.prompt if s.index % 2 == 0 else "nothing at all" for s in samples],
                           samples, return_calls)

    def answer(self, images, questions, seed, return_calls=False, **options):
        samples = self._samples("vqa", seed, options)
        assert questions == [s.question for s in samples]
        return self._reply([s.answer if s.index % 2 == 0 else "purple" for s in samples], samples,
                           return_calls)


SHAPES = {"source": "shapes", "split": "heldout", "num_samples": 12, "seed": 3}


def test_metrics_have_their_known_values(tmp_path):
    data = build_data(SHAPES, 64)
    pipe = OraclePipeline(data, 64)
    config = {"data": SHAPES, "batch_size": 5, "grid_size": 4, "tasks": {
        "t2i": {"sampler": "confident", "num_steps": 6, "guidance_scale": 3,
                "sampler_kwargs": {"threshold": 0.8}, "metrics": ["compositional_accuracy"]},
        "caption": {"metrics": ["caption_fact_precision", "caption_attribute_recall", "bleu4"]},
        "vqa": {"num_steps": 2, "metrics": ["vqa_exact_match"]}}}
    out = evaluate_pipeline(pipe, config, tmp_path, progress=False)
    samples = [data.sample(i) for i in range(12)]
    categories = {}
    for s in samples:
        categories.setdefault(prompt_category(s.prompt), []).append(s.index % 2 == 0)
    expected = {c: sum(v) / len(v) for c, v in sorted(categories.items())}
    assert out["per_category"] == pytest.approx(expected)
    m = out["metrics"]
    overall = sum(expected.values()) / len(expected)  # GenEval: the mean over categories
    assert m["compositional_accuracy/overall"] == pytest.approx(overall)
    assert m["compositional_accuracy/sample_accuracy"] == 0.5
    assert m["vqa_exact_match"] == 0.5
    assert m["caption_fact_precision"] == 0.5  # exact captions 1.0, unparsable ones 0.0
    recall = [caption_attribute_recall(s.prompt, s.scene) for s in samples if s.index % 2 == 0]
    assert m["caption_attribute_recall"] == pytest.approx(sum(recall) / 12)
    assert 0.0 < m["bleu4"] < 1.0
    # the recipe's sampler settings reach the pipeline, in batches of batch_size
    t2i = [c for c in pipe.calls if c[0] == "t2i"]
    assert [n for _, n, _ in t2i] == [5, 5, 2]
    assert t2i[0][2] == {"sampler": "confident", "num_steps": 6, "guidance_scale": 3.0,
                         "sampler_kwargs": {"threshold": 0.8}, "guidance_kwargs": {},
                         "use_cache": True, "cuda_graphs": False}
    assert "num_steps" not in [c for c in pipe.calls if c[0] == "caption"][0][2]  # model default
    # grids hold grid_size samples; t2i is captioned with the checker's verdict
    with Image.open(out["paths"]["samples_t2i"]) as grid:
        assert grid.width > 4 * 64
    records = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in records if r["task"] == "t2i"] == [i % 2 == 0 for i in range(12)]
    assert out["metadata"]["resources"] == {} and out["metadata"]["data"]["image_size"] == 64


def test_folder_data_and_metric_requirements(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    texts = ["a small red square on black", "a large blue circle in the middle",
             "two green stars next to each other", "a white cross in the corner"]
    lines = []
    for i, text in enumerate(texts):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": text, "question": "what?",
                                 "answer": f"thing {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    spec = {"source": "folder", "root": str(root)}
    data = build_data(spec, 32)
    assert len(data) == 4 and data.sample(2).references == [texts[2]]
    pipe = OraclePipeline(data, 32)
    out = evaluate_pipeline(pipe, {"data": spec, "tasks": {
        "caption": {"metrics": ["bleu4", "cider_d"]}, "vqa": {"metrics": ["vqa_exact_match"]}}},
        tmp_path / "out", progress=False)
    assert out["metrics"]["vqa_exact_match"] == 0.5 and out["metadata"]["data"]["num_samples"] == 4
    with pytest.raises(ValueError, match="'caption_fact_precision' needs scene annotations"):
        evaluate_pipeline(pipe, {"data": spec, "tasks": {
            "caption": {"metrics": ["caption_fact_precision"]}}}, tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="compositional_accuracy needs prompts of the shapes"):
        evaluate_pipeline(pipe, {"data": spec, "tasks": {
            "t2i": {"metrics": ["compositional_accuracy"]}}}, tmp_path / "bad2", progress=False)


def test_sources_are_registered_and_validated():
    assert {"shapes", "folder", "fashion_mnist"} <= set(EVAL_DATA.names())
    with pytest.raises(ValueError, match="'data.num_samples' must be an integer, got 'many'"):
        build_data({"source": "shapes", "num_samples": "many"}, 32)
    with pytest.raises(ValueError, match="unknown split"):
        build_data({"source": "shapes", "split": "test"}, 32)


def test_shapes_references_are_the_templates_and_the_description():
    from unigen.data.shapes import captions, description

    data = build_data(SHAPES, 32)
    for i in range(12):
        s = data.sample(i)
        templates = captions(s.scene, data.world.rng(i, 1))
        assert s.references[:len(templates)] == templates
        assert description(s.scene) in s.references
        assert len(s.references) == len(templates) + (description(s.scene) not in templates)


def test_sweep_block_runs_every_point(tmp_path):
    from unigen.evaluate import sweep_pipeline

    data = build_data(SHAPES, 64)
    pipe = OraclePipeline(data, 64)
    config = {"data": {**SHAPES, "num_samples": 4}, "grid_size": 0,
              "tasks": {"vqa": {"metrics": ["vqa_exact_match"]}},
              "sweep": {"sampler": ["maskgit", "confident"], "vqa.num_steps": [1, 3]}}
    out = sweep_pipeline(pipe, config, tmp_path, progress=False)
    assert [p["point"] for p in out["points"]] == [
        {"sampler": s, "vqa.num_steps": n} for s in ("maskgit", "confident") for n in (1, 3)]
    # each point ran with its own settings, on every sample
    assert [(c[2]["sampler"], c[2]["num_steps"]) for c in pipe.calls] == [
        ("maskgit", 1), ("maskgit", 3), ("confident", 1), ("confident", 3)]
    (curve,) = out["sweeps"]  # the categorical axis labels the lines of the numeric one
    assert curve.name == "vqa_exact_match_vs_vqa-num_steps" and list(curve.values) == [1, 3]
    assert curve.series == {"sampler=maskgit": [0.5, 0.5], "sampler=confident": [0.5, 0.5]}
    assert (tmp_path / "sweep_vqa_exact_match_vs_vqa-num_steps.png").is_file()
    first = tmp_path / "points" / "000_sampler-maskgit_vqa-num_steps-1"
    assert (first / "results.json").is_file() and not (first / "samples_vqa.png").exists()


def test_model_calls_any_task_may_list_it_and_each_task_reports_its_own(tmp_path):
    from unigen.evaluate import sweep_pipeline

    data = build_data(SHAPES, 64)
    pipe = OraclePipeline(data, 64)
    config = {"data": {**SHAPES, "num_samples": 5}, "batch_size": 2, "grid_size": 0, "tasks": {
        "t2i": {"metrics": ["compositional_accuracy", "model_calls"]},
        "caption": {"metrics": ["bleu4"]},  # records calls without listing the metric
        "vqa": {"metrics": ["model_calls", "vqa_exact_match"]}}}
    out = evaluate_pipeline(pipe, config, tmp_path / "run", progress=False)
    expected = sum(oracle_calls(i) for i in range(5)) / 5  # (1 + 2 + 3 + 1 + 2) / 5
    assert out["metrics"]["model_calls/t2i"] == out["metrics"]["model_calls/vqa"] == expected
    assert not any(k.startswith("model_calls") and k.endswith("caption") for k in out["metrics"])
    records = [json.loads(x) for x in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert [r["model_calls"] for r in records] == [oracle_calls(i) for i in range(5)] * 3
    assert "| model_calls/t2i |" in (tmp_path / "run" / "report.md").read_text()
    # a sweep plots each task's calls against the axes of that task only
    sweep = sweep_pipeline(pipe, config, tmp_path / "sweep", axes={"vqa.num_steps": [1, 2]},
                           progress=False)
    assert {s.metric for s in sweep["sweeps"]} == {"vqa_exact_match", "model_calls/vqa"}
    assert sweep["sweeps"][0].parameter == "vqa.num_steps"
    calls = next(s for s in sweep["sweeps"] if s.metric == "model_calls/vqa")
    assert calls.series == {"model_calls/vqa": [expected, expected]}


def test_record_metric_that_never_sets_its_task_is_refused(monkeypatch):
    from unigen.evaluate import RECORD_METRICS, RecordMean, parse_config, result_name

    class Forgetful(RecordMean):  # a per-sample score whose author forgot ``task``
        field = "fact_precision"

    monkeypatch.setitem(RECORD_METRICS._items, "forgetful_score", Forgetful)
    message = r"record metric 'forgetful_score' \(.*Forgetful\) sets no task"
    for task in ("t2i", "caption"):
        with pytest.raises(ValueError, match=message):
            parse_config({"data": SHAPES, "tasks": {task: {"metrics": ["forgetful_score"]}}})
    with pytest.raises(ValueError, match=message):
        result_name("forgetful_score", "caption")
    monkeypatch.setattr(Forgetful, "task", "caption")  # set: scores its task only
    parse_config({"data": SHAPES, "tasks": {"caption": {"metrics": ["forgetful_score"]}}})
    assert result_name("forgetful_score", "caption") == "forgetful_score"


def test_record_metric_of_one_task_still_refuses_the_others():
    from unigen.evaluate import RECORD_METRICS, parse_config

    assert RECORD_METRICS.get("model_calls").task is None
    assert not RECORD_METRICS.get("model_calls").higher_is_better
    for task in ("t2i", "caption", "vqa", "fill"):
        parse_config({"data": SHAPES, "tasks": {task: {"metrics": ["model_calls"]}}})
    with pytest.raises(ValueError, match="metric 'caption_fact_precision' scores task 'caption', "
                                         "not tasks.t2i"):
        parse_config({"data": SHAPES, "tasks": {"t2i": {"metrics": ["caption_fact_precision"]}}})
    with pytest.raises(ValueError, match="unknown task 'tasks.i2t'; known: caption, fill, t2i, vqa"):
        parse_config({"data": SHAPES, "tasks": {"i2t": {"metrics": ["model_calls"]}}})


def test_empty_images_runs_the_checker_on_its_own(tmp_path):
    data = build_data(SHAPES, 64)
    config = {"data": SHAPES, "batch_size": 5, "tasks": {"t2i": {"metrics": ["empty_images"]}}}
    out = evaluate_pipeline(OraclePipeline(data, 64), config, tmp_path, progress=False)
    assert out["metrics"]["empty_images"] == 0.5  # the oracle draws odd samples blank
    records = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [r["empty"] for r in records] == [i % 2 == 1 for i in range(12)]
    # the real renders: every object of the scene found, none in the blanks
    assert [r["detected"] for r in records] == [
        len(data.sample(i).scene.objects) if i % 2 == 0 else 0 for i in range(12)]


def test_class_accuracy_is_fed_the_generated_images_and_prompts(tmp_path):
    from unigen.metrics import DomainClassifier
    from unigen.metrics.features import DomainClassifierExtractor

    root = tmp_path / "folder"
    root.mkdir()
    names = ["red", "green", "blue"]
    lines = []
    for i in range(7):
        Image.new("RGB", (32, 32), (60 * i, 255 - 30 * i, 20 * i)).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a {names[i % 3]} thing"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    DomainClassifier(names, image_size=32, channels=(8, 16), feature_dim=16).save_pretrained(
        tmp_path / "clf")
    spec = {"source": "folder", "root": str(root)}
    data = build_data(spec, 32)
    out = evaluate_pipeline(OraclePipeline(data, 32), {"data": spec, "batch_size": 3, "tasks": {
        "t2i": {"metrics": [{"name": "class_accuracy", "classifier": str(tmp_path / "clf")}]}}},
        tmp_path / "out", progress=False)
    # the oracle draws sample i's real image for even i and a blank one for odd i
    shown = torch.stack([data.sample(i).image if i % 2 == 0 else torch.zeros(3, 32, 32)
                         for i in range(7)])
    predicted = DomainClassifierExtractor(str(tmp_path / "clf"))(shown).logits.argmax(-1)
    right = [int(predicted[i]) == i % 3 for i in range(7)]
    m = out["metrics"]
    assert m["class_accuracy"] == pytest.approx(sum(right) / 7)
    for k, name in enumerate(names):
        rows = [right[i] for i in range(7) if i % 3 == k]
        assert m[f"class_accuracy/{name}"] == pytest.approx(sum(rows) / len(rows))
    # every record carries its sample's verdict, so failures can be found and runs paired
    records = sorted((json.loads(line) for line in (tmp_path / "out" / "records.jsonl").open()),
                     key=lambda r: r["index"])
    assert [(r["class_prompted"], r["class_predicted"], r["class_correct"]) for r in records] == [
        (names[i % 3], names[int(predicted[i])], right[i]) for i in range(7)]


class _Verdicts:
    def __init__(self, fields):
        self.fields = fields

    def sample_fields(self):
        return self.fields


def test_per_sample_metric_fields_must_match_the_batch():
    from unigen.evaluate.loop import _add_sample_fields

    records = [{"task": "t2i", "index": 0}, {"task": "t2i", "index": 1}]
    _add_sample_fields(records, "judge", _Verdicts([{"ok": True}, {"ok": False}]))
    assert records == [{"task": "t2i", "index": 0, "ok": True}, {"task": "t2i", "index": 1, "ok": False}]
    _add_sample_fields(records, "fid", object())  # a metric without verdicts adds nothing
    with pytest.raises(RuntimeError, match="judge: sample_fields\\(\\) gave 1 entries for a batch of 2"):
        _add_sample_fields(records, "judge", _Verdicts([{"x": 1}]))
    with pytest.raises(RuntimeError, match=r"judge: sample field\(s\) \['index'\] already in the record"):
        _add_sample_fields(records, "judge", _Verdicts([{"index": 5}, {"index": 6}]))


def test_a_plugin_source_needs_image_size_and_may_leave_options_unannotated():
    from unigen.evaluate.data import EvalData

    class NoSize(EvalData):
        def __init__(self, num_samples: int = 2): ...
        def __len__(self): return 0
        def sample(self, index): ...

    class Loose(NoSize):
        def __init__(self, image_size, tag="a"):
            self.image_size, self.tag = image_size, tag

    EVAL_DATA.register("test_no_size")(NoSize)
    EVAL_DATA.register("test_loose")(Loose)
    try:
        with pytest.raises(ValueError, match="'test_no_size' .* must take an image_size argument"):
            build_data({"source": "test_no_size"}, 32)
        data = build_data({"source": "test_loose", "tag": 7}, 32)
        assert (data.image_size, data.tag) == (32, 7)
    finally:
        EVAL_DATA._items.pop("test_no_size")
        EVAL_DATA._items.pop("test_loose")


def _folder(root, n: int, qa: bool = True):
    root.mkdir()
    lines = []
    for i in range(n):
        Image.new("RGB", (32, 32), (30 * i, 200 - 20 * i, 10 * i)).save(root / f"{i}.png")
        row = {"file_name": f"{i}.png", "text": f"a red thing number {i}"}
        if qa:
            row.update(question="what color?", answer="yes" if i == 99 else "red")
        lines.append(json.dumps(row))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return {"source": "folder", "root": str(root)}


def _fid_recipe(extractor_dir, n: int = 6, metrics=()):
    return {"data": {**SHAPES, "num_samples": n}, "batch_size": 2, "grid_size": 2,
            "resources": {"extractor": {"name": "domain_classifier", "path": str(extractor_dir)}},
            "tasks": {"t2i": {"fid": True, "metrics": list(metrics)}}}


def test_resume_follows_the_metric_weights_not_their_path(tmp_path, domain_classifier_dir):
    import shutil

    from unigen.metrics import DomainClassifier

    data = build_data(SHAPES, 32)
    pipe = OraclePipeline(data, 32)
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(domain_classifier_dir, here)
    first = evaluate_pipeline(pipe, _fid_recipe(here), tmp_path / "run", progress=False)
    assert first["metadata"]["resources"]["extractor"]["weights_sha1"]
    # the same weights read from another directory: the run resumes (nothing left to generate)
    shutil.copytree(here, there)
    again = evaluate_pipeline(pipe, _fid_recipe(there), tmp_path / "run", progress=False,
                              resume=True)
    assert again["metadata"]["resumed_samples"] == {"t2i": 6}
    assert again["metrics"]["fid"] == first["metrics"]["fid"]
    # other weights at the same path: refused in one line, the run left as it was
    records = (tmp_path / "run" / "records.jsonl").read_text()
    torch.manual_seed(5)
    DomainClassifier(["red", "green", "blue", "white"], image_size=32, channels=(8, 16),
                     feature_dim=16).save_pretrained(there)
    with pytest.raises(ValueError) as err:
        evaluate_pipeline(pipe, _fid_recipe(there), tmp_path / "run", progress=False, resume=True)
    assert str(err.value) == (f"cannot resume {tmp_path / 'run'}: the metrics' networks differ "
                              "from the earlier run's at 't2i/fid.weights_sha1' (other weights: "
                              "start over without --resume)")
    assert (tmp_path / "run" / "records.jsonl").read_text() == records
    # a metric's own classifier option is identified by its weights too
    shutil.rmtree(there)
    shutil.copytree(here, there)
    folder = _folder(tmp_path / "folder", 4)
    pipe = OraclePipeline(build_data(folder, 32), 32)

    def classified(directory):
        return {"data": folder, "grid_size": 0, "tasks": {"t2i": {"metrics": [
            {"name": "class_accuracy", "classifier": str(directory)}]}}}

    evaluate_pipeline(pipe, classified(here), tmp_path / "cls", progress=False)
    out = evaluate_pipeline(pipe, classified(there), tmp_path / "cls", progress=False, resume=True)
    assert out["metadata"]["resumed_samples"] == {"t2i": 4}
    assert out["metadata"]["resources"]["t2i/class_accuracy"]["classifier"]["path"] == str(there)


def test_sample_count_options_are_checked_once_the_data_is_known(tmp_path):
    folder = _folder(tmp_path / "folder", 3)  # num_samples null: the folder's size decides
    data = build_data(folder, 32)
    pipe = OraclePipeline(data, 32)
    recipe = {"data": folder, "resources": {"extractor": {"name": "inception_v3",
                                                          "weights": "/nonexistent.pt"}},
              "tasks": {"t2i": {"metrics": [{"name": "kid", "subset_size": 4}]}}}
    # refused before the extractor loads (its weights file does not exist) or anything is made
    with pytest.raises(ValueError, match="tasks.t2i.metrics: kid: option subset_size=4 is more "
                                         "than the 3 samples"):
        evaluate_pipeline(pipe, recipe, tmp_path / "out", progress=False)
    assert pipe.calls == [] and not (tmp_path / "out" / "records.jsonl").exists()


def test_every_task_checks_its_data_before_any_task_generates(tmp_path):
    folder = _folder(tmp_path / "folder", 4, qa=False)
    pipe = OraclePipeline(build_data(folder, 32), 32)
    recipe = {"data": folder, "tasks": {"t2i": {"metrics": ["model_calls"]},
                                        "caption": {"metrics": ["bleu4"]},
                                        "vqa": {"metrics": ["vqa_exact_match"]}}}
    with pytest.raises(ValueError, match="tasks.vqa needs question and answer texts for every "
                                         "sample; sample 0 of data source 'folder' has no "
                                         "question"):
        evaluate_pipeline(pipe, recipe, tmp_path / "out", progress=False)
    assert pipe.calls == []  # t2i and caption did not run first


def test_undefined_metric_values_are_written_as_json_null(tmp_path, monkeypatch):
    from unigen.metrics import METRICS, VQA, HostMetric

    class YesNoAccuracy(HostMetric):  # the docs' example: NaN on data without yes/no answers
        kind = VQA

        def reset(self):
            self.hits, self.total = 0, 0

        def update(self, predictions, answers):
            pairs = [(p, a) for p, a in zip(predictions, answers) if a in ("yes", "no")]
            self.hits += sum(p == a for p, a in pairs)
            self.total += len(pairs)

        def compute(self):
            return torch.tensor(self.hits / self.total if self.total else float("nan"))

    monkeypatch.setitem(METRICS._items, "yes_no_test", YesNoAccuracy)
    folder = _folder(tmp_path / "folder", 3)
    out = evaluate_pipeline(OraclePipeline(build_data(folder, 32), 32), {
        "data": folder, "tasks": {"vqa": {"metrics": ["yes_no_test", "vqa_exact_match"]}}},
        tmp_path / "out", progress=False)

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    for name in ("results.json", "run.json"):
        json.loads((tmp_path / "out" / name).read_text(), parse_constant=strict)
    for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=strict)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["metrics"]["yes_no_test"] is None and saved["metrics"]["vqa_exact_match"] == 2 / 3
    assert out["metrics"]["vqa_exact_match"] == 2 / 3


def test_a_new_run_replaces_every_file_of_the_earlier_one_and_keeps_the_users(tmp_path):
    data = build_data(SHAPES, 64)
    pipe = OraclePipeline(data, 64)
    out = tmp_path / "out"
    evaluate_pipeline(pipe, {"data": SHAPES, "grid_size": 3, "tasks": {
        "t2i": {"metrics": ["compositional_accuracy"]}}}, out, progress=False)
    assert (out / "per_category.png").is_file() and (out / "samples_t2i.png").is_file()
    assert len(list((out / "samples" / "t2i").glob("*.png"))) == 3
    (out / "notes.txt").write_text("mine")
    (out / "samples" / "t2i" / "favourite.png").write_bytes(b"mine")
    evaluate_pipeline(pipe, {"data": SHAPES, "grid_size": 3, "tasks": {
        "vqa": {"metrics": ["vqa_exact_match"]}}}, out, progress=False)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["notes.txt", "records.jsonl", "report.md", "results.json", "run.json",
                    "samples/t2i/favourite.png", "samples_vqa.png"]
    assert "t2i" not in (out / "report.md").read_text()


def test_extractor_runs_once_per_image_set_for_all_its_metrics(tmp_path, domain_classifier_dir):
    from unigen.metrics import DomainClassifierExtractor, KID, InceptionScore
    from unigen.metrics.fid import frechet_distance, gaussian_statistics

    data = build_data(SHAPES, 32)
    calls = []
    original = DomainClassifierExtractor.extract

    def counted(self, images):
        calls.append(len(images))
        return original(self, images)

    DomainClassifierExtractor.extract = counted
    try:
        metrics = [{"name": "kid", "subset_size": 4, "subsets": 3},
                   {"name": "inception_score", "splits": 2}]
        out = evaluate_pipeline(OraclePipeline(data, 32), _fid_recipe(
            domain_classifier_dir, metrics=metrics), tmp_path / "out", progress=False)
    finally:
        DomainClassifierExtractor.extract = original
    # 3 batches of 2: real and generated once each, not once per metric (was 3 + 3 + 3 runs)
    assert calls == [2] * 6
    # the same numbers as each metric extracting for itself, batch by batch
    extractor = DomainClassifierExtractor(str(domain_classifier_dir))
    kid = KID(extractor=extractor, subset_size=4, subsets=3)
    score = InceptionScore(extractor=extractor, splits=2)
    real_features, made_features = [], []
    for lo in (0, 2, 4):
        samples = [data.sample(i) for i in (lo, lo + 1)]
        real = torch.stack([s.image for s in samples])
        made = torch.stack([s.image if s.index % 2 == 0 else torch.zeros(3, 32, 32)
                            for s in samples])
        for metric in (kid, score):
            metric.update(real, real=True)
            metric.update(made, real=False)
        real_features.append(extractor(real).features)
        made_features.append(extractor(made).features)
    fid = frechet_distance(*gaussian_statistics(torch.cat(real_features)),
                           *gaussian_statistics(torch.cat(made_features)))
    assert out["metrics"]["fid"] == pytest.approx(fid.item(), rel=1e-6)
    assert out["metrics"]["kid"] == kid.compute()["kid"].item()
    assert out["metrics"]["inception_score"] == score.compute()["inception_score"].item()


# --- sweeps reuse the tasks a point does not change -------------------------------------------

def _generated(pipe) -> dict[str, int]:
    """Samples the pipeline generated, per task."""
    out: dict[str, int] = {}
    for method, n, _ in pipe.calls:
        out[method] = out.get(method, 0) + n
    return out


def _records(folder):
    return [json.loads(x) for x in (folder / "records.jsonl").read_text().splitlines()]


def _results(folder):
    return json.loads((folder / "results.json").read_text())


REUSE = {"data": {**SHAPES, "num_samples": 6}, "batch_size": 4, "grid_size": 2, "tasks": {
    "t2i": {"num_steps": 2, "metrics": ["compositional_accuracy", "model_calls"]},
    "caption": {"metrics": ["bleu4", "caption_fact_precision", "model_calls"]},
    "vqa": {"num_steps": 2, "metrics": ["vqa_exact_match", "model_calls"]}}}
# the same tasks with fewer plots to draw (no per-category bars, one grid image)
LIGHT = {**REUSE, "grid_size": 1, "tasks": {"t2i": {"metrics": ["model_calls"]},
                                            "caption": {"metrics": ["bleu4"]},
                                            "vqa": {"metrics": ["vqa_exact_match"]}}}


def test_a_t2i_sweep_generates_caption_and_vqa_once_and_reuses_them(tmp_path):
    from unigen.evaluate import sweep_pipeline, with_setting

    pipe = OraclePipeline(build_data(SHAPES, 64), 64)
    out = sweep_pipeline(pipe, REUSE, tmp_path / "sweep", {"t2i.guidance_scale": [1, 2, 3]},
                         progress=False)
    # t2i at each of the 3 points, caption and VQA at the first only
    assert _generated(pipe) == {"t2i": 18, "caption": 6, "vqa": 6}
    assert [c[2]["guidance_scale"] for c in pipe.calls if c[0] == "t2i"] == [1, 1, 2, 2, 3, 3]
    first = out["points"][0]["dir"]
    assert "reused" not in out["points"][0]
    for run in out["points"][1:]:
        assert run["reused"] == {"caption": first, "vqa": first}
    summary = _results(tmp_path / "sweep")
    assert summary["metadata"]["points"] == out["points"]
    # every point is what a plain run of its settings writes: records, numbers, sample images
    for k, run in enumerate(out["points"]):
        folder = tmp_path / "sweep" / run["dir"]
        alone = tmp_path / f"alone{k}"
        plain = OraclePipeline(pipe.data, 64)
        plain.transformer.load_state_dict(pipe.transformer.state_dict())  # the same model
        config = with_setting(REUSE, "t2i.guidance_scale", k + 1)
        expected = evaluate_pipeline(plain, config, alone, progress=False)
        assert _records(folder) == _records(alone)
        assert out["metrics"][k] == expected["metrics"]
        saved = _results(folder)
        assert saved["metrics"] == _results(alone)["metrics"]
        assert saved["per_category"] == _results(alone)["per_category"]
        assert sorted(p.name for p in (folder / "samples" / "t2i").iterdir()) == [
            "000000.png", "000001.png"]
        for name in ("samples_t2i.png", "samples_caption.png", "samples_vqa.png"):
            assert (folder / name).is_file()
        meta = saved["metadata"]
        if k:
            assert meta["reused"] == {"caption": first, "vqa": first}
            assert {t: v["generated"] for t, v in meta["timings"].items()} == {
                "t2i": 6, "caption": 0, "vqa": 0}
            assert "reused" in (folder / "report.md").read_text()
        else:
            assert "reused" not in meta
    # a point folder holding reused tasks resumes on its own: nothing left to generate
    last = tmp_path / "sweep" / out["points"][2]["dir"]
    pipe.calls.clear()
    again = evaluate_pipeline(pipe, with_setting(REUSE, "t2i.guidance_scale", 3), last,
                              progress=False, resume=True)
    assert pipe.calls == []
    assert again["metadata"]["resumed_samples"] == {"t2i": 6, "caption": 6, "vqa": 6}
    assert again["metrics"] == out["metrics"][2]
    # reuse=False: every point generates every task, with the same numbers
    pipe.calls.clear()
    plain = sweep_pipeline(pipe, REUSE, tmp_path / "plain", {"t2i.guidance_scale": [1, 2, 3]},
                           progress=False, reuse=False)
    assert _generated(pipe) == {"t2i": 18, "caption": 18, "vqa": 18}
    assert plain["metrics"] == out["metrics"]
    assert all("reused" not in run for run in plain["points"])


def test_sweep_reuse_takes_image_metric_state_and_sample_images(tmp_path, domain_classifier_dir):
    from unigen.evaluate import sweep_pipeline, with_setting

    data = build_data(SHAPES, 32)
    pipe = OraclePipeline(data, 32)
    config = _fid_recipe(domain_classifier_dir, metrics=[
        {"name": "kid", "subset_size": 3, "subsets": 2}])
    config["tasks"]["caption"] = {"metrics": ["bleu4"]}
    out = sweep_pipeline(pipe, config, tmp_path / "sweep", {"caption.num_steps": [1, 2]},
                         progress=False)
    assert _generated(pipe) == {"t2i": 6, "caption": 12}
    first, second = (tmp_path / "sweep" / run["dir"] for run in out["points"])
    assert out["points"][1]["reused"] == {"t2i": out["points"][0]["dir"]}
    assert {"fid", "kid", "kid_std"} <= set(out["metrics"][1])
    assert out["metrics"][1] == out["metrics"][0]
    for name in ("000000.png", "000001.png"):
        assert ((first / "samples" / "t2i" / name).read_bytes()
                == (second / "samples" / "t2i" / name).read_bytes())
    assert (second / "samples_t2i.png").is_file()
    # the state was checkpointed with the reused samples: a resume restores it, generates nothing
    pipe.calls.clear()
    again = evaluate_pipeline(pipe, with_setting(config, "caption.num_steps", 2), second,
                              progress=False, resume=True)
    assert pipe.calls == []
    assert again["metadata"]["resumed_samples"] == {"t2i": 6, "caption": 6}
    assert again["metrics"] == out["metrics"][1]
    # and the FID of a plain run of that point's settings
    alone = evaluate_pipeline(pipe, with_setting(config, "caption.num_steps", 2), tmp_path / "a",
                              progress=False)
    assert alone["metrics"] == out["metrics"][1]


@pytest.mark.parametrize("axes, generated", [
    # keys outside tasks (data, grid_size; the seed: see below) decide every task's outputs
    ({"data.num_samples": [5, 6]}, {"t2i": 11, "caption": 11, "vqa": 11}),
    ({"grid_size": [0, 2]}, {"t2i": 12, "caption": 12, "vqa": 12}),
    # a bare task key sets every task
    ({"num_steps": [1, 2]}, {"t2i": 12, "caption": 12, "vqa": 12}),
    # speed-only keys count too: a sweep of them measures the timings of every task it sets
    ({"batch_size": [2, 3]}, {"t2i": 12, "caption": 12, "vqa": 12}),
    ({"t2i.cuda_graphs": [False, True]}, {"t2i": 12, "caption": 6, "vqa": 6}),
    # one task's key: the others are taken from the first point
    ({"vqa.sampler": ["maskgit", "confident"]}, {"t2i": 6, "caption": 6, "vqa": 12}),
    ({"caption.metrics": [["bleu4"], ["cider_d"]]}, {"t2i": 6, "caption": 12, "vqa": 6}),
    # a key that decides nothing: the second point takes every task from the first
    ({"checkpoint_every": [4, 8]}, {"t2i": 6, "caption": 6, "vqa": 6}),
])
def test_sweep_reuses_a_task_only_when_nothing_that_decides_it_changed(tmp_path, axes, generated):
    from unigen.evaluate import sweep_pipeline

    pipe = OraclePipeline(build_data(SHAPES, 64), 64)
    out = sweep_pipeline(pipe, LIGHT, tmp_path, axes, progress=False)
    assert _generated(pipe) == generated
    reused = set(out["points"][1].get("reused", {}))
    assert reused == {t for t, n in generated.items() if n == 6}


def test_task_identity_follows_the_sampling_seed_model_and_metric_networks(tmp_path,
                                                                          domain_classifier_dir):
    from unigen.evaluate import parse_config, with_setting
    from unigen.evaluate.persistence import _run_identity
    from unigen.metrics import build_feature_extractor, build_metric

    pipe = OraclePipeline(build_data(SHAPES, 64), 64)
    config = _fid_recipe(domain_classifier_dir)
    config["tasks"]["vqa"] = {"metrics": ["vqa_exact_match"]}

    def sha1(recipe, model=pipe, extractor=None):
        cfg = parse_config(recipe)
        live = {"t2i": {"fid": build_metric("fid", {"extractor": extractor})}} if extractor else {}
        return _run_identity(cfg, model, live)["task_sha1"]

    extractor = build_feature_extractor(config["resources"]["extractor"])
    base = sha1(config, extractor=extractor)
    assert sha1(config, extractor=extractor) == base  # canonical: computed again, the same
    assert sha1(with_setting(config, "seed", 1), extractor=extractor).keys() == base.keys()
    assert all(a != b for a, b in zip(
        sha1(with_setting(config, "seed", 1), extractor=extractor).values(), base.values()))
    other_model = OraclePipeline(pipe.data, 64)
    assert all(a != b for a, b in zip(sha1(config, other_model, extractor).values(),
                                      base.values()))
    # the metric networks of a task are part of its identity only
    other = sha1(with_setting(config, "resources.extractor",
                              {"name": "domain_classifier", "path": str(tmp_path / "x")}),
                 extractor=extractor)
    assert other["t2i"] != base["t2i"] and other["vqa"] == base["vqa"]
    assert sha1(with_setting(config, "vqa.num_steps", 3), extractor=extractor)["t2i"] == base["t2i"]


def test_a_task_that_reads_another_is_reused_only_with_it(tmp_path, monkeypatch):
    from unigen.evaluate import (EVAL_TASKS, RECORD, BatchOutput, TaskSpec, _base_record,
                                 parse_config, sweep_pipeline)
    from unigen.evaluate.persistence import identity_recipe, task_identities

    made = []

    def echo(pipe, settings, samples, seeds, checks):  # e.g. a caption of the t2i images
        made.extend(s.index for s in samples)
        return BatchOutput([_base_record("echo", s, seed, 1) for s, seed in zip(samples, seeds)])

    monkeypatch.setitem(EVAL_TASKS._items, "echo", TaskSpec(echo, (RECORD,), inputs_from=("t2i",)))
    config = {**REUSE, "tasks": {**REUSE["tasks"], "echo": {"metrics": ["model_calls"]}}}
    pipe = OraclePipeline(build_data(SHAPES, 64), 64)
    out = sweep_pipeline(pipe, config, tmp_path / "a", {"t2i.guidance_scale": [1, 2]},
                         progress=False)
    assert len(made) == 12  # its own settings did not change, the t2i outputs it reads did
    assert set(out["points"][1]["reused"]) == {"caption", "vqa"}
    made.clear()
    out = sweep_pipeline(pipe, config, tmp_path / "b", {"vqa.num_steps": [1, 2]}, progress=False)
    assert len(made) == 6
    assert set(out["points"][1]["reused"]) == {"t2i", "caption", "echo"}
    # tasks that read each other in a cycle are refused
    monkeypatch.setitem(EVAL_TASKS._items, "t2i", TaskSpec(echo, (RECORD,), inputs_from=("echo",)))
    cfg = parse_config({"data": SHAPES, "tasks": {"t2i": {"metrics": ["model_calls"]},
                                                  "echo": {"metrics": ["model_calls"]}}})
    with pytest.raises(ValueError, match="in a cycle: t2i -> echo -> t2i"):
        task_identities(cfg, identity_recipe(cfg), {}, {"sha1": "0" * 40})


def test_reuse_needs_a_finished_run_of_the_same_model_and_task(tmp_path):
    from unigen.evaluate import with_setting

    data = build_data(SHAPES, 64)
    pipe = OraclePipeline(data, 64)
    source = tmp_path / "source"
    evaluate_pipeline(pipe, REUSE, source, progress=False)
    changed = with_setting(REUSE, "t2i.num_steps", 3)

    def reused(run_pipe, folder):
        run_pipe.calls.clear()
        result = evaluate_pipeline(run_pipe, changed, tmp_path / folder, progress=False,
                                   reuse_from={"earlier": source})
        return result["metadata"].get("reused", {}), _generated(run_pipe)

    assert reused(pipe, "ok") == ({"caption": "earlier", "vqa": "earlier"}, {"t2i": 6})
    # a list of folders names them by their paths
    pipe.calls.clear()
    listed = evaluate_pipeline(pipe, changed, tmp_path / "listed", progress=False,
                               reuse_from=[source])
    assert listed["metadata"]["reused"] == {"caption": str(source), "vqa": str(source)}
    # other weights: nothing is reused
    other = OraclePipeline(data, 64)
    assert reused(other, "other_model") == ({}, {"t2i": 6, "caption": 6, "vqa": 6})
    # a source missing a record of a task: that task is generated
    lines = (source / "records.jsonl").read_text().splitlines()
    kept = [x for x in lines if json.loads(x) != {**json.loads(x), "task": "vqa", "index": 5}]
    (source / "records.jsonl").write_text("\n".join(kept) + "\n")
    assert reused(pipe, "torn") == ({"caption": "earlier"}, {"t2i": 6, "vqa": 6})
    # a run that did not finish (no results) or that predates task identities: nothing reused
    (source / "records.jsonl").write_text("\n".join(lines) + "\n")
    identity = json.loads((source / "run.json").read_text())
    del identity["task_sha1"]
    (source / "run.json").write_text(json.dumps(identity))
    assert reused(pipe, "old") == ({}, {"t2i": 6, "caption": 6, "vqa": 6})
    evaluate_pipeline(pipe, REUSE, source, progress=False)
    (source / "results.json").unlink()
    assert reused(pipe, "unfinished") == ({}, {"t2i": 6, "caption": 6, "vqa": 6})


class _KilledOracle(OraclePipeline):
    """Raises (as a kill would stop the run) on its ``kill_at``-th text_to_image call."""

    def __init__(self, data, image_size, kill_at):
        super().__init__(data, image_size)
        self.kill_at, self.t2i_calls = kill_at, 0

    def text_to_image(self, *args, **kwargs):
        self.t2i_calls += 1
        if self.t2i_calls == self.kill_at:
            raise KeyboardInterrupt("killed")
        return super().text_to_image(*args, **kwargs)


@pytest.mark.parametrize("kill_at", [4, 6])  # the 2nd batch of point 1, of point 2
def test_a_killed_sweep_resumes_and_reuses_again(tmp_path, kill_at):
    from unigen.evaluate import sweep_pipeline

    data = build_data(SHAPES, 64)
    axes = {"t2i.guidance_scale": [1, 2, 3]}
    clean = OraclePipeline(data, 64)
    full = sweep_pipeline(clean, LIGHT, tmp_path / "clean", axes, progress=False)
    pipe = _KilledOracle(data, 64, kill_at)
    pipe.transformer.load_state_dict(clean.transformer.state_dict())
    with pytest.raises(KeyboardInterrupt):
        sweep_pipeline(pipe, LIGHT, tmp_path / "sweep", axes, progress=False)
    pipe.calls.clear()
    pipe.kill_at = 0
    out = sweep_pipeline(pipe, LIGHT, tmp_path / "sweep", axes, progress=False, resume=True)
    # only the killed point's last t2i batch (2 samples) and the points after it are generated
    assert _generated(pipe) == {"t2i": 2 + 6 * (kill_at == 4)}
    assert out["metrics"] == full["metrics"]
    assert out["points"] == full["points"]
    for run in full["points"]:
        clean_records = _records(tmp_path / "clean" / run["dir"])
        assert _records(tmp_path / "sweep" / run["dir"]) == clean_records
    # a sweep run without reuse, resumed with it: the later points take caption and VQA from the
    # first point instead of keeping their own (the same records), and generate nothing
    pipe.calls.clear()
    sweep_pipeline(pipe, LIGHT, tmp_path / "plain", axes, progress=False, reuse=False)
    pipe.calls.clear()
    again = sweep_pipeline(pipe, LIGHT, tmp_path / "plain", axes, progress=False, resume=True)
    assert pipe.calls == [] and again["metrics"] == full["metrics"]
    assert [run.get("reused") for run in again["points"]] == [run.get("reused")
                                                               for run in full["points"]]
    for run in full["points"]:
        clean_records = _records(tmp_path / "clean" / run["dir"])
        assert _records(tmp_path / "plain" / run["dir"]) == clean_records


class FillingOracle(OraclePipeline):
    """The oracle, plus infilling: the true words for even samples, a wrong one for odd ones (and
    a text tokenizer of one token per word)."""

    def __init__(self, data, image_size: int) -> None:
        from types import SimpleNamespace

        super().__init__(data, image_size)
        self.space = SimpleNamespace(text_tokenizer=SimpleNamespace(encode=lambda word: [0]))

    def infill(self, images, texts, seed, output, return_calls=False, **options):
        from unigen.pipeline import InfillOutput

        samples = self._samples("fill", seed, options)
        assert torch.equal(images, torch.stack([s.image for s in samples]))
        filled = []
        for sample, text in zip(samples, texts):
            truth = sample.prompt.split()
            filled.append(" ".join(truth[j] if word != "_" else
                                   (truth[j] if sample.index % 2 == 0 else "zzz")
                                   for j, word in enumerate(text.split())))
        return self._reply(InfillOutput(filled, None), samples, return_calls)


def test_fill_accuracy_counts_the_blanked_words_filled_right(tmp_path):
    from unigen.data.shapes import COLORS

    data = build_data(SHAPES, 64)
    pipe = FillingOracle(data, 64)
    out = evaluate_pipeline(pipe, {"data": SHAPES, "batch_size": 5, "tasks": {
        "fill": {"metrics": ["fill_accuracy"]}}}, tmp_path, progress=False)
    samples = [data.sample(i) for i in range(12)]
    blanks = [sum(w in COLORS for w in s.prompt.split()) for s in samples]
    right = sum(b for s, b in zip(samples, blanks) if s.index % 2 == 0)
    assert sum(blanks) > 0 and out["metrics"]["fill_accuracy"] == pytest.approx(right / sum(blanks))
    # only captions with a colour were decoded, in batches of at most 5
    asked = sum(n for method, n, _ in pipe.calls if method == "fill")
    assert asked == sum(1 for b in blanks if b)
    # the words the recipe names are the ones blanked
    shapes = evaluate_pipeline(pipe, {"data": SHAPES, "tasks": {"fill": {
        "fill_words": ["circle", "square"], "metrics": ["fill_accuracy"]}}}, tmp_path / "shapes",
        progress=False)
    blanks = [sum(w in ("circle", "square") for w in s.prompt.split()) for s in samples]
    right = sum(b for s, b in zip(samples, blanks) if s.index % 2 == 0)
    assert shapes["metrics"]["fill_accuracy"] == pytest.approx(right / sum(blanks))


def test_fill_words_belong_to_the_fill_task(tmp_path):
    with pytest.raises(ValueError, match="tasks.vqa.fill_words: only the fill task blanks words"):
        evaluate_pipeline(None, {"data": SHAPES, "tasks": {"vqa": {
            "fill_words": ["red"], "metrics": ["vqa_exact_match"]}}}, tmp_path, progress=False)
