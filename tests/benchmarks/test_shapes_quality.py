"""benchmarks/shapes_quality.py: the step / sample planning on known numbers, and ``--smoke`` end to
end (the same code path as the GPU run: text tokenizer, calibration + fit of the debug FSQ tokenizer
and unified recipes through LightningCLI, export, timed evaluation) into a temporary folder, with
the JSON fields a GPU session reads back.  Nothing here asserts a speed or a quality."""

import json
import re

import pytest

from benchmarks.shapes_quality import (TARGETS, Budget, main, max_time, plan_samples, plan_steps,
                                       step_seconds, targets)


def test_step_seconds_skips_the_warmup_steps():
    times = [5.0, 5.5, 6.0, 6.5, 7.0]  # step 1 compiles; then 0.5 s per step
    assert step_seconds(times, 1) == pytest.approx(0.5)
    assert step_seconds(times, 0) == pytest.approx(7.0 / 5)
    assert step_seconds(times, 5) is None


def test_plan_steps_fits_the_budget_and_respects_the_recipe():
    assert plan_steps(left_s=100, overhead_s=10, step_s=0.1, cap=30000) == 810  # 0.9 * 90 s
    assert plan_steps(left_s=100, overhead_s=10, step_s=0.1, cap=500) == 500
    assert plan_steps(left_s=5, overhead_s=10, step_s=0.1, cap=500) == 1


def test_plan_samples_rounds_to_batches_within_bounds():
    assert plan_samples(left_s=100, fixed_s=10, per_sample_s=0.1, cap=1000, floor=64,
                        batch_size=32) == 800  # 810 -> whole batches
    assert plan_samples(100, 10, 0.01, 1000, 64, 32) == 1000
    assert plan_samples(5, 10, 0.1, 1000, 64, 32) == 64


def test_max_time_and_budget():
    assert max_time(59.2) == "00:00:01:00" and max_time(3725) == "00:01:02:05"
    budget = Budget(10, {"tokenizer": 0.2, "unified": 0.6, "eval": 0.2})
    assert budget.for_stage("tokenizer") == pytest.approx(120, abs=1)
    budget.start -= 300  # the tokenizer stage overran: 300 s gone, the eval share stays reserved
    assert budget.for_stage("unified") == pytest.approx(600 - 300 - 120, abs=1)


def test_targets_report_each_issue_target():
    result = targets({"compositional_accuracy/overall": 0.93, "vqa_exact_match": 0.9})
    assert result["t2i_checker_accuracy"] == {"metric": "compositional_accuracy/overall",
                                              "target": 0.9, "value": 0.93, "met": True}
    assert not result["vqa_exact_match"]["met"]
    assert result["caption_attribute_recall"]["value"] is None and not result["all_met"]


