"""Every benchmark script runs end to end at the tiniest size and writes a complete JSON result.

Slow (each starts Python, builds tokenizers and times a few steps); ``make test-all`` runs them.
No assertion is about speed: only that the numbers exist and are consistent.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--threads", "1", "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def run_all_quick(results_dir: Path, only: str) -> dict:
    """``run_all.py --quick --only <only>`` (CPU): the benchmark's JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--only", only,
                           "--results-dir", str(results_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((results_dir / f"{only}_cpu.json").read_text())


@pytest.mark.slow
def test_train_throughput(tmp_path):
    result = run_script("train_throughput", "--size", "tiny", "--steps", "2", "--warmup", "1", "--repeats", "2",
                        "--batch-size", "4", "--loader", "--profile-steps", "2", out=tmp_path / "t.json")
    env = result["environment"]
    assert env["torch"] and env["lightning"] and env["device_name"] and env["date"]
    plain, lightning = result["summary"]
    assert (plain["loop"], lightning["loop"]) == ("plain", "lightning")
    assert lightning["lightning_over_plain"] > 0 and 0 < lightning["mfu_vs_measured_matmul"]
    assert len(result["runs"]) == 4 and all(r["head_positions"] > 0 for r in result["runs"])
    assert result["settings"]["sequence_length"] == 92 and result["settings"]["batch_size"] == 4
    assert result["loader"]["pretokenized_loader_s_per_batch"] > 0
    profile = result["profile"]  # the last Lightning run, after its timed steps
    assert profile["steps"] == 2 and profile["clock"] == "cpu" and "aten::" in profile["tables"]
    assert profile["ms_per_step_by_kind"]["matmul"] > 0


@pytest.mark.slow
def test_sampling_random_weights_measures_speed_only(tmp_path):
    result = run_script("sampling", "--size", "tiny", "--batch-size", "3", "--steps", "2", "--repeats", "1",
                        "--warmup", "0", out=tmp_path / "s.json")
    assert result["settings"]["weights"] == {"masked": "random", "autoregressive": "random"}
    assert result["note"] == "random weights: speed only"
    rows = {r["case"]: r for r in result["results"]}
    assert rows["masked/maskgit/2steps/cache/cfg1"]["calls"] == 2
    assert rows["masked/maskgit/2steps/cache/cfg3"]["rows"] == 2 * 2 * 3  # guided: 2B rows per call
    ar = rows["autoregressive/ar/64steps/cache/cfg1"]
    assert ar["calls"] == 64 and ar["speed_vs_ar_cached"] == 1.0
    # the KV cache does one position per step: far fewer FLOPs than recomputing the sequence
    assert ar["model_gflops_per_image"] < rows["autoregressive/ar/64steps/nocache/cfg1"]["model_gflops_per_image"]
    assert all(r["images_per_s"] > 0 and r["checker_accuracy"] is None for r in rows.values())


@pytest.mark.slow
def test_sampling_with_trained_model_dirs_reports_checker_accuracy(tmp_path, tokenizer_dirs):
    import torch

    from unigen.training.ar_module import AutoregressiveModule
    from unigen.training.unified_module import UnifiedModule

    kwargs = dict(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4)
    torch.manual_seed(0)
    UnifiedModule(**kwargs).export(tmp_path / "masked")
    AutoregressiveModule(**kwargs).export(tmp_path / "ar")
    result = run_script("sampling", "--masked-model", str(tmp_path / "masked"), "--ar-model", str(tmp_path / "ar"),
                        "--batch-size", "2", "--steps", "2", "--repeats", "1", "--warmup", "0",
                        "--samplers", "maskgit", "--no-ar-uncached", out=tmp_path / "s.json")
    assert result["settings"]["weights"] == {"masked": "trained", "autoregressive": "trained"}
    assert all(0.0 <= r["checker_accuracy"] <= 1.0 for r in result["results"])


@pytest.mark.slow
def test_sampler_curves_quick_with_random_weights(tmp_path):
    result = run_all_quick(tmp_path, "sampler_curves")  # no --model: a random tiny pipeline
    assert result["settings"]["weights"] == "random weights"
    assert result["note"].startswith("random weights")
    assert len(result["points"]) == 7 + 6 and result["claims"]["calls"]["t2i"]["measured"]
    assert result["claims"]["prefix_cache"]["caption"]["identical"] is True
    assert (tmp_path / "sampler_curves_cpu.png").is_file()
    assert (tmp_path / "sampler_curves_cpu_runs" / "vqa_steps" / "report.md").is_file()


@pytest.mark.slow
def test_scaling(tmp_path):
    # given largest first: the table still runs small to large, relative to the smallest
    result = run_script("scaling", "--sizes", "tiny", "--resolutions", "64,32,64", "--batch-size", "2", "--steps", "1",
                        out=tmp_path / "sc.json")
    small, large = result["table"]
    assert (small["sequence"], large["sequence"]) == (92, 284) and (small["grid"], large["grid"]) == ("8x8", "16x16")
    assert small["time_x"] == 1.0 and large["flops_x"] > 284 / 92  # attention makes it superlinear


@pytest.mark.slow
def test_run_all_quick(tmp_path):
    assert run_all_quick(tmp_path, "scaling")["benchmark"] == "scaling"


def test_sampler_overhead_compares_like_with_like(tmp_path):
    """The textbook step the benchmark times against makes the same MaskGIT decisions as unigen's."""
    import torch

    from benchmarks.sampler_overhead import legal_model_logits, main, textbook_step
    from unigen.sampling import build_sampler
    from unigen.sampling.rng import make_generators

    sampler = build_sampler("maskgit", mask_id=299)
    sampler.set_timesteps(4)
    logits = legal_model_logits(6, 10, 300, 299, torch.device("cpu"), seed=0)
    tokens = torch.full((6, 10), 299)
    masked = torch.ones(6, 10, dtype=torch.bool)
    masked[0, :3] = False
    tokens[0, :3] = torch.tensor([5, 6, 7])
    ours = sampler.step(logits, tokens, masked, 0, generator=make_generators(range(6)), editable=masked).tokens
    textbook = textbook_step(sampler, logits, tokens, masked, 0, make_generators(range(6)), masked)
    assert torch.equal(ours, textbook)
    assert (ours != 299).sum() > 3  # the step revealed something beyond the given tokens

    from benchmarks.sampler_overhead import textbook_combine
    from unigen.sampling.guidance import ClassifierFreeGuidance, GuidedBatch

    pair = torch.cat([logits, logits.flip(-1)])
    pair[..., 299] = float("-inf")
    combined = ClassifierFreeGuidance(3.0).combine(pair, GuidedBatch(pair, "both", 3.0))
    reference = textbook_combine(pair, 3.0)
    finite = torch.isfinite(reference)
    assert torch.equal(finite, torch.isfinite(combined))
    assert torch.allclose(combined[finite], reference[finite], atol=1e-5)

    result = main(["--shapes", "2x4x300", "--steps", "2", "--repeats", "1", "--threads", "1",
                   "--out", str(tmp_path / "o.json")])
    (row,) = result["rows"]
    assert (row["batch"], row["positions"], row["vocab"]) == (2, 4, 300) and row["speedup"] > 0
    assert row["cfg_combine_speedup"] > 0
    assert (tmp_path / "o.json").exists()


def test_text_decoding_limited_vocabulary_gives_identical_text(tmp_path):
    from benchmarks.text_decoding import main

    result = main(["--batch-size", "3", "--repeats", "1", "--caption-steps", "3", "--vqa-steps", "2",
                   "--fsq-levels", "8,5,5", "--threads", "1", "--out", str(tmp_path / "t.json")])
    rows = {r["task"]: r for r in result["rows"]}
    assert set(rows) == {"caption", "vqa"}
    for row in rows.values():
        assert row["identical"] is True and row["speedup"] > 0
        assert row["scored_ids_full"] == row["scored_ids_limited"] + 200  # the 8*5*5 codes skipped


def test_head_alignment_times_both_widths_of_the_same_projection(tmp_path):
    from benchmarks.common import parse_shapes
    from benchmarks.head_alignment import main

    result = main(["--shapes", "33x8x67,16x8x64", "--steps", "1", "--repeats", "1", "--threads", "1",
                   "--out", str(tmp_path / "h.json")])
    first, aligned = result["rows"]
    assert (first["rows"], first["dim"], first["vocab"]) == (33, 8, 67)
    assert first["ms_plain"] > 0 and first["ms_padded"] > 0
    assert first["speedup"] == pytest.approx(first["ms_plain"] / first["ms_padded"])
    assert aligned["vocab"] == 64  # already a multiple: both runs compute the same thing
    assert (tmp_path / "h.json").is_file()
    with pytest.raises(SystemExit, match="ROWSxDIMxVOCAB"):
        parse_shapes("33x8", "ROWSxDIMxVOCAB")


def test_self_verification_compares_rules_on_the_same_candidates(tokenizer_dirs, tmp_path):
    import torch

    from benchmarks.self_verification import main
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4).export(tmp_path / "m")
    result = main(["--model", str(tmp_path / "m"), "--num-samples", "3", "--candidates", "3",
                   "--contrast", "2", "--steps", "2", "--verify-masks", "2", "--batch-size", "2",
                   "--threads", "1", "--out", str(tmp_path / "sv.json")])
    rows = {r["rule"]: r for r in result["rows"]}
    samples = result["samples"]
    assert len(samples) == 3 and all(len(s["correct"]) == len(s["elbo"]) == 3 for s in samples)
    assert rows["plain"]["accuracy"] == sum(s["correct"][0] for s in samples) / 3
    assert all(s["pick_elbo"] == max(range(3), key=lambda j: s["elbo"][j]) for s in samples)
    assert all(rows[r]["accuracy"] <= rows["oracle"]["accuracy"] for r in ("plain", "elbo", "contrastive"))
    assert all(max(s["contrastive"]) < 0 for s in samples)  # a share of a softmax: log < 0
    with pytest.raises(SystemExit, match="--candidates must be >= 2"):
        main(["--model", str(tmp_path / "m"), "--candidates", "1"])


