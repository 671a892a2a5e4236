"""benchmarks/sampler_curves.py: the calls claim on known points, and the script end to end on a
tiny random pipeline directory (test_benchmark_scripts.py runs it as a script with a random model
of its own). Nothing here asserts a speed: only that the numbers exist and agree with each other."""

import json
from pathlib import Path

import pytest
import torch

from benchmarks.sampler_curves import calls_claim, main


def point(sampler: str, steps: int, accuracy: float, calls: float, threshold=None) -> dict:
    return {"sampler": sampler, "num_steps": steps, "threshold": threshold, "accuracy": accuracy,
            "model_calls": calls}


POINTS = [point("maskgit", 8, 0.60, 8.0), point("maskgit", 16, 0.70, 16.0),
          point("confident", 4, 0.68, 3.5, 0.9), point("confident", 8, 0.70, 6.0, 0.9),
          point("confident", 32, 0.75, 9.0, 0.95), point("ancestral", 16, 0.71, 2.0)]


def test_calls_claim_takes_the_cheapest_confident_point_that_reaches_maskgit():
    claim = calls_claim(POINTS, 16, 0.0)
    assert claim["reference"]["model_calls"] == 16.0 and claim["target_accuracy"] == 0.70
    assert claim["best_confident"]["num_steps"] == 8  # 0.68 is short of 0.70; ancestral never counts
    assert claim["calls_ratio"] == pytest.approx(16 / 6) and claim["at_least_2x"]
    loose = calls_claim(POINTS, 16, 0.05)
    assert loose["best_confident"]["model_calls"] == 3.5 and loose["tolerance"] == 0.05
    strict = calls_claim(POINTS, 8, 0.0)  # against MaskGIT-8: 8 / 3.5 calls
    assert strict["calls_ratio"] == pytest.approx(8 / 3.5)
    unreachable = calls_claim([p for p in POINTS if p["accuracy"] < 0.7 or p["sampler"] != "confident"],
                              16, 0.0)
    assert unreachable["best_confident"] is None and unreachable["calls_ratio"] is None
    assert not unreachable["at_least_2x"]
    assert calls_claim(POINTS, 4, 0.0) == {"measured": False, "reason": "no maskgit point at 4 steps"}


QUICK = ["--num-samples", "3", "--steps", "2,4", "--reference-steps", "4", "--thresholds", "0.0",
         "--threshold-budget", "4", "--vqa-steps", "1,2", "--batch-size", "2", "--repeats", "1",
         "--grid-size", "0", "--confident-rule", "error_budget:1000"]


def test_sampler_curves_on_a_model_directory(tmp_path, tokenizer_dirs):
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4).to_pipeline() \
        .save_pretrained(tmp_path / "model")
    out = tmp_path / "res" / "curves.json"
    payload = main(["--model", str(tmp_path / "model"), *QUICK, "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "sampler_curves" and saved["environment"]["device_name"]
    assert saved["settings"]["weights"] == "trained" and saved["settings"]["tolerance"] == 0.0
    assert saved["points"] == payload["points"]
    t2i = [p for p in saved["points"] if p["task"] == "t2i"]
    vqa = [p for p in saved["points"] if p["task"] == "vqa"]
    # every sampler x budget, plus the threshold and error-budget points; VQA at its own budgets
    assert [(p["sampler"], p["num_steps"]) for p in t2i] == [
        (s, n) for s in ("maskgit", "ancestral", "confident") for n in (2, 4)] + [("confident", 4)] * 2
    assert [(p["sampler"], p["num_steps"]) for p in vqa] == [
        (s, n) for s in ("maskgit", "ancestral", "confident") for n in (1, 2)]
    for p in saved["points"]:
        assert 0.0 <= p["accuracy"] <= 1.0 and 1.0 <= p["model_calls"] <= p["num_steps"]
        records = (Path(p["run_dir"]) / "records.jsonl").read_text().splitlines()
        calls = [json.loads(r)["model_calls"] for r in records]
        assert len(calls) == 3 and sum(calls) / 3 == pytest.approx(p["model_calls"])
        if p["task"] == "t2i":  # the fraction of records whose image the checker found empty
            empty = [json.loads(r)["empty"] for r in records]
            assert p["empty_images"] == pytest.approx(sum(empty) / 3)
    assert all(p["model_calls"] == p["num_steps"] for p in t2i + vqa if p["sampler"] == "maskgit")
    threshold_point, budget_point = t2i[-2:]
    assert threshold_point["threshold"] == 0.0 and threshold_point["model_calls"] == 1.0
    assert threshold_point["series"] != "confident" and t2i[4]["threshold"] == 0.9  # default
    assert (threshold_point["rule"], t2i[4]["rule"], t2i[0]["rule"]) == ("threshold", "threshold", None)
    # a budget no step can exceed reveals everything in one call
    assert budget_point["rule"] == "error_budget" and budget_point["threshold"] == 1000.0
    assert budget_point["model_calls"] == 1.0 and "error_budget" in budget_point["series"]
    calls = saved["claims"]["calls"]
    assert calls["t2i"]["reference"] == {"sampler": "maskgit", "num_steps": 4, "threshold": None, "rule": None,
                                         **{k: t2i[1][k] for k in ("accuracy", "model_calls")}}
    assert calls["vqa"]["reference"]["num_steps"] == 2 and "calls_ratio" in calls["vqa"]
    cache = saved["claims"]["prefix_cache"]
    for task in ("caption", "vqa"):
        c = cache[task]
        assert c["identical"] is True and c["identical_fraction"] == 1.0 and c["samples"] == 3
        assert c["num_steps"] == {"caption": 12, "vqa": 4}[task]  # --caption/--vqa-cache-steps
        assert c["speedup"] == pytest.approx(c["seconds_uncached"] / c["seconds_cached"])
    assert isinstance(cache["at_least_1_8x"], bool)
    assert (out.parent / "curves.png").is_file() and saved["plot"] == str(out.parent / "curves.png")
    assert (out.parent / "curves_runs" / "t2i_steps" / "results.json").is_file()  # --work-dir default


def test_cache_only_times_the_prefix_cache_without_curves(tmp_path, tokenizer_dirs):
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4).to_pipeline() \
        .save_pretrained(tmp_path / "model")
    out = tmp_path / "cache.json"
    saved = main(["--model", str(tmp_path / "model"), "--device", "cpu", "--num-samples", "4",
                  "--batch-size", "2", "--repeats", "1", "--cache-only", "--out", str(out)])
    assert saved["points"] == [] and saved["claims"]["calls"] == {} and "plot" not in saved
    for task in ("caption", "vqa"):  # two batches of two, each decoded with and without the cache
        c = saved["claims"]["prefix_cache"][task]
        assert c["samples"] == 4 and c["identical"] is True and c["cuda_graphs"] is False
        assert "identical_to_eager" not in c
    assert not out.with_suffix(".png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--cache-only", "--no-cache-timing"], "leave nothing to measure"),
    (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs needs --device cuda"),
])
def test_sampler_curves_refuses_contradictory_cache_flags(argv, message, capsys):
    from benchmarks.sampler_curves import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--repeats", "--num-samples", "--caption-steps",
                                  "--vqa-cache-steps"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_sampler_curves_refuses_counts_below_one(flag, value, capsys):
    from benchmarks.sampler_curves import parse_args

    with pytest.raises(SystemExit) as err:
        parse_args([flag, value])
    assert err.value.code == 2
    assert f"{flag} must be >= 1, got {value}" in capsys.readouterr().err


