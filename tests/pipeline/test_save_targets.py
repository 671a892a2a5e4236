"""``save_pretrained`` replaces only an earlier save of the same kind: a folder of the user's own
files, or a file, is refused with one line and left exactly as it was (unigen.io.atomic_directory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unigen import io
from unigen.pipeline import UnifiedPipeline


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (directories too), with the bytes of the files."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def hidden(folder: Path) -> list[str]:
    """What an interrupted or misdirected atomic save could leave beside its target."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def users_folder(root: Path) -> Path:
    folder = root / "v"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("hi")
    (folder / "sub" / "keep.bin").write_bytes(b"\x00\x01")
    return folder


def test_a_pipeline_save_refuses_a_folder_of_other_files(pipe, tmp_path):
    folder = users_folder(tmp_path)
    before = snapshot(folder)
    with pytest.raises(ValueError, match="cannot save to .*v: the directory is not empty and holds "
                                         "no pipeline.json"):
        pipe.save_pretrained(folder)
    assert snapshot(folder) == before and hidden(tmp_path) == []


def test_a_pipeline_save_refuses_a_file(pipe, tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"an image")
    with pytest.raises(ValueError, match="cannot save to .*a.png: it is a file"):
        pipe.save_pretrained(target)
    assert target.read_bytes() == b"an image" and hidden(tmp_path) == []


def test_saving_again_replaces_the_earlier_save_and_an_empty_folder_is_used(pipe, tmp_path):
    target = tmp_path / "model"
    pipe.save_pretrained(target)
    (target / "transformer" / "stale.txt").write_text("from an older export")
    pipe.save_pretrained(target)  # the same kind of save: swapped whole
    assert not (target / "transformer" / "stale.txt").exists()
    assert torch.equal(UnifiedPipeline.from_pretrained(target).text_to_image(
        ["a red circle"], num_steps=2, output="codes"), pipe.text_to_image(
        ["a red circle"], num_steps=2, output="codes"))
    empty = tmp_path / "empty"
    empty.mkdir()
    pipe.save_pretrained(empty)
    assert (empty / "pipeline.json").is_file() and hidden(tmp_path) == []


def test_tokenizer_saves_refuse_what_they_did_not_write(pipe, tmp_path):
    # the image tokenizer (config.json marker) must not replace a pipeline directory ...
    model = tmp_path / "model"
    pipe.save_pretrained(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="holds no config.json"):
        pipe.image_tokenizer.save_pretrained(model)
    assert snapshot(model) == before
    # ... and the text tokenizer (no marker given: judged by the files it writes) a user's folder
    folder = users_folder(tmp_path)
    before = snapshot(folder)
    with pytest.raises(ValueError, match="the directory is not empty"):
        pipe.text_tokenizer.save_pretrained(folder)
    assert snapshot(folder) == before and hidden(tmp_path) == []
    tok = tmp_path / "tok"
    pipe.text_tokenizer.save_pretrained(tok)
    pipe.text_tokenizer.save_pretrained(tok)  # its own earlier save is replaced
    pipe.image_tokenizer.save_pretrained(tmp_path / "img")
    pipe.image_tokenizer.save_pretrained(tmp_path / "img")
    assert hidden(tmp_path) == []


def test_atomic_directory_checks_the_marker_before_the_save_runs(tmp_path):
    folder = users_folder(tmp_path)
    ran = []
    with pytest.raises(ValueError, match="holds no marker.json"):
        with io.atomic_directory(folder, marker="marker.json") as tmp:
            ran.append(tmp)
    assert ran == [] and hidden(tmp_path) == []
    (folder / "marker.json").write_text("{}")
    with io.atomic_directory(folder, marker="marker.json") as tmp:
        (tmp / "marker.json").write_text('{"new": 1}')
    assert snapshot(folder) == {"marker.json": b'{"new": 1}'} and hidden(tmp_path) == []
