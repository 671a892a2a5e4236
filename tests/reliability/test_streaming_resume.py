"""``unigen eval --resume`` and ``unigen tokenize`` after a real ``kill -9``: the resumed run
finishes with exactly the output of an uninterrupted one, and work written before the kill is kept,
not redone.  (In-process interruptions of both are tested by their owners: tests/evaluate and the
shard tests; these add the hard kill, which skips every ``finally`` and ``atexit``.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from resume_testkit import ROOT, finish, kill_when, start_unigen

pytestmark = pytest.mark.slow  # three interpreter start-ups each


def _files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip}


def _run_and_kill(argv: list[str], hang: tuple[str, int], ref_argv: list[str], tmp: Path):
    """Start the reference run and the run to kill side by side; SIGKILL the second one when the
    hanging method is reached.  Returns the (still running) reference process."""
    marker = tmp / "hanging"
    reference = start_unigen(ref_argv, tmp, tmp / "ref.log")
    killed = start_unigen(argv, tmp, tmp / "killed.log", hang=(*hang, marker))
    kill_when(killed, marker, tmp / "killed.log")
    return reference


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_eval_resumes_after_sigkill_with_identical_results(tiny_model_dir, tmp_path):
    def argv(out: Path) -> list[str]:
        return ["eval", "--model", str(tiny_model_dir), "--config",
                str(ROOT / "recipes" / "debug" / "eval_debug.yaml"), "--out", str(out),
                "--no-progress", "--device", "cpu", "--override", "data.num_samples=12"]

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    # t2i finishes (3 batches of 4), captioning is killed inside its second batch
    reference = _run_and_kill(argv(cut), ("unigen.pipeline:UnifiedPipeline.caption", 2), argv(ref),
                              tmp_path)
    at_kill = _lines(cut / "records.jsonl")
    resumed = start_unigen([*argv(cut), "--resume"], tmp_path, tmp_path / "resumed.log")
    finish(reference, tmp_path / "ref.log")
    finish(resumed, tmp_path / "resumed.log")
    expected = json.loads((ref / "results.json").read_text())
    got = json.loads((cut / "results.json").read_text())
    assert got["metrics"] == expected["metrics"]
    assert got["metadata"]["resumed_samples"]["t2i"] == 12, "finished work is kept, not redone"
    final = _lines(cut / "records.jsonl")
    assert len(at_kill) >= 12 and final[:len(at_kill)] == at_kill
    assert sorted(final) == sorted(_lines(ref / "records.jsonl"))


def test_tokenize_resumes_after_sigkill_with_identical_shards(tokenizer_dirs, tmp_path):
    def argv(out: Path) -> list[str]:
        return ["tokenize", "--tokenizer", tokenizer_dirs["image_tokenizer"], "--data", "shapes",
                "--split", "val", "--image-size", "32", "--num-samples", "32", "--shard-size", "8",
                "--batch-size", "4", "--device", "cpu", "--out", str(out)]

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    # two encode calls a shard: killed inside shard 2, after shards 0 and 1 are complete
    reference = _run_and_kill(argv(cut), ("unigen.tokenizers.base:ImageTokenizer.encode", 5),
                              argv(ref), tmp_path)
    kept = {p.name: p.stat().st_mtime_ns for p in cut.glob("chunk-*.bin")}
    assert len(kept) == 2, kept
    resumed = start_unigen(argv(cut), tmp_path, tmp_path / "resumed.log")  # the same command
    finish(reference, tmp_path / "ref.log")
    finish(resumed, tmp_path / "resumed.log")
    assert {n: (cut / n).stat().st_mtime_ns for n in kept} == kept, "finished shards are not redone"
    assert _files(cut, skip=("index.json",)) == _files(ref, skip=("index.json",))
    index = [json.loads((d / "index.json").read_text()) for d in (cut, ref)]
    for i in index:
        i.pop("updated_at")  # litdata's timestamp
    assert index[0] == index[1]
