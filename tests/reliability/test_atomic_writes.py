"""A crash while writing never leaves a truncated file where a good one was: checkpoints (temp +
fsync + rename) and ``save_pretrained`` directories (complete or absent)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from unigen import io
from unigen.training import reliability
from unigen.training.reliability import AtomicCheckpointIO


def junk(folder: Path) -> list[str]:
    """Temporary files or folders an interrupted atomic write could leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_checkpoint_round_trip(tmp_path):
    ckpt_io = AtomicCheckpointIO()
    state = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "global_step": 7,
             "loops": {"name": "fit", "progress": [1, 2]}}
    ckpt_io.save_checkpoint(state, tmp_path / "sub" / "last.ckpt")
    back = ckpt_io.load_checkpoint(tmp_path / "sub" / "last.ckpt")
    assert back["global_step"] == 7 and back["loops"] == state["loops"]
    assert torch.equal(back["state_dict"]["w"], state["state_dict"]["w"])
    assert junk(tmp_path / "sub") == []


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    ckpt_io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    ckpt_io.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, target)
    good = target.read_bytes()

    def dies_halfway(obj, path):  # half a checkpoint reaches the disk, then the disk is full
        Path(path).write_bytes(good[: len(good) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reliability.torch, "save", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        ckpt_io.save_checkpoint({"global_step": 2, "w": torch.zeros(4)}, target)
    assert target.read_bytes() == good
    assert ckpt_io.load_checkpoint(target)["global_step"] == 1
    assert junk(tmp_path) == []


def test_temp_files_of_a_killed_write_are_cleared_by_the_next_save(tmp_path):
    # `kill -9` skips every cleanup: the temp file stays, the target is untouched
    stale = tmp_path / ".last.ckpt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".epoch=0-step=1.ckpt.abc.tmp"  # another target's temp: not ours to remove
    other.write_bytes(b"")
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "last.ckpt")
    assert not stale.exists() and other.exists()


def test_loading_with_weights_only_false_is_refused(tmp_path):
    ckpt_io = AtomicCheckpointIO()
    ckpt_io.save_checkpoint({"global_step": 1}, tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="weights_only=False"):
        ckpt_io.load_checkpoint(tmp_path / "a.ckpt", weights_only=False)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ckpt_io.load_checkpoint(tmp_path / "missing.ckpt")


def _fail_on_nth_safetensors_write(monkeypatch, n: int) -> None:
    real, calls = io.save_file, []

    def save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == n:
            raise OSError(5, "Input/output error")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(io, "save_file", save_file)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def pipe(tiny_pipeline):
    return tiny_pipeline


def test_pipeline_export_is_complete_or_the_old_one_stays(pipe, tmp_path, monkeypatch):
    from unigen.pipeline import UnifiedPipeline

    target = tmp_path / "model"
    pipe.save_pretrained(target)
    before = _snapshot(target)
    newer = UnifiedPipeline(copy.deepcopy(pipe.transformer), pipe.image_tokenizer,
                            pipe.text_tokenizer)
    with torch.no_grad():
        newer.transformer.token_emb.weight.add_(1.0)
    # the transformer's weights are written, the image tokenizer's fail
    _fail_on_nth_safetensors_write(monkeypatch, 2)
    with pytest.raises(OSError, match="Input/output error"):
        newer.save_pretrained(target)
    assert _snapshot(target) == before
    assert junk(tmp_path) == []
    monkeypatch.undo()
    newer.save_pretrained(target)  # and the next export replaces it whole
    after = _snapshot(target)
    assert after.keys() == before.keys() and after != before and junk(tmp_path) == []


def test_a_failed_first_export_leaves_nothing(pipe, tmp_path, monkeypatch):
    _fail_on_nth_safetensors_write(monkeypatch, 2)
    with pytest.raises(OSError, match="Input/output error"):  # the simulated failure, no other
        pipe.save_pretrained(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_tokenizer_save_pretrained_is_complete_or_the_old_one_stays(pipe, tmp_path, monkeypatch):
    tok, target = pipe.image_tokenizer, tmp_path / "tok"
    tok.save_pretrained(target)
    before = _snapshot(target)
    _fail_on_nth_safetensors_write(monkeypatch, 1)
    with pytest.raises(OSError, match="Input/output error"):
        tok.save_pretrained(target)
    assert _snapshot(target) == before and junk(tmp_path) == []
