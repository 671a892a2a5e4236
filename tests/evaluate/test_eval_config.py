"""Eval recipes: schema checks, settings and overrides, sweep parsing and curves, the record log,
and the shipped recipes."""

import math
from pathlib import Path

import pytest

from unigen.evaluate import (RecordLog, evaluate_pipeline, load_eval_config, parse_config,
                             parse_sweep, setting_paths, sweep_curves, with_setting)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MINIMAL = {"data": {"source": "shapes"}, "tasks": {"vqa": {"metrics": ["vqa_exact_match"]}}}


def test_defaults_and_types():
    cfg = parse_config(MINIMAL)
    assert (cfg.seed, cfg.batch_size, cfg.sweep) == (0, 16, {})
    # unset sampler and steps: the pipeline's defaults for the task (confident decoding for text)
    assert cfg.tasks["vqa"].num_steps is None and cfg.tasks["vqa"].sampler is None
    assert cfg.resources.extractor == {"name": "inception_v3", "weights": "auto"}
    cfg = parse_config(with_setting(MINIMAL, "vqa.guidance_scale", 2))
    scale = cfg.tasks["vqa"].guidance_scale
    assert scale == 2.0 and isinstance(scale, float)


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", True, "recipe key 'batch_size' must be an integer, got True"),
    ("batch_size", 0, "recipe key 'batch_size' must be >= 1, got 0"),
    ("vqa.num_steps", 2.5, "recipe key 'tasks.vqa.num_steps' must be an integer or null, got 2.5"),
    ("vqa.num_steps", 0, "tasks.vqa.num_steps must be a positive integer, got 0"),
    ("t2i.num_steps", 10**9, "tasks.t2i.num_steps must be at most 1,000,000"),
    ("vqa.use_cache", "yes", "recipe key 'tasks.vqa.use_cache' must be true/false"),
    ("vqa.metrics", "vqa_exact_match", "recipe key 'tasks.vqa.metrics' must be a list of"),
    ("vqa.sampler", "greedy", "unknown sampler 'greedy' in tasks.vqa.sampler; known: ancestral"),
    ("vqa.metrics", ["vqa_exact_match", "vqa_exact_match"], "a metric is listed twice"),
    ("vqa.metrics", ["bleu"], "unknown metric 'bleu' in tasks.vqa.metrics; known: bleu4"),
    ("vqa.metrics", ["bleu"], "(a custom one must be imported first: `--plugin MODULE`"),
    ("vqa.metrics", ["caption_fact_precision"],
     "metric 'caption_fact_precision' scores task 'caption', not tasks.vqa"),
    ("vqa.fid", True, "tasks.vqa.fid: FID compares generated images, only t2i makes any"),
    ("vqa.candidates", 3, "tasks.vqa.candidates: only t2i draws several candidates"),
    ("t2i.candidates", 0, "tasks.t2i.candidates and verify_masks must be >= 1, got 0 and 4"),
    ("vqa.metrics", [], "tasks.vqa lists no metrics"),
    ("tasks", {"i2t": {}}, "unknown task 'tasks.i2t'; known: caption, fill, t2i, vqa"),
    ("data", {"split": "val"}, "recipe key 'data' needs 'source'"),
    ("data.source", "coco", "unknown data source 'coco'; known: fashion_mnist, folder, shapes (a custom "
                            "one must be imported first: `--plugin MODULE`"),
    ("resources.clip", 3, "recipe key 'resources.clip' must be a string or null, got 3"),
    ("vqa.guidance_kwargs", {"intervl": [0.2, 1]},
     "tasks.vqa.guidance_kwargs: unknown option 'intervl'; the options are interval, schedule, min_scale"),
    ("vqa.guidance_kwargs", {"interval": 5}, "tasks.vqa.guidance_kwargs interval=5: "),
    ("vqa.guidance_scale", float("nan"), "guidance scale must be a finite number"),
    ("data", {"source": "folder"}, "data source 'folder' needs recipe key 'data.root'"),
    ("data.num_samples", 0, "data.num_samples must be positive, got 0"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ValueError) as err:
        parse_config(with_setting(MINIMAL, key, value))
    assert message in str(err.value)


def test_two_sweep_axes_for_one_setting_are_refused():
    from unigen.evaluate import check_sweep

    with pytest.raises(ValueError, match="sweep axes 'vqa.num_steps' and 'tasks.vqa.num_steps' set the "
                                         "same recipe key 'tasks.vqa.num_steps'"):
        check_sweep(MINIMAL, {"vqa.num_steps": [2, 3], "tasks.vqa.num_steps": [4, 5]})
    check_sweep(MINIMAL, {"vqa.num_steps": [2, 3], "seed": [0, 1]})