def test_modality_encode_times_the_steps_codes_both_ways(tmp_path):
    from benchmarks.modality_encode import main

    result = main(["--batch-sizes", "4,8", "--steps", "2", "--repeats", "1", "--threads", "1",
                   "--out", str(tmp_path / "m.json")])
    assert [r["batch"] for r in result["rows"]] == [4, 8]
    for row in result["rows"]:
        assert row["host_encode_ms_per_step"] > 0 and row["precomputed_ms_per_step"] > 0
        assert row["host_over_precomputed"] == pytest.approx(
            row["host_encode_ms_per_step"] / row["precomputed_ms_per_step"])
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["benchmark"] == "modality_encode" and saved["environment"]["date"]


def test_quick_runs_never_replace_the_measured_results(monkeypatch):
    """`run_all.py --quick` writes its smoke-test JSON under runs/ (git-ignored), not over
    benchmarks/results/, which holds measurements."""
    import types

    from benchmarks import run_all

    outs = []

    def fake_run(cmd, **kwargs):
        outs.append(Path(cmd[cmd.index("--out") + 1]))
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(run_all.subprocess, "run", fake_run)
    assert run_all.main(["--quick", "--only", "modality_encode"]) == 0
    assert run_all.main(["--only", "modality_encode"]) == 0
    assert outs == [ROOT / "runs" / "bench_quick" / "modality_encode_cpu.json",
                    ROOT / "benchmarks" / "results" / "modality_encode_cpu.json"]


