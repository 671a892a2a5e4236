"""Behaviour of the VQ / FSQ / LFQ image tokenizers: shapes, ranges, consistency, learning."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from image_tokenizer_testkit import make_tokenizer, tiny_images, train_steps
from unigen.tokenizers import IMAGE_TOKENIZERS, FSQTokenizer, LFQTokenizer, VQTokenizer


def test_registered_under_their_recipe_names():
    assert IMAGE_TOKENIZERS.get("fsq") is FSQTokenizer
    assert IMAGE_TOKENIZERS.get("vq") is VQTokenizer
    assert IMAGE_TOKENIZERS.get("lfq") is LFQTokenizer


def test_codebook_sizes_and_downsample_factor():
    assert make_tokenizer("fsq", levels=(8, 5, 5, 5)).codebook_size == 1000
    assert make_tokenizer("fsq", levels=(8, 8, 8, 6, 5)).codebook_size == 15360
    assert make_tokenizer("lfq", codebook_size=256).codebook_size == 256
    assert make_tokenizer("vq", codebook_size=100).codebook_size == 100
    tok = make_tokenizer("fsq", block_out_channels=(8, 8, 16), norm_num_groups=4)
    assert tok.downsample_factor == 4
    assert tok.latent_grid(64) == (16, 16)


def test_encode_decode_shapes_dtypes_and_ranges(tokenizer_name):
    tok = make_tokenizer(tokenizer_name)
    train_steps(tok, tiny_images(), steps=1)  # k-means VQ initialises its codebook on training data
    tok.eval()
    images = tiny_images(n=3, size=32, seed=1)
    codes = tok.encode(images)
    assert codes.shape == (3, 16, 16) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < tok.codebook_size
    decoded = tok.decode(codes)
    assert decoded.shape == images.shape and decoded.dtype == torch.float32
    assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0


def test_decode_of_encode_is_the_forward_reconstruction(tokenizer_name):
    tok = make_tokenizer(tokenizer_name)
    train_steps(tok, tiny_images(), steps=2)
    tok.eval()
    images = tiny_images(seed=2)
    with torch.no_grad():
        out = tok(images)
        assert torch.equal(out.codes, tok.encode_codes(images).long())
        torch.testing.assert_close(tok.decode_codes(out.codes), out.reconstruction)


def test_codes_distinguish_images(tokenizer_name):
    tok = make_tokenizer(tokenizer_name)
    train_steps(tok, tiny_images(), steps=2)
    tok.eval()
    codes = tok.encode(tiny_images(n=2, seed=3))
    assert codes.unique().numel() > 1
    assert not torch.equal(codes[0], codes[1])


@pytest.mark.parametrize("name", ["fsq", "vq", "lfq"])
def test_tiny_overfit_reconstruction_loss_falls(name):
    tok = make_tokenizer(name)
    history = train_steps(tok, tiny_images(n=4), steps=40)
    assert min(history[-5:]) < 0.6 * history[0], history


def test_training_reports_weighted_quantizer_losses():
    images = tiny_images()
    assert set(make_tokenizer("vq").train()(images).losses) == {"commitment"}
    assert set(make_tokenizer("lfq").train()(images).losses) == {"entropy", "commitment"}
    assert make_tokenizer("fsq").train()(images).losses == {}
    lfq = make_tokenizer("lfq", commitment_loss_weight=0.0).train()
    assert set(lfq(images).losses) == {"entropy"}
    assert make_tokenizer("lfq").eval()(images).losses == {}


def test_lfq_entropy_loss_scales_with_its_weight():
    images = tiny_images()
    one = make_tokenizer("lfq", entropy_loss_weight=1.0).train()(images).losses["entropy"]
    tenth = make_tokenizer("lfq", entropy_loss_weight=0.1).train()(images).losses["entropy"]
    torch.testing.assert_close(tenth, 0.1 * one)


def test_gradient_reaches_the_encoder_through_the_quantizer(tokenizer_name):
    tok = make_tokenizer(tokenizer_name).train()
    out = tok(tiny_images())
    out.reconstruction.mean().backward()
    grad = tok.encoder.conv_in.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_seed_fixes_initial_weights_without_touching_global_rng():
    state = torch.random.get_rng_state()
    a, b = make_tokenizer("fsq", seed=3), make_tokenizer("fsq", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = make_tokenizer("fsq", seed=4)
    assert not torch.equal(a.encoder.conv_in.weight, c.encoder.conv_in.weight)


def test_config_records_constructor_arguments():
    tok = make_tokenizer("vq", codebook_size=32)
    rebuilt = VQTokenizer(**tok.config)
    assert rebuilt.config == tok.config
    assert tok.config["codebook_size"] == 32 and tok.config["block_out_channels"] == [8, 16]


@pytest.mark.parametrize("bad, message", [
    (torch.rand(2, 1, 16, 16), "3 \\(RGB\\) channels"),
    (torch.rand(2, 3, 17, 16), "not divisible by the downsample factor 2"),
    (torch.rand(3, 16, 16), "\\[B, 3, H, W\\]"),
    (torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8), "float"),
])
def test_bad_images_give_clear_errors(bad, message):
    tok = make_tokenizer("fsq").eval()
    with pytest.raises(ValueError, match=message):
        tok.encode(bad)
    with pytest.raises(ValueError, match=message):
        tok(bad)


def test_bad_codes_give_clear_errors():
    tok = make_tokenizer("fsq").eval()
    with pytest.raises(ValueError, match="codes must lie in \\[0, 125\\)"):
        tok.decode(torch.full((1, 4, 4), 125))
    with pytest.raises(ValueError, match="codes must be \\[B, h, w\\]"):
        tok.decode(torch.zeros(4, 4, dtype=torch.long))


@pytest.mark.parametrize("name, kwargs, message", [
    ("fsq", dict(levels=(2, 5)), "levels must be .* >= 3"),
    ("lfq", dict(codebook_size=100), "power of 2"),
    ("vq", dict(cosine=True, ema_update=False), "needs ema_update=True"),
    ("vq", dict(decay=1.0), "decay must lie in \\(0, 1\\)"),
    ("fsq", dict(block_out_channels=(6, 16)), "multiples of norm_num_groups=4"),
    ("fsq", dict(block_out_channels=()), "at least one block"),
])
def test_bad_configs_give_clear_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_tokenizer(name, **kwargs)


@pytest.mark.parametrize("beta", [0.25, 0.0])
def test_plain_vq_trains_with_vq_vaes_loss(beta):
    """``||sg(z) - e||^2 + beta ||z - sg(e)||^2`` (VQ-VAE eq. 3): the codebook at weight 1, the
    encoder at ``beta``; with ``beta = 0`` the codebook still learns."""
    from unigen.tokenizers.vq import VQQuantizer

    torch.manual_seed(0)
    q = VQQuantizer(16, 4, cosine=False, ema_update=False, decay=0.8, kmeans_init=False, kmeans_iters=1,
                    dead_code_threshold=0.0, commitment_weight=beta, rotation_trick=False).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    sum(out.losses.values()).backward()
    embed = q.vq._codebook.embed
    got_codebook = embed.grad.clone()
    got_z = torch.zeros_like(z) if z.grad is None else z.grad.clone()  # beta 0: nothing reaches z
    embed.grad = None
    e = embed[0][out.codes]  # [B, h, w, d]
    zl = z.detach().permute(0, 2, 3, 1)
    (F.mse_loss(e, zl) + beta * F.mse_loss(zl.requires_grad_(), e.detach())).backward()
    torch.testing.assert_close(got_codebook, embed.grad)
    torch.testing.assert_close(got_z, zl.grad.permute(0, 3, 1, 2))
    assert got_codebook.abs().sum() > 0


def test_vq_warns_when_its_dead_code_threshold_retires_codes_every_step():
    tok = make_tokenizer("vq").train()  # 64 codes, dead_code_threshold 2: needs > 128 vectors
    with pytest.warns(UserWarning, match="dead_code_threshold 2 with 64 codes needs more than 128 "
                                         "vectors a step, this batch has 16"):
        tok(tiny_images(n=1, size=8))  # 4x4 codes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(tiny_images(n=1, size=8))  # said once
        make_tokenizer("vq").train()(tiny_images(n=1, size=32))  # 256 vectors: enough


def test_kmeans_vq_refuses_to_encode_before_training():
    tok = make_tokenizer("vq").eval()
    with pytest.raises(ValueError, match="not been initialised"):
        tok.encode(tiny_images())


def test_plain_vq_learns_its_codebook_by_gradient():
    tok = make_tokenizer("vq_plain").train()
    before = tok.quantizer.vq.codebook.detach().clone()
    train_steps(tok, tiny_images(), steps=1)
    assert tok.quantizer.vq._codebook.embed.requires_grad
    assert not torch.equal(before, tok.quantizer.vq.codebook)


def test_fsq_codes_are_mixed_radix_of_the_rounded_channels():
    # FSQ's code is sum_i level_index_i * prod(levels[:i]); check lookup inverts it exactly
    tok = make_tokenizer("fsq", levels=(5, 3, 3))
    codes = torch.arange(45).reshape(1, 5, 9)
    latent = tok.quantizer.lookup(codes)
    assert latent.shape == (1, 3, 5, 9)
    digits = torch.stack([codes % 5, (codes // 5) % 3, codes // 15], dim=1)
    half = torch.tensor([2.0, 1.0, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(latent, (digits - half) / half)
    assert math.prod((5, 3, 3)) == tok.codebook_size
