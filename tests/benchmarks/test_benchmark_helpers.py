"""Benchmark plumbing that needs no timing: argument parsing, case grids, data, summaries."""

import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks.common import SIZES, PretokenizedSamples
from benchmarks.flops import TransformerShape, forward_flops
from benchmarks.sampling import MASKED_SAMPLERS, Case, cases
from benchmarks.train_throughput import (
    LoopResult, check_attention_choice, mode_label, parse_tasks, run_label, run_options, summarize,
)


def test_parse_tasks():
    assert parse_tasks("t2i=1,caption=0.5") == {"t2i": 1.0, "caption": 0.5}
    with pytest.raises(ValueError, match="name=ratio"):
        parse_tasks("t2i")


def test_case_grids():
    samplers = list(MASKED_SAMPLERS)
    full = cases(samplers, [8, 16], 3.0, 64, ar_uncached=True, grid="full")
    assert len(full) == 4 * 2 * 2 * 2 + 2 + 1
    compact = cases(samplers, [16], 3.0, 64, ar_uncached=False)
    names = [c.name for c in compact]
    assert len(names) == len(set(names)) == 4 + 3 + 2
    assert "masked/maskgit/16steps/nocache/cfg3" in names and "autoregressive/ar/64steps/cache/cfg3" in names
    assert all(c.steps == 64 for c in compact if c.model == "autoregressive")
    # without guidance there is nothing guided to time
    assert all(c.guidance == 1.0 for c in cases(samplers, [16], 1.0, 64, ar_uncached=True))
    assert Case("masked", "confident", 16, False, 1.0).name == "masked/confident/16steps/nocache/cfg1"


def test_pretokenized_samples_are_a_function_of_the_seed():
    a, b = PretokenizedSamples(6, (4, 4), 1000, seed=1), PretokenizedSamples(6, (4, 4), 1000, seed=1)
    assert torch.equal(a.codes, b.codes) and a.captions == b.captions and a.qa == b.qa
    item = a[2]
    assert item["codes"].shape == (4, 4) and int(item["codes"].max()) < 1000
    assert item["caption"] and item["question"] and item["answer"]
    assert not torch.equal(a.codes, PretokenizedSamples(6, (4, 4), 1000, seed=2).codes)


def test_compile_mode_labels_round_trip():
    assert mode_label("default") == "compile"  # the label of every earlier result
    assert mode_label("reduce-overhead") == "compile:reduce-overhead"
    for mode in ("default", "reduce-overhead", "max-autotune-no-cudagraphs"):
        for attention in ("sdpa", "flex"):
            assert run_options(run_label(mode_label(mode), attention)) == {
                "compile": True if mode == "default" else mode, "attention": attention}
    assert run_label("compile", "sdpa") == "compile"  # earlier results keep their labels
    assert run_options("eager") == {"compile": False, "attention": "sdpa"}
    assert run_options("eager+flex") == {"compile": False, "attention": "flex"}
    # the reference network's attention: SDPA without the prefix mask
    assert run_options(run_label("compile", "full")) == {
        "compile": True, "attention": "sdpa", "prefix_attention": False}
    assert check_attention_choice("full") == "full"
    with pytest.raises(ValueError, match="attention must be one of"):
        check_attention_choice("fulll")


def test_summarize_medians_and_ratio():
    shape = TransformerShape(dim=32, depth=2, mlp_hidden=128, seq_len=19, vocab_size=67)
    runs = [LoopResult("plain", "eager", 10, 1.0, 1.0, 100, None),
            LoopResult("lightning", "eager", 10, 1.25, 1.1, 100, None),
            LoopResult("plain", "eager", 10, 3.0, 1.0, 100, None),  # a disturbed run: the median damps it
            LoopResult("lightning", "eager", 10, 1.25, 1.1, 100, None)]
    plain, lightning = summarize(runs, shape, batch=4, peak=1e9, datasheet=None)
    assert plain["step_ms"] == pytest.approx(200.0) and lightning["step_ms"] == pytest.approx(125.0)
    assert plain["tokens_per_s"] == pytest.approx(4 * 19 / 0.2)
    assert lightning["lightning_over_plain"] == pytest.approx(0.2 / 0.125)
    assert lightning["lightning_over_plain_cpu_time"] == pytest.approx(1.0 / 1.1)
    flops = 3 * forward_flops(shape, 4, 10)
    assert lightning["mfu_vs_measured_matmul"] == pytest.approx(flops / 0.125 / 1e9)
    assert lightning["mfu_vs_datasheet_bf16"] is None
    assert plain["over_first_mode"] == lightning["over_first_mode"] == 1.0
    graphs = summarize([*runs, LoopResult("plain", "compile:reduce-overhead", 10, 0.5, 0.5, 100, None),
                        LoopResult("lightning", "compile:reduce-overhead", 10, 1.0, 0.6, 100, None)],
                       shape, batch=4, peak=1e9, datasheet=None)
    assert [r["over_first_mode"] for r in graphs[2:]] == pytest.approx([4.0, 1.25])