def test_lightning_head_rows_count_the_timed_steps_only():
    """The head rows a Lightning run reports (its model FLOPs) are those of the timed steps, not of
    the profiler's steps that follow them (which once raised the 219M MFU from 0.517 to 0.519)."""
    from types import SimpleNamespace

    import torch

    from benchmarks.train_throughput import _StepTimer

    counter = SimpleNamespace(count=0)
    timer = _StepTimer(warmup=2, steps=3, device=torch.device("cpu"), counter=counter)
    for batch_idx in range(8):  # 2 warm-up, 3 timed, 3 profiled steps of 10 head rows each
        counter.count += 10
        timer.on_train_batch_end(None, None, None, None, batch_idx)
    assert timer.head_positions == 30 and counter.count == 60


@pytest.mark.slow
def test_checker_floor_redraws_an_eval_runs_samples_and_agrees_at_the_default(tokenizer_dirs, tmp_path):
    import torch

    from benchmarks.checker_floor import main
    from unigen.cli import main as unigen
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    model = tmp_path / "model"
    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4, tasks={"t2i": 1}).export(model)
    assert unigen(["eval", "--model", str(model), "--config", str(ROOT / "recipes" / "debug" / "eval_debug.yaml"),
                   "--out", str(tmp_path / "eval"), "--override", "tasks.caption=null", "--override",
                   "tasks.vqa=null", "--no-progress"]) == 0
    result = main(["--model", str(model), "--eval", str(tmp_path / "eval"), "--num-samples", "4",
                   "--floors", "0.5,0.9", "--out", str(tmp_path / "floor.json")])
    low, high = result["table"]
    assert low["agrees_with_records"] == 4 and "agrees_with_records" not in high
    assert high["accuracy"] <= low["accuracy"] and result["settings"]["num_samples"] == 4