def test_sampler_curves_cache_step_options():
    from benchmarks.sampler_curves import parse_args

    args = parse_args([])
    assert (args.caption_steps, args.vqa_cache_steps) == (12, 4)
    args = parse_args(["--caption-steps", "6", "--vqa-cache-steps", "2"])
    assert (args.caption_steps, args.vqa_cache_steps) == (6, 2)


@pytest.mark.parametrize("spec", ["nope:1", "factor", "factor:", "error_budget:x"])
def test_sampler_curves_refuses_a_bad_confident_rule(spec, capsys):
    from benchmarks.sampler_curves import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--confident-rule", spec])
    assert "--confident-rule wants RULE:V1,V2" in capsys.readouterr().err
    args = parse_args(["--confident-rule", "factor:1,2", "--thresholds", "",
                       "--confident-kwargs", '{"schedule": "cosine", "temperature": 1}'])
    assert args.confident_rules == {"factor": [1.0, 2.0]}
    assert args.confident_kwargs == {"schedule": "cosine", "temperature": 1}
    with pytest.raises(SystemExit):
        parse_args(["--confident-kwargs", '{"nope": 1}'])
    assert "--confident-kwargs:" in capsys.readouterr().err


def test_sampler_curves_data_sources(capsys):
    from benchmarks.sampler_curves import eval_config, parse_args

    shapes = parse_args([])
    assert (shapes.data, shapes.split) == ("shapes", "heldout")
    assert eval_config(shapes, "t2i", {})["tasks"]["t2i"]["metrics"] == [
        "compositional_accuracy", "model_calls", "empty_images"]
    with pytest.raises(SystemExit):
        parse_args(["--data", "fashion_mnist"])
    assert "--data fashion_mnist needs --classifier DIR" in capsys.readouterr().err
    fashion = parse_args(["--data", "fashion_mnist", "--classifier", "clf", "--num-samples", "5"])
    config = eval_config(fashion, "t2i", {"guidance_scale": 2.0})
    assert config["data"] == {"source": "fashion_mnist", "split": "test", "num_samples": 5,
                              "seed": 0}
    assert config["tasks"]["t2i"] == {"guidance_scale": 2.0, "fid": True, "metrics": [
        {"name": "class_accuracy", "classifier": "clf"}, "model_calls"]}
    assert "fid" not in eval_config(shapes, "t2i", {})["tasks"]["t2i"]
    assert eval_config(fashion, "vqa", {})["tasks"]["vqa"]["metrics"] == ["vqa_exact_match",
                                                                           "model_calls"]


def test_calls_claim_with_fid_refuses_collapsed_samples():
    def at(sampler, steps, accuracy, calls, fid):
        return {**point(sampler, steps, accuracy, calls, 0.9), "fid": fid}

    points = [at("maskgit", 16, 0.97, 16.0, 73.4), at("confident", 4, 1.0, 4.0, 151.6),
              at("confident", 8, 0.98, 8.0, 74.5), at("confident", 6, 0.99, 6.0, 80.8)]
    claim = calls_claim(points, 16, 0.0)  # FID limit 73.4 * 1.1 = 80.74: 80.8 is out
    assert claim["fid_limit"] == pytest.approx(80.74)
    assert claim["best_confident"]["model_calls"] == 8.0 and claim["calls_ratio"] == 2.0
    assert calls_claim(points, 16, 0.0, fid_tolerance=0.2)["best_confident"]["model_calls"] == 6.0
    assert calls_claim(points, 16, 0.0, fid_tolerance=2.0)["best_confident"]["model_calls"] == 4.0
