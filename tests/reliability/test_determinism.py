"""Same seed, same output, also across processes (string hashing differs between interpreters, so
anything that iterates a set of strings would show here).  Training determinism (two runs of a
recipe write identical checkpoints) is checked by ``test_same_seed_same_checkpoints`` in
test_exact_resume.py; the pipeline API's per-sample seeding by tests/pipeline."""

from __future__ import annotations

import subprocess
import sys

from resume_testkit import subprocess_env

from unigen.cli import main


def _generate(model, out, seed: int) -> list[str]:
    return ["generate", "--model", str(model), "--prompt", "a red circle", "--prompt",
            "two blue squares", "--steps", "3", "--guidance", "2.0", "--seed", str(seed),
            "--out", str(out)]


def test_generate_is_byte_identical_for_a_seed_in_and_across_processes(tiny_model_dir, tmp_path):
    first, again, other = (tmp_path / f"{n}.png" for n in ("first", "again", "other"))
    assert main(_generate(tiny_model_dir, first, seed=5)) == 0
    assert main(_generate(tiny_model_dir, again, seed=5)) == 0
    assert main(_generate(tiny_model_dir, other, seed=6)) == 0
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    fresh = tmp_path / "fresh.png"
    done = subprocess.run([sys.executable, "-m", "unigen", *_generate(tiny_model_dir, fresh, 5)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert fresh.read_bytes() == first.read_bytes()
