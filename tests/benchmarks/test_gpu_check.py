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
MFU_TESTS_S = 110  # gpu_mfu.sh's pytest stage, which is not a ``run`` line


def test_the_stages_fit_one_device_command():
    assert [name for name, _, _ in GPU_CHECK] == ["train_throughput", "sampling", "sampler_overhead",
                                                  "text_decoding", "train_throughput"]
    # start-up (imports, carried wheels) needs some of the 600 s too
    assert sum(limit for _, limit, _ in GPU_CHECK) <= DEVICE_COMMAND_LIMIT_S - 15
    assert f"TESTS_S={MFU_TESTS_S}" in (ROOT / "benchmarks" / "gpu_mfu.sh").read_text()
    assert sum(limit for _, limit, _ in GPU_MFU) + MFU_TESTS_S <= DEVICE_COMMAND_LIMIT_S - 15


def test_gpu_mfu_times_the_head_padding_then_the_split_backend_at_both_lengths():
    (head, _, _), (short, _, short_args), (long, _, long_args), *_ = GPU_MFU
    assert head == "head_alignment" and short == long == "train_throughput"
    for args in (short_args, long_args):
        assert args[args.index("--attention") + 1] == "sdpa,split"
    assert short_args[short_args.index("--image-size") + 1] == "64"  # 284 positions
    assert "--image-size" not in long_args  # the 219m preset's 128 px: 1,052 positions


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