def test_smoke_run_writes_the_result_json(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "device_out"))
    (tmp_path / "device_out").mkdir()
    out = tmp_path / "result.json"
    payload = main(["--smoke", "--minutes", "5", "--work-dir", str(tmp_path / "work"),
                    "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "shapes_quality_smoke" and saved["complete"] and saved["smoke"]
    assert saved["device"] == "cpu" and saved["environment"]["device_name"]
    assert saved["recipes"] == {"tokenizer": ["recipes/debug/tokenizer_fsq_debug.yaml"],
                                "unified": ["recipes/debug/unified_debug.yaml"],
                                "eval": "recipes/debug/eval_debug.yaml"}
    for stage in ("tokenizer", "unified", "eval"):
        assert saved["seconds"][stage] > 0
    stages = saved["stages"]
    assert stages["text_tokenizer"]["seconds"] > 0
    for fit in ("image_tokenizer", "unified"):
        info = stages[fit]
        assert info["steps_from"] == "calibration" and info["calibration"]["step_s"] > 0
        assert 1 <= info["steps_planned"] <= info["recipe_max_steps"]
        assert info["steps_done"] == info["steps_planned"] and info["step_s"] > 0
        # the gaps between steps are part of each step's wall time
        assert 0 <= info["between_steps_s"] < info["step_s"]
        assert "--trainer.max_steps" in info["command"] and "--trainer.max_time" in info["command"]
    assert (tmp_path / "work" / "model" / "pipeline.json").is_file()
    assert stages["eval"]["num_samples"] >= stages["eval"]["calibration"]["samples"]
    for metric in ("compositional_accuracy/overall", "vqa_exact_match",
                   "caption_attribute_recall", "caption_fact_precision"):
        assert 0.0 <= saved["metrics"][metric] <= 1.0
    assert set(saved["targets"]) == {*TARGETS, "all_met"}
    for name, target in saved["targets"].items():
        if name != "all_met":
            assert target["met"] == (target["value"] >= target["target"])
    assert saved["training_cost"]["device"] == "cpu" and saved["training_cost"]["minutes"] > 0
    assert (tmp_path / "device_out" / "result.json").is_file()  # copied to $OUT
    for name in ("config.json", "model.safetensors"):  # the trained tokenizer comes back too
        assert (tmp_path / "device_out" / "image_tokenizer" / name).is_file()
    assert payload["metrics"] == saved["metrics"]


def test_step_counts_from_the_command_line_skip_calibration(tmp_path):
    saved = main(["--smoke", "--minutes", "5", "--tokenizer-steps", "2", "--unified-steps", "3",
                  "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "r.json")])
    for fit, steps in (("image_tokenizer", 2), ("unified", 3)):
        info = saved["stages"][fit]
        assert info["steps_from"] == "command line" and "calibration" not in info
        assert info["steps_planned"] == info["steps_done"] == steps


def test_a_tokenizer_trained_earlier_skips_the_tokenizer_fit(tmp_path):
    first = main(["--smoke", "--minutes", "5", "--tokenizer-steps", "2", "--unified-steps", "1",
                  "--work-dir", str(tmp_path / "a"), "--out", str(tmp_path / "a.json")])
    tokenizer = tmp_path / "a" / "image_tokenizer"
    saved = main(["--smoke", "--minutes", "5", "--image-tokenizer", str(tokenizer),
                  "--unified-steps", "1", "--work-dir", str(tmp_path / "b"),
                  "--out", str(tmp_path / "b.json")])
    info = saved["stages"]["image_tokenizer"]
    assert info["from"] == str(tokenizer) and info["steps_done"] == 0
    assert info["config"] == json.loads((tokenizer / "config.json").read_text())["config"]
    assert first["stages"]["image_tokenizer"]["steps_done"] == 2
    assert not (tmp_path / "b" / "image_tokenizer").exists()
    assert saved["stages"]["unified"]["steps_done"] == 1
    with pytest.raises(FileNotFoundError, match="^image tokenizer directory not found: "
                       + re.escape(str(tmp_path / "missing")) + " "):
        main(["--smoke", "--image-tokenizer", str(tmp_path / "missing"), "--work-dir",
              str(tmp_path / "c"), "--out", str(tmp_path / "c.json")])


def test_a_compile_failure_in_calibration_falls_back_to_eager(tmp_path, monkeypatch):
    from unigen.modules.transformer import Block

    def broken_compile(self, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("simulated compiler error")
        self.forward = fail

    monkeypatch.setattr(Block, "compile", broken_compile)
    compiled = tmp_path / "compile.yaml"
    compiled.write_text("model:\n  init_args:\n    compile: true\n")
    saved = main(["--smoke", "--minutes", "5", "--tokenizer-steps", "2",
                  "--unified-recipe", "recipes/debug/unified_debug.yaml",
                  "--unified-recipe", str(compiled),
                  "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "r.json")])
    unified = saved["stages"]["unified"]
    assert "simulated compiler error" in unified["compile_error"] and not unified["compiled"]
    assert "--model.init_args.compile" in unified["command"]
    assert unified["steps_done"] == unified["steps_planned"] and saved["complete"]


def test_compile_modes_are_calibrated_and_the_fastest_fits(tmp_path, monkeypatch, capsys):
    import time

    from unigen.modules.transformer import Block

    def fake_compile(self, mode=None):  # stand-ins: a fast mode, a slow one, one that fails
        eager = self.forward

        def slow(*a, **k):
            time.sleep(0.02)
            return eager(*a, **k)

        def fail(*a, **k):
            raise RuntimeError("simulated CUDA graph error")

        self.forward = {None: eager, "max-autotune-no-cudagraphs": slow, "reduce-overhead": fail}[mode]

    monkeypatch.setattr(Block, "compile", fake_compile)
    compiled = tmp_path / "compile.yaml"
    compiled.write_text("model:\n  init_args:\n    compile: true\n")
    saved = main(["--smoke", "--minutes", "5", "--tokenizer-steps", "2",
                  "--unified-recipe", "recipes/debug/unified_debug.yaml",
                  "--unified-recipe", str(compiled), "--calibration-steps", "3",
                  "--compile-modes", "max-autotune-no-cudagraphs,reduce-overhead,default",
                  "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "r.json")])
    unified = saved["stages"]["unified"]
    trials = unified["calibration_trials"]
    assert "simulated CUDA graph error" in trials["reduce-overhead"]["error"]
    assert trials["max-autotune-no-cudagraphs"]["step_s"] > trials["default"]["step_s"]
    assert unified["compile_mode"] == "default" and unified["compiled"]
    cmd = unified["command"]
    last = len(cmd) - 1 - cmd[::-1].index("--model.init_args.compile")  # the fit's, after the recipes
    assert cmd[last + 1] == "default"
    assert unified["calibration"]["step_s"] == trials["default"]["step_s"]
    assert unified["steps_done"] == unified["steps_planned"] and saved["complete"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--smoke", "--compile-modes", "reduce_overhead"])
    assert exc.value.code == 2
    assert "error: --compile-modes takes modes of [" in capsys.readouterr().err


def test_host_threads_are_calibrated_and_the_fit_keeps_the_chosen_count(tmp_path, monkeypatch,
                                                                       capsys):
    from unigen.training.host_threads import HostThreads

    def slow_with_one_thread(self, trainer, pl_module, stage):  # a CPU fit: stand in for a GPU
        pl_module.slow = self.num_threads == 1

    monkeypatch.setattr(HostThreads, "setup", slow_with_one_thread)
    import benchmarks.shapes_quality as sq

    original = sq.StepTimer.on_train_batch_end

    def timed(self, trainer, pl_module, *args):
        if getattr(pl_module, "slow", False):
            import time

            time.sleep(0.03)
        return original(self, trainer, pl_module, *args)

    monkeypatch.setattr(sq.StepTimer, "on_train_batch_end", timed)
    saved = main(["--smoke", "--minutes", "5", "--tokenizer-steps", "2", "--calibration-steps", "3",
                  "--host-threads", "1,2", "--work-dir", str(tmp_path / "work"),
                  "--out", str(tmp_path / "r.json")])
    unified = saved["stages"]["unified"]
    trials = unified["calibration_trials"]
    assert set(trials) == {"host_threads=1", "host_threads=2"}
    assert trials["host_threads=1"]["step_s"] > trials["host_threads=2"]["step_s"]
    assert unified["host_threads"] == 2
    assert any('"num_threads": 2' in a for a in unified["command"])  # the fit keeps the winner
    assert unified["steps_done"] == unified["steps_planned"] and saved["complete"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--smoke", "--host-threads", "0"])
    assert exc.value.code == 2
    assert "error: --host-threads takes counts >= 1, got ['0']" in capsys.readouterr().err


def test_a_returned_model_continues_in_the_next_run(tmp_path, monkeypatch, capsys):
    import subprocess

    out = tmp_path / "device_out"
    out.mkdir()
    monkeypatch.setenv("OUT", str(out))
    first = main(["--smoke", "--minutes", "5", "--tokenizer-steps", "2", "--unified-steps", "2",
                  "--return-model", "--part-mb", "0.25", "--max-parts", "99",
                  "--work-dir", str(tmp_path / "a"), "--out", str(tmp_path / "a.json")])
    returned = first["returned_model"]
    parts = sorted(out.glob("model.tar.part*"))
    assert returned["packed"] and [str(p) for p in parts] == returned["files"]
    assert len(parts) == returned["parts"] >= 2 and all(p.stat().st_size <= 2**18 for p in parts)
    assert not (out / "image_tokenizer").exists()  # it travels inside the pipeline
    # unpack as docs/performance.md says: cat the parts into tar
    (tmp_path / "back").mkdir()
    subprocess.run(f"cat {' '.join(map(str, parts))} | tar -x -C {tmp_path / 'back'}", shell=True,
                   check=True)
    model = tmp_path / "back" / "model_bf16"
    history = json.loads((model / "training_history.json").read_text())
    assert [h["unified_steps"] for h in history] == [2] and history[0]["device"] == "cpu"

    monkeypatch.delenv("OUT")
    second = main(["--smoke", "--minutes", "5", "--unified-steps", "3", "--init-unified", str(model),
                   "--return-model", "--part-mb", "0.25", "--max-parts", "1",
                   "--work-dir", str(tmp_path / "b"), "--out", str(tmp_path / "b.json")])
    assert second["init_unified"] == {"from": str(model), "earlier_runs": history}
    assert second["stages"]["image_tokenizer"]["from"] == str(model / "image_tokenizer")
    assert "--model.init_args.init_weights" in second["stages"]["unified"]["command"]
    assert second["stages"]["unified"]["steps_done"] == 3
    assert not (tmp_path / "b" / "text_tokenizer").exists()  # the earlier run's word ids
    # too big for one part: nothing packed, the history still adds up
    assert second["returned_model"]["packed"] is False and second["returned_model"]["runs"] == 2
    assert second["returned_model"]["total_unified_steps"] == 5
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--smoke", "--init-unified", str(model), "--image-tokenizer", str(model / "image_tokenizer")])
    assert exc.value.code == 2
    assert ("error: --init-unified brings its own image tokenizer; drop --image-tokenizer"
            in capsys.readouterr().err)
    with pytest.raises(FileNotFoundError, match="--init-unified pipeline directory not found"):
        main(["--smoke", "--init-unified", str(tmp_path / "missing"), "--work-dir", str(tmp_path / "c"),
              "--out", str(tmp_path / "c.json")])


def test_profile_steps_put_operator_tables_in_the_json(tmp_path):
    saved = main(["--smoke", "--minutes", "5", "--tokenizer-steps", "2", "--profile-steps", "2",
                  "--calibration-warmup", "1", "--calibration-steps", "2",
                  "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "r.json")])
    unified = saved["stages"]["unified"]
    profile = unified["profile"]
    assert profile.startswith("2 training steps after step 3")
    assert "by cpu_time_total:" in profile and "by self_cpu_time_total:" in profile
    assert "aten::" in profile  # real operator rows
    by_kind = unified["profile_by_kind"]
    assert by_kind["steps"] == 2 and by_kind["clock"] == "cpu"
    assert by_kind["ms_per_step_by_kind"]["matmul"] > 0 and by_kind["ms_per_step_by_kind"]["attention"] > 0
    assert 0 < by_kind["busy_fraction"] and by_kind["wall_ms_per_step"] > 0
    assert by_kind["host_ops"] and by_kind["host_threads"] >= 1
    calibration = json.loads((tmp_path / "work" / "unified_calibration" / "step_times.json").read_text())
    assert calibration["steps"] == 5  # 1 warm-up + 2 timed + 2 profiled
    assert unified["steps_done"] == unified["steps_planned"] >= 1