def test_size_presets_are_what_their_names_say():
    # blocks + output head at each preset's default codebook, text vocabulary of the shapes tokenizer
    def millions(size, text_vocab=79):
        import math

        hidden = 64 * -(-int(size.dim * 8 / 3) // 64)
        shape = TransformerShape(size.dim, size.depth, hidden, 0, text_vocab + math.prod(size.fsq_levels))
        return (shape.block_params + shape.head_params) / 1e6

    assert 19 < millions(SIZES["compact"]) < 21  # 26M with the token table (not counted here)
    assert 30 < millions(SIZES["34m"]) < 38
    assert 200 < millions(SIZES["219m"]) < 240
    assert 950 < millions(SIZES["1b"]) < 1100


@pytest.mark.parametrize("script", sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.sh")),
                         ids=lambda p: p.name)
def test_gpu_wrapper_scripts_are_valid_bash(script):
    """The GPU wrappers only run on a lent machine: at least their syntax is checked here."""
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_sampling_accuracy_uses_the_classifier_when_given(domain_classifier_dir):
    from benchmarks.sampling import accuracy
    from unigen.metrics import ClassAccuracy

    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32)
    prompts = ["a red square", "a green one", "blue", "white", "a red dot", "green"]
    metric = ClassAccuracy(domain_classifier_dir)
    first = accuracy(images, prompts, metric)
    expected = ClassAccuracy(domain_classifier_dir)
    expected.update(images, prompts)
    assert first == pytest.approx(float(expected.compute()["class_accuracy"]))
    assert accuracy(images, prompts, metric) == first  # reset between cases, not accumulated


def test_sampling_refuses_fashion_prompts_without_a_classifier():
    from benchmarks.sampling import main

    with pytest.raises(SystemExit, match="needs --classifier"):
        main(["--prompts", "fashion_mnist", "--device", "cpu"])
    with pytest.raises(SystemExit, match="--classifier scores --prompts fashion_mnist"):
        main(["--classifier", "runs/classifiers/fashion_mnist", "--device", "cpu"])


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_prompts_name_one_class_each():
    from benchmarks.sampling import benchmark_prompts
    from unigen.data.fashion_mnist import CLASS_NAMES
    from unigen.metrics import prompt_class

    prompts = benchmark_prompts("fashion_mnist", 50, "val", seed=0)
    assert len(prompts) == 50 and prompts == benchmark_prompts("fashion_mnist", 50, "val", seed=0)
    assert len({prompt_class(p, CLASS_NAMES) for p in prompts}) >= 8  # a seeded mix of classes


def test_heads_override_changes_the_head_width_only(tmp_path, capsys):
    from benchmarks.train_throughput import main

    result = main(["--size", "tiny", "--heads", "2", "--steps", "1", "--warmup", "0", "--repeats", "1",
                   "--batch-size", "2", "--out", str(tmp_path / "t.json")])
    model = result["settings"]["model"]
    assert model["heads"] == 2 and model["dim"] == SIZES["tiny"].dim
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # 64 channels do not split into 3 heads
        main(["--size", "tiny", "--heads", "3", "--out", str(tmp_path / "u.json")])
    assert exc.value.code == 2
    assert (f"error: --heads must divide the width {SIZES['tiny'].dim}, got 3"
            in capsys.readouterr().err)
    assert not (tmp_path / "u.json").exists()


def test_optimizer_option_reaches_both_loops(tmp_path, monkeypatch):
    from benchmarks import train_throughput
    from unigen.training import unified_module

    built = []

    def spy(real):
        def build(name, *args, **kwargs):
            opt = real(name, *args, **kwargs)
            built.append((name, type(opt).__name__))
            return opt
        return build

    monkeypatch.setattr(train_throughput, "build_optimizer", spy(train_throughput.build_optimizer))
    monkeypatch.setattr(unified_module, "build_optimizer", spy(unified_module.build_optimizer))
    result = train_throughput.main(["--size", "tiny", "--optimizer", "muon", "--steps", "1",
                                    "--warmup", "0", "--repeats", "1", "--batch-size", "2",
                                    "--out", str(tmp_path / "t.json")])
    assert result["settings"]["optimizer"] == "muon"
    assert built == [("muon", "MuonAdamW")] * 2  # the plain loop's and Lightning's
