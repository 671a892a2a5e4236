"""benchmarks/gpu_check.sh and gpu_mfu.sh: every benchmark they run gets arguments its parser
accepts, and their time limits fit one device command (a lent GPU session has no minutes for a
typo)."""

import argparse
import importlib
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEVICE_COMMAND_LIMIT_S = 600  # the device tool's most seconds for one command


def stages(script: Path) -> list[tuple[str, int, list[str]]]:
    """The ``run NAME SECONDS ARGS...`` lines of a gpu script, continuation lines joined."""
    text = script.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) >= 3 and words[0] == "run" and words[2].isdigit():
            found.append((words[1], int(words[2]), words[3:]))
    return found


class Parsed(Exception):
    """Raised in place of running a benchmark once its arguments have parsed."""


@pytest.fixture
def parse_only(monkeypatch):
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)


GPU_CHECK = stages(ROOT / "benchmarks" / "gpu_check.sh")
GPU_MFU = stages(ROOT / "benchmarks" / "gpu_mfu.sh")


def test_the_stages_fit_one_device_command():
    assert [name for name, _, _ in GPU_CHECK] == ["train_throughput", "sampling", "sampler_overhead",
                                                  "text_decoding", "train_throughput"]
    # start-up (imports, carried wheels) needs some of the 600 s too
    assert sum(limit for _, limit, _ in GPU_CHECK) <= DEVICE_COMMAND_LIMIT_S - 15
    assert sum(limit for _, limit, _ in GPU_MFU) <= DEVICE_COMMAND_LIMIT_S - 15


def test_gpu_mfu_measures_qk_norm_as_an_ab_on_one_network():
    """The qk-norm A/B differs in that one flag: same size, heads, attention, steps."""
    (memory, _, memory_args), (_, _, with_qk), (_, _, without_qk), *rest = GPU_MFU
    assert memory == "activation_memory" and "219m:32" in memory_args[memory_args.index("--cases") + 1]
    assert "--no-qk-norm" not in with_qk and "--no-qk-norm" in without_qk
    strip = {"--no-qk-norm", "--out"}
    same = [a for a in without_qk if a not in strip and not a.endswith(".json")]
    assert same == [a for a in with_qk if a not in strip and not a.endswith(".json")]
    assert with_qk[with_qk.index("--attention") + 1] == "full"
    assert all(name == "train_throughput" for name, _, _ in rest)


@pytest.mark.parametrize("name, limit, args", GPU_CHECK + GPU_MFU,
                         ids=[f"check{i}-{name}" for i, (name, _, _) in enumerate(GPU_CHECK)]
                         + [f"mfu{i}-{name}" for i, (name, _, _) in enumerate(GPU_MFU)])
def test_each_stage_parses(parse_only, name, limit, args):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(Parsed) as parsed:
        module.main(args)
    namespace = parsed.value.args[0]
    assert namespace.device == "cuda"
    assert "--out" not in args or namespace.out.endswith("_cuda.json")  # gpu_check copies *_cuda.json


def test_a_typo_would_be_caught(parse_only, capsys):
    from benchmarks import train_throughput

    with pytest.raises(SystemExit) as exc:
        train_throughput.main(["--size", "219m", "--device", "cuda", "--profile-stpes", "3"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --profile-stpes 3" in capsys.readouterr().err
