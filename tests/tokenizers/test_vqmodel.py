"""diffusers VQModel directories as unigen tokenizers, and export of trained unigen tokenizers."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import VQModel

from image_tokenizer_testkit import make_tokenizer, tiny_images, train_steps
from unigen.tokenizers import DiffusersVQTokenizer, ImageTokenizer, export_to_diffusers
from unigen.tokenizers.vqmodel import DIFFUSERS_CONFIG_NAME, DIFFUSERS_WEIGHTS_NAME


@pytest.fixture
def vqmodel_dir(tmp_path):
    torch.manual_seed(0)
    model = VQModel(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4,
                    num_vq_embeddings=32, vq_embed_dim=3, layers_per_block=1).eval()
    with torch.no_grad():  # a spread-out codebook, so images use many codes
        model.quantize.embedding.weight.normal_(0.0, 0.5)
    model.save_pretrained(tmp_path / "vqmodel")
    return model, tmp_path / "vqmodel"


def test_loads_a_vqmodel_directory_and_matches_it_exactly(vqmodel_dir):
    model, path = vqmodel_dir
    tok = DiffusersVQTokenizer.from_diffusers(path)
    assert tok.codebook_size == 32 and tok.downsample_factor == 2
    images = tiny_images(n=2, size=16, seed=1)
    codes = tok.encode(images)
    assert codes.shape == (2, 8, 8) and codes.unique().numel() > 3
    with torch.no_grad():
        latents = model.encode(images * 2 - 1).latents
        _, _, (_, _, indices) = model.quantize(latents)
        assert torch.equal(codes, indices.reshape(2, 8, 8))
        quant = model.quantize.get_codebook_entry(codes.reshape(-1), (2, 8, 8, 3))
        own = model.decode(quant, force_not_quantize=True).sample
        assert torch.equal(tok.decode(codes), ((own + 1) / 2).clamp(0, 1))
        # the full VQModel forward re-quantizes with a straight-through sum: equal up to rounding
        torch.testing.assert_close(tok(images).reconstruction, (model(images * 2 - 1).sample + 1) / 2)


def test_unigen_round_trip_of_a_wrapped_vqmodel(vqmodel_dir, tmp_path):
    tok = DiffusersVQTokenizer.from_diffusers(vqmodel_dir[1])
    tok.save_pretrained(tmp_path / "unigen")
    loaded = ImageTokenizer.from_pretrained(tmp_path / "unigen")
    images = tiny_images(n=2, size=16)
    assert torch.equal(loaded.encode(images), tok.encode(images))
    assert torch.equal(loaded.decode(tok.encode(images)), tok.decode(tok.encode(images)))


def test_vqmodel_loading_errors(vqmodel_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="VQModel directory not found"):
        DiffusersVQTokenizer.from_diffusers(tmp_path / "missing")
    (vqmodel_dir[1] / DIFFUSERS_WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=DIFFUSERS_WEIGHTS_NAME):
        DiffusersVQTokenizer.from_diffusers(vqmodel_dir[1])


@pytest.mark.parametrize("name", ["vq", "vq_plain", "lfq"])
def test_export_to_diffusers_reproduces_codes_and_decodes(name, tmp_path):
    tok = make_tokenizer(name)
    train_steps(tok, tiny_images(), steps=2)
    tok.eval()
    export_to_diffusers(tok, tmp_path / "exported")
    plain = VQModel.from_pretrained(tmp_path / "exported")  # loadable by diffusers itself
    assert plain.config.num_vq_embeddings == tok.codebook_size
    exported = DiffusersVQTokenizer.from_diffusers(tmp_path / "exported")
    images = tiny_images(n=3, size=16, seed=7)
    codes = tok.encode(images)
    assert torch.equal(exported.encode(images), codes)
    torch.testing.assert_close(exported.decode(codes), tok.decode(codes), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_an_untrained_kmeans_codebook_does_not_export(mode, tmp_path):
    tok = getattr(make_tokenizer("vq"), mode)()  # k-means runs on the first training batch
    with pytest.raises(ValueError, match="kmeans_init and has not been initialised"):
        export_to_diffusers(tok, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_fsq_does_not_export():
    with pytest.raises(ValueError, match="cannot be exported as a diffusers VQModel"):
        export_to_diffusers(make_tokenizer("fsq"), "/nonexistent/never-written")


def _edit_config(path, **changes) -> None:
    config_file = path / DIFFUSERS_CONFIG_NAME
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **changes}))


@pytest.mark.parametrize("changes, tensor", [
    (dict(num_vq_embeddings=64), "quantize.embedding.weight \\(32, 3\\) vs \\(64, 3\\)"),
    (dict(block_out_channels=[8, 32]), "decoder.conv_in.bias \\(16,\\) vs \\(32,\\)"),
])
def test_vqmodel_config_not_matching_the_weights_is_one_line(vqmodel_dir, changes, tensor):
    path = vqmodel_dir[1]
    _edit_config(path, **changes)
    with pytest.raises(ValueError, match=f"{DIFFUSERS_WEIGHTS_NAME} does not match the config: "
                                         f"shapes .* differ for \\[.*{tensor}") as err:
        DiffusersVQTokenizer.from_diffusers(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_vqmodel_config_errors_name_the_config_file(vqmodel_dir):
    path = vqmodel_dir[1]
    _edit_config(path, down_block_types=["Bogus", "DownEncoderBlock2D"])
    with pytest.raises(ValueError, match=f"bad diffusers VQModel config in "
                                         f".*{DIFFUSERS_CONFIG_NAME}: Bogus does not exist"):
        DiffusersVQTokenizer.from_diffusers(path)
    (path / DIFFUSERS_CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="config file .* must hold a JSON object, got a JSON array"):
        DiffusersVQTokenizer.from_diffusers(path)


def test_from_pretrained_on_a_vqmodel_directory_points_to_from_diffusers(vqmodel_dir):
    with pytest.raises(ValueError, match="is a diffusers VQModel config.*"
                                         "DiffusersVQTokenizer.from_diffusers\\("):
        ImageTokenizer.from_pretrained(vqmodel_dir[1])