def test_missing_required_key():
    with pytest.raises(ValueError, match="the recipe lacks the required key 'tasks'"):
        parse_config({"data": {"source": "shapes"}})


def test_setting_paths_and_overrides_do_not_mutate():
    config = {"data": {"source": "shapes"}, "tasks": {"t2i": {}, "vqa": {}}}
    assert setting_paths(config, "num_steps") == [("tasks", "t2i", "num_steps"),
                                                  ("tasks", "vqa", "num_steps")]
    assert setting_paths(config, "t2i.num_steps") == [("tasks", "t2i", "num_steps")]
    assert setting_paths(config, "tasks.vqa.sampler") == [("tasks", "vqa", "sampler")]
    assert setting_paths(config, "data.num_samples") == [("data", "num_samples")]
    changed = with_setting(config, "num_steps", 8)
    assert changed["tasks"] == {"t2i": {"num_steps": 8}, "vqa": {"num_steps": 8}}
    assert config["tasks"] == {"t2i": {}, "vqa": {}}
    with pytest.raises(ValueError, match="'source' is not a mapping"):
        with_setting(config, "data.source.x", 1)


def test_load_recipe_applies_overrides(tmp_path):
    cfg = load_eval_config(RECIPES / "debug" / "eval_debug.yaml",
                      ["data.num_samples=3", "t2i.metrics=[compositional_accuracy]", "seed=7"])
    assert cfg["data"]["num_samples"] == 3 and cfg["seed"] == 7
    with pytest.raises(ValueError, match="--override expects KEY=VALUE, got 'seed'"):
        load_eval_config(RECIPES / "debug" / "eval_debug.yaml", ["seed"])
    with pytest.raises(FileNotFoundError, match="eval recipe not found"):
        load_eval_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tasks: [a\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_eval_config(tmp_path / "bad.yaml")
    (tmp_path / "latin1.yaml").write_bytes("seed: 0  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"eval recipe .*latin1\.yaml is not UTF-8 text"):
        load_eval_config(tmp_path / "latin1.yaml")


def test_unset_sampler_and_steps_are_left_to_the_pipeline():
    from unigen.evaluate.tasks import sampling_kwargs

    cfg = parse_config(with_setting(MINIMAL, "vqa.sampler_kwargs", {"threshold": 0.5}))
    assert sampling_kwargs(cfg.tasks["vqa"]) == {
        "guidance_scale": 1.0, "sampler_kwargs": {"threshold": 0.5}, "guidance_kwargs": {},
        "use_cache": True, "cuda_graphs": False}
    cfg = parse_config(with_setting(with_setting(MINIMAL, "vqa.sampler", "maskgit"), "num_steps", 2))
    kwargs = sampling_kwargs(cfg.tasks["vqa"])
    assert (kwargs["sampler"], kwargs["num_steps"]) == ("maskgit", 2)


def test_a_null_task_is_left_out_of_the_run():
    config = {"data": {"source": "shapes"}, "tasks": {"t2i": {"metrics": ["compositional_accuracy"]},
                                                      "vqa": {"metrics": ["vqa_exact_match"]}}}
    dropped = with_setting(config, "tasks.t2i", None)
    assert list(parse_config(dropped).tasks) == ["vqa"]
    # a setting of every task then reaches only the tasks still in the run
    assert with_setting(dropped, "num_steps", 3)["tasks"] == {
        "t2i": None, "vqa": {"metrics": ["vqa_exact_match"], "num_steps": 3}}
    with pytest.raises(ValueError, match="recipe key 'tasks' lists no task"):
        parse_config(with_setting(dropped, "vqa", None))


def test_parse_sweep():
    assert parse_sweep(["guidance_scale=1,2.5", "sampler=maskgit,confident"]) == {
        "guidance_scale": [1, 2.5], "sampler": ["maskgit", "confident"]}
    with pytest.raises(ValueError, match="--sweep expects KEY=VALUE"):
        parse_sweep(["num_steps"])
    with pytest.raises(ValueError, match="--sweep num_steps is given twice"):
        parse_sweep(["num_steps=1", "num_steps=2"])


def test_sweep_curves_series_per_other_axis_value():
    axes = {"sampler": ["maskgit", "confident"], "num_steps": [8, 4]}
    points = [{"sampler": s, "num_steps": n} for s in axes["sampler"] for n in axes["num_steps"]]
    metrics = [{"acc/overall": float(i), "acc/category/x": 0.0, "fid": 10.0 - i, "kid_std": 1.0}
               for i in range(4)]
    sweeps = {s.name: s for s in sweep_curves(axes, points, metrics)}
    # only numeric axes are x axes; per-category entries and spreads get no curve
    assert set(sweeps) == {"acc-overall_vs_num_steps", "fid_vs_num_steps"}
    acc = sweeps["acc-overall_vs_num_steps"]
    assert list(acc.values) == [4, 8]  # sorted
    assert acc.series == {"sampler=maskgit": [1.0, 0.0], "sampler=confident": [3.0, 2.0]}
    # an axis that cannot change a metric does not split its curve
    flat = sweep_curves(axes, points, metrics, affects=lambda axis, m: axis == "num_steps")
    assert all(math.isnan(y) is False for s in flat for ys in s.series.values() for y in ys)
    assert set(flat[0].series) == {"acc/overall"}


def test_record_log_drops_only_a_torn_last_line(tmp_path):
    log = RecordLog(tmp_path / "records.jsonl")
    log.append([{"task": "t2i", "index": 0}, {"task": "t2i", "index": 1}])
    with open(log.path, "a") as fh:
        fh.write('{"task": "t2i", "ind')
    assert [r["index"] for r in log] == [0, 1]
    log.path.write_text('{"task": "t2i", "index": 0}\nnot json\n{"task": "t2i", "index": 1}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON record"):
        list(log)


def test_evaluate_pipeline_refuses_a_sweep_block(tmp_path):
    with pytest.raises(ValueError, match="this recipe has a sweep: block"):
        evaluate_pipeline(None, {**MINIMAL, "sweep": {"seed": [0, 1]}}, tmp_path)


def test_shipped_recipes_parse():
    shapes = parse_config(load_eval_config(RECIPES / "eval_shapes.yaml"))
    assert shapes.data == {"source": "shapes", "split": "heldout", "num_samples": 1000, "seed": 0,
                           "image_size": 64}
    t2i = shapes.tasks["t2i"]
    assert (t2i.sampler, t2i.num_steps, t2i.guidance_scale, t2i.fid) == ("maskgit", 16, 2.0, True)
    assert t2i.metrics == ["compositional_accuracy", "exact_accuracy", "unrequested_objects", "empty_images",
                           "precision_recall"]
    assert shapes.tasks["caption"].metrics == ["bleu4", "cider_d", "caption_fact_precision",
                                               "caption_attribute_recall"]
    assert shapes.tasks["vqa"].metrics == ["vqa_exact_match"]
    debug = parse_config(load_eval_config(RECIPES / "debug" / "eval_debug.yaml"))
    assert debug.data["num_samples"] == 8 and debug.tasks["t2i"].num_steps == 4
    assert not any(t.fid for t in debug.tasks.values())
    fashion = parse_config(load_eval_config(RECIPES / "eval_fashion_mnist.yaml"))
    assert fashion.data["source"] == "fashion_mnist" and fashion.tasks["t2i"].fid
    # fill blanks the shapes world's colours by default, and every word of a garment's name
    from unigen.data.fashion_mnist import CLASS_NAMES

    assert shapes.tasks["fill"].metrics == ["fill_accuracy"] and shapes.tasks["fill"].fill_words == []
    assert set(fashion.tasks["fill"].fill_words) == {w for n in CLASS_NAMES for w in n.split()}


def test_results_name_the_sampler_an_unset_setting_left_to_the_pipeline(tokenizer_dirs):
    from unigen.evaluate.tasks import settings_used
    from unigen.training.unified_module import UnifiedModule

    pipe = UnifiedModule(**tokenizer_dirs, image_size=32, max_text_len=24, dim=32, depth=1,
                         heads=4).to_pipeline()
    cfg = parse_config({"data": {"source": "shapes"}, "tasks": {
        "t2i": {"metrics": ["compositional_accuracy"]}, "caption": {"metrics": ["bleu4"]},
        "vqa": {"sampler": "remask", "metrics": ["vqa_exact_match"]}}})
    used = {task: settings_used(pipe, task, cfg.tasks[task])["sampler"] for task in cfg.tasks}
    assert used == {"t2i": "maskgit", "caption": "confident", "vqa": "remask"}

    class NoSamplerArgument:  # e.g. an autoregressive pipeline
        def caption(self, images, **options):
            return []

    assert settings_used(NoSamplerArgument(), "caption", cfg.tasks["caption"])["sampler"] is None


def test_run_identity_ignores_speed_only_keys_but_not_decoding_ones():
    from unigen.evaluate.persistence import identity_recipe

    base = identity_recipe(parse_config(MINIMAL))
    graphed = parse_config(with_setting(MINIMAL, "vqa.cuda_graphs", True))
    assert graphed.tasks["vqa"].cuda_graphs is True
    assert identity_recipe(graphed) == base  # replays give the eager tokens: a run resumes
    assert identity_recipe(parse_config({**MINIMAL, "batch_size": 7})) == base
    assert identity_recipe(parse_config(with_setting(MINIMAL, "vqa.num_steps", 2))) != base


@pytest.mark.parametrize("setting, message", [
    ({"t2i": {"metrics": [{"name": "kid", "subset_size": 100}]}},
     "tasks.t2i.metrics: kid: option subset_size=100 is more than the 8 samples"),
    ({"t2i": {"metrics": ["kid"]}},  # the default subset size, 1000
     "tasks.t2i.metrics: kid: option subset_size=1000 is more than the 8 samples"),
    ({"t2i": {"metrics": [{"name": "kid", "subset_size": 4, "subsets": 0}]}},
     "tasks.t2i.metrics: kid: option subsets must be >= 1, got 0"),
    ({"t2i": {"metrics": [{"name": "kid", "subset_sz": 4}]}},
     "tasks.t2i.metrics: unknown option 'subset_sz' for metric 'kid'; known: extractor"),
    ({"t2i": {"metrics": [{"name": "inception_score", "splits": 20}]}},
     "tasks.t2i.metrics: inception_score: option splits=20 is more than the 8 samples"),
    ({"t2i": {"metrics": ["class_accuracy"]}},
     "tasks.t2i.metrics: metric 'class_accuracy' needs the option 'classifier'"),
    ({"t2i": {"metrics": ["clip_score"]}},
     "tasks.t2i.metrics: metric 'clip_score' needs resources.clip"),
    ({"vqa": {"metrics": [{"name": "vqa_exact_match", "strict": True}]}},
     "tasks.vqa.metrics: unknown option 'strict' for metric 'vqa_exact_match'"),
    ({"vqa": {"metrics": [{"name": "model_calls", "per": "sample"}]}},
     "unknown option 'per' for metric 'model_calls'"),
])
def test_metric_options_are_checked_before_anything_loads(setting, message):
    # parse_config is all `unigen eval` runs before loading the model: these used to fail only
    # after every image was generated (or once the extractor was loaded)
    with pytest.raises(ValueError) as err:
        parse_config({"data": {"source": "shapes", "num_samples": 8}, "tasks": setting})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_fid_needs_two_samples_up_front():
    one = {"data": {"source": "shapes", "num_samples": 1}, "tasks": {"t2i": {"fid": True}}}
    with pytest.raises(ValueError, match=r"tasks.t2i.fid: fid: needs at least 2 samples .*got 1"):
        parse_config(one)
    parse_config(with_setting(one, "data.num_samples", 2))
    # options the metric takes pass, torchmetrics' own included
    parse_config({"data": {"source": "shapes", "num_samples": 8}, "tasks": {"t2i": {"metrics": [
        {"name": "kid", "subset_size": 8, "subsets": 3, "compute_on_cpu": True}]}}})


def test_results_name_the_steps_an_unset_setting_left_to_the_pipeline(tokenizer_dirs):
    from unigen.evaluate.tasks import settings_used
    from unigen.pipeline import ANSWER_STEPS
    from unigen.training.unified_module import UnifiedModule

    pipe = UnifiedModule(**tokenizer_dirs, image_size=32, max_text_len=24, dim=32, depth=1,
                         heads=4).to_pipeline()
    cfg = parse_config({"data": {"source": "shapes"}, "tasks": {
        "t2i": {"metrics": ["compositional_accuracy"]}, "caption": {"metrics": ["bleu4"]},
        "vqa": {"metrics": ["vqa_exact_match"]}}})
    steps = {task: settings_used(pipe, task, cfg.tasks[task])["num_steps"] for task in cfg.tasks}
    assert steps == {"t2i": 16, "caption": 24, "vqa": ANSWER_STEPS}
    cfg = parse_config(with_setting(MINIMAL, "vqa.num_steps", 2))
    assert settings_used(pipe, "vqa", cfg.tasks["vqa"])["num_steps"] == 2
