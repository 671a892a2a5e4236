"""benchmarks/gpu_next_leg.sh: which leg it runs for what the checkout kept, and that the command it
would run parses (a lent GPU session has no minutes for a typo)."""

import shlex
import subprocess
from pathlib import Path

import pytest

from benchmarks.shapes_quality import parse_args

ROOT = Path(__file__).resolve().parents[2]


def dry_run(tmp_path, model=False, tokenizer=False):
    model_dir, tokenizer_dir = tmp_path / "model", tmp_path / "tokenizer"
    if model:
        model_dir.mkdir()
        (model_dir / "training_history.json").write_text("{}")
    if tokenizer:
        tokenizer_dir.mkdir()
        (tokenizer_dir / "config.json").write_text("{}")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_next_leg.sh"), "--compile-modes",
                           "default,reduce-overhead", "--host-threads", "1,16"],
                          capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "MODEL": str(model_dir),
                               "TOKENIZER": str(tokenizer_dir)})
    if not (model or tokenizer):
        return proc
    assert proc.returncode == 0, proc.stderr
    what, command = (line.split(": ", 1)[1] for line in proc.stdout.splitlines())
    args = shlex.split(command)
    assert args[:2] == ["bash", "benchmarks/gpu_quality.sh"]
    return what, parse_args(args[2:]), model_dir, tokenizer_dir


@pytest.mark.parametrize("kept", ["model", "model_and_tokenizer", "tokenizer"])
def test_the_leg_starts_from_what_the_checkout_kept(tmp_path, kept):
    what, args, model_dir, tokenizer_dir = dry_run(tmp_path, model="model" in kept,
                                                   tokenizer="tokenizer" in kept)
    if "model" in kept:
        assert args.init_unified == str(model_dir) and args.image_tokenizer is None
        assert what.startswith("continues")
    else:
        assert args.image_tokenizer == str(tokenizer_dir) and args.init_unified is None
        assert args.shares["tokenizer"] == pytest.approx(0.02)
    assert sum(args.shares.values()) == pytest.approx(1.0)
    assert args.return_model and args.profile_steps == 5
    assert args.compile_modes == ["default", "reduce-overhead"]  # extra arguments pass through
    assert args.host_threads == [1, 16]
    assert all((ROOT / recipe).is_file() for recipe in args.unified_recipe)
    assert args.unified_recipe[-3:] == ["recipes/presets/unified_t2i_weight.yaml",
                                        "recipes/presets/unified_lr_high.yaml",
                                        "recipes/presets/unified_muon.yaml"]


def test_without_a_tokenizer_it_stops_with_one_line(tmp_path):
    proc = dry_run(tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == (f"gpu_next_leg: no image tokenizer at {tmp_path / 'tokenizer'} "
                                   f"(and no returned model at {tmp_path / 'model'})")


def test_by_default_it_finds_the_tracked_tokenizer():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_next_leg.sh")], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1",
                                          "MODEL": "/nonexistent/model"})
    assert proc.returncode == 0, proc.stderr
    assert "--image-tokenizer assets/tokenizers/fsq_shapes" in proc.stdout
