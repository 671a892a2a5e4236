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
    with pytest.raises(TypeError, match="the image tokenizer directory must be a path .*, got int: 5"):
        ImageTokenizer.from_pretrained(5)
    from unigen.pipeline import UnifiedPipeline

    with pytest.raises(TypeError, match="the pipeline directory must be a path .*, got NoneType: None"):
        UnifiedPipeline.from_pretrained(None)


def test_a_pipeline_directory_names_its_image_tokenizer(saved_fsq, tmp_path):
    import shutil

    shutil.copytree(saved_fsq, tmp_path / "pipeline" / "image_tokenizer")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'pipeline'} is a pipeline directory, not an "
                                                f"image tokenizer; its image tokenizer is "
                                                f"{tmp_path / 'pipeline' / 'image_tokenizer'}"):
        ImageTokenizer.from_pretrained(tmp_path / "pipeline")
    assert isinstance(ImageTokenizer.from_pretrained(tmp_path / "pipeline" / "image_tokenizer"), FSQTokenizer)


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
    # wider quantizer: conv shapes change
    ({"levels": [8, 5, 5, 5]}, "'config.levels' is \\[8, 5, 5, 5\\] but .* saved with \\[5, 5, 5\\]"),
    # new modules
    ({"mid_block_attention": True}, "'config.mid_block_attention' is true but .* saved with false"),
])
def test_weights_not_matching_the_config(saved_fsq, change, message):
    # the weights record the config they were saved with (tests/test_config_weights_match.py;
    # weights without the record get the shape errors of io.load_weights there)
    meta = json.loads((saved_fsq / CONFIG_NAME).read_text())
    meta["config"].update(change)
    (saved_fsq / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{CONFIG_NAME}: {message} \\(edit it back"):
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


def _write_meta(saved, body) -> None:
    (saved / CONFIG_NAME).write_text(json.dumps(body))


def _meta(saved) -> dict:
    return json.loads((saved / CONFIG_NAME).read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda m: [m], "must hold a JSON object, got a JSON array"),
    (lambda m: {k: v for k, v in m.items() if k != "config"}, 'has no "config" field'),
    (lambda m: {**m, "config": None}, '"config" must be a JSON object .* got a JSON null'),
    (lambda m: {**m, "config": [5, 5, 5]}, '"config" must be a JSON object .* got a JSON array'),
    (lambda m: {**m, "type": ["fsq"]}, "\"type\" must be the name .* got \\['fsq'\\]"),
    (lambda m: {**m, "config": {**m["config"], "bogus": 1}},
     "bad image tokenizer config in .*: .*unexpected keyword argument 'bogus'"),
    (lambda m: {**m, "config": {**m["config"], "levels": "abc"}},
     "bad image tokenizer config in .*: FSQ levels must be a list of integers, got 'abc'"),
    (lambda m: {**m, "config": {**m["config"], "levels": [2, 5]}},
     "bad image tokenizer config in .*: FSQ levels must be .* >= 3"),
    (lambda m: {**m, "config": {**m["config"], "mid_block_attention": "false"}},
     "mid_block_attention must be true or false, got 'false'"),
    (lambda m: {**m, "config": {**m["config"], "block_out_channels": [8, "x"]}},
     "block_out_channels must be a list of integers"),
    (lambda m: {**m, "config": {**m["config"], "seed": 1.5}}, "seed must be an integer, got 1.5"),
])
def test_config_with_a_wrong_structure_is_one_error_naming_the_file(saved_fsq, edit, message):
    _write_meta(saved_fsq, edit(_meta(saved_fsq)))
    with pytest.raises(ValueError, match=message) as err:
        ImageTokenizer.from_pretrained(saved_fsq)
    assert str(saved_fsq / CONFIG_NAME) in str(err.value) and "\n" not in str(err.value)


def test_unknown_type_names_the_file_and_says_to_import_a_custom_module(saved_fsq):
    _write_meta(saved_fsq, {**_meta(saved_fsq), "type": "nonexistent"})
    with pytest.raises(KeyError) as err:
        ImageTokenizer.from_pretrained(saved_fsq)
    message = err.value.args[0]
    assert "known: " in message and "fsq" in message and "imported" in message
    assert str(saved_fsq / CONFIG_NAME) in message and "\n" not in message


@pytest.mark.parametrize("name, kwargs, message", [
    ("vq", dict(codebook_size="64"), "codebook_size must be an integer, got '64'"),
    ("vq", dict(cosine="yes"), "cosine must be true or false"),
    ("vq", dict(decay=float("nan")), "decay must be a finite number"),
    ("lfq", dict(entropy_loss_weight="0.1"), "entropy_loss_weight must be a finite number"),
    ("fsq", dict(latent_channels=None), "latent_channels must be an integer, got None"),
    ("fsq", dict(norm_num_groups=0), "norm_num_groups \\(0\\) must be >= 1"),
])
def test_constructor_arguments_of_the_wrong_type_name_the_argument(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_tokenizer(name, **kwargs)


def test_integral_numbers_are_normalised_in_the_config():
    tok = make_tokenizer("fsq", levels=(5.0, 5, 5), seed=2.0)
    assert tok.config["levels"] == [5, 5, 5] and type(tok.config["seed"]) is int


def test_unknown_type_names_the_module_that_saved_it(saved_fsq):
    _write_meta(saved_fsq, {**_meta(saved_fsq), "type": "nonexistent", "module": "my_pkg.toks"})
    with pytest.raises(KeyError) as err:
        ImageTokenizer.from_pretrained(saved_fsq)
    assert "my_pkg.toks" in err.value.args[0] and str(saved_fsq) in err.value.args[0]


def test_a_tokenizer_without_weights_works_saves_and_loads(tmp_path, monkeypatch):
    """A tokenizer need not learn anything (pixel binning): device and dtype come from its buffers,
    or are the CPU and float32 when it holds no tensor at all."""
    import torch.nn.functional as F

    from unigen.tokenizers.base import IMAGE_TOKENIZERS, ImageTokenizer, register_tokenizer

    monkeypatch.setattr(IMAGE_TOKENIZERS, "_items", dict(IMAGE_TOKENIZERS._items))  # registered for this test only

    @register_tokenizer("test_pixel_bins")
    class PixelBins(ImageTokenizer):
        def __init__(self, bins: int = 4) -> None:
            super().__init__()
            self.bins = bins
            self.config = {"bins": bins}

        codebook_size = property(lambda self: self.bins ** 3)
        downsample_factor = property(lambda self: 4)

        def encode_codes(self, images):
            q = (F.avg_pool2d(images, 4).clamp(0, 1) * self.bins).long().clamp_max(self.bins - 1)
            return (q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2]

        def decode_codes(self, codes):
            b = self.bins
            rgb = (torch.stack([codes // (b * b), codes // b % b, codes % b], 1).float() + 0.5) / b
            return F.interpolate(rgb, scale_factor=4, mode="nearest")

        def forward(self, images):
            raise NotImplementedError

    tok = PixelBins()
    assert (tok.device, tok.dtype) == (torch.device("cpu"), torch.float32)
    image = torch.rand(2, 3, 8, 8)
    codes = tok.encode(image)
    assert codes.shape == (2, 2, 2) and tok.decode(codes).shape == (2, 3, 8, 8)
    tok.save_pretrained(tmp_path / "bins")
    assert torch.equal(ImageTokenizer.from_pretrained(tmp_path / "bins").encode(image), codes)
    tok.register_buffer("palette", torch.zeros(3, dtype=torch.float64))
    assert tok.dtype == torch.float64
