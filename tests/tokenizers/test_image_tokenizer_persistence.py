"""save_pretrained / from_pretrained of the image tokenizers: bit-exact round trips and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from image_tokenizer_testkit import make_tokenizer, tiny_images, train_steps
from unigen.tokenizers import FSQTokenizer, ImageTokenizer, VQTokenizer
from unigen.tokenizers.base import CONFIG_NAME, WEIGHTS_NAME


@pytest.fixture
def saved_fsq(tmp_path):
    tok = make_tokenizer("fsq")
    train_steps(tok, tiny_images(), steps=1)
    tok.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def test_round_trip_is_bit_exact(tokenizer_name, tmp_path):
    tok = make_tokenizer(tokenizer_name)
    train_steps(tok, tiny_images(), steps=3)  # move weights and codebook statistics off their init
    tok.eval()
    tok.save_pretrained(tmp_path / "tok")
    loaded = ImageTokenizer.from_pretrained(tmp_path / "tok")
    assert type(loaded) is type(tok) and loaded.config == tok.config and not loaded.training
    for key, value in tok.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    images = tiny_images(n=3, seed=5)
    codes = tok.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), tok.decode(codes))


def test_directory_layout_and_config(saved_fsq):
    assert sorted(p.name for p in saved_fsq.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    meta = json.loads((saved_fsq / CONFIG_NAME).read_text())
    assert meta["type"] == "fsq" and meta["format_version"] == 1
    assert meta["config"]["levels"] == [5, 5, 5]


def test_loading_through_the_subclass_checks_the_type(saved_fsq):
    assert isinstance(FSQTokenizer.from_pretrained(saved_fsq), FSQTokenizer)
    with pytest.raises(ValueError, match="holds a 'fsq' tokenizer, not a VQTokenizer"):
        VQTokenizer.from_pretrained(saved_fsq)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="image tokenizer directory not found"):
        ImageTokenizer.from_pretrained(tmp_path / "nope")


def test_missing_weights_file(saved_fsq):
    (saved_fsq / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=f"weights file not found: .*{WEIGHTS_NAME}"):
        ImageTokenizer.from_pretrained(saved_fsq)


def test_wrong_format_version(saved_fsq):
    meta = json.loads((saved_fsq / CONFIG_NAME).read_text())
    meta["format_version"] = 99
    (saved_fsq / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format version 1 \\(found 99\\)"):
        ImageTokenizer.from_pretrained(saved_fsq)


def test_unknown_type(saved_fsq):
    meta = json.loads((saved_fsq / CONFIG_NAME).read_text())
    meta["type"] = "nonexistent"
    (saved_fsq / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(KeyError, match="unknown image tokenizer 'nonexistent'"):
        ImageTokenizer.from_pretrained(saved_fsq)


@pytest.mark.parametrize("change, message", [
    ({"levels": [8, 5, 5, 5]}, "shapes .* differ"),  # wider quantizer: conv shapes change
    ({"mid_block_attention": True}, "missing .*attention.*unexpected \\[\\]"),  # new modules
])
def test_weights_not_matching_the_config(saved_fsq, change, message):
    meta = json.loads((saved_fsq / CONFIG_NAME).read_text())
    meta["config"].update(change)
    (saved_fsq / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{WEIGHTS_NAME} does not match the config: {message}"):
        ImageTokenizer.from_pretrained(saved_fsq)


def test_corrupt_weights_file(saved_fsq):
    (saved_fsq / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read weights file"):
        ImageTokenizer.from_pretrained(saved_fsq)


def test_save_replaces_an_existing_directory_whole(saved_fsq):
    tok = make_tokenizer("lfq")
    tok.save_pretrained(saved_fsq)
    assert json.loads((saved_fsq / CONFIG_NAME).read_text())["type"] == "lfq"
    assert sorted(p.name for p in saved_fsq.parent.iterdir()) == ["tok"]  # no temp leftovers
