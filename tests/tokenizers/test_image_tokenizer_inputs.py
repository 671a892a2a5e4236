"""The inference API of the image tokenizers (``encode`` / ``decode`` and the PIL helpers): what
they refuse, with which one-line error, and that they have no side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from image_tokenizer_testkit import make_tokenizer, tiny_images, train_steps
from unigen.tokenizers import ImageTokenizer
from unigen.tokenizers.base import eval_mode, pil_to_tensor, tensor_to_pil


@pytest.fixture(scope="module")
def fsq():
    return make_tokenizer("fsq").eval()


# -- pixel values --------------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda x: x * 255, "observed range \\[0.*, 2[0-9][0-9].*\\].*divide by 255"),  # 0..255 floats
    (lambda x: x * 2 - 1, "observed range \\[-0.9.*\\].*\\(x \\+ 1\\) / 2"),  # [-1, 1] images
    (lambda x: x.index_fill(2, torch.tensor([3]), float("nan")), "non-finite values"),
    (lambda x: x.index_fill(3, torch.tensor([0]), float("inf")), "non-finite values"),
    (lambda x: x + 0.3, "must have values in \\[0, 1\\]"),  # beyond the resampling tolerance
])
def test_encode_refuses_values_outside_unit_range(fsq, make, message):
    with pytest.raises(ValueError, match=message):
        fsq.encode(make(tiny_images()))


def test_encode_accepts_mild_resampling_overshoot(fsq):
    # bicubic / Lanczos resizing rings a little past [0, 1]: still a [0, 1] image
    images = tiny_images() * 1.2 - 0.1
    assert fsq.encode(images).shape == (4, 8, 8)


def test_check_values_false_skips_only_the_value_check(fsq):
    images = tiny_images() * 255
    assert fsq.encode(images, check_values=False).shape == (4, 8, 8)
    # keyword-only: a positional flag must not be mistaken for it
    with pytest.raises(TypeError, match=r"encode\(\) takes 2 positional arguments but 3 were given"):
        fsq.encode(images, False)
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):  # shape checks stay on
        fsq.encode(torch.rand(1, 1, 16, 16), check_values=False)


# -- dtypes --------------------------------------------------------------------------------------
def test_encode_casts_float64_input_to_the_weights_dtype(fsq):
    images = tiny_images(seed=4)
    assert torch.equal(fsq.encode(images.double()), fsq.encode(images))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_encode_accepts_half_precision_input(fsq, dtype):
    codes = fsq.encode(tiny_images(seed=4).to(dtype))
    assert codes.shape == (4, 8, 8) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < fsq.codebook_size


@pytest.mark.parametrize("name", ["fsq", "lfq", "vq"])
def test_half_precision_weights_encode_and_decode(name):
    # FSQ's lookup makes float32 grid values whatever the weights' dtype: the decoder must cast
    overrides = {"kmeans_init": False} if name == "vq" else {}
    full = make_tokenizer(name, **overrides).eval()
    half = make_tokenizer(name, **overrides).eval().to(torch.bfloat16)
    images = tiny_images(seed=5)
    codes = half.encode(images)
    assert codes.shape == (4, 8, 8) and codes.dtype == torch.long
    decoded = half.decode(codes)
    assert decoded.dtype == torch.bfloat16 and decoded.shape == (4, 3, 16, 16)
    assert torch.allclose(decoded.float(), full.decode(codes), atol=0.05)


@pytest.mark.parametrize("codes, message", [
    (torch.full((1, 4, 4), 3.7), "integer dtype .* got torch.float32"),
    (torch.full((1, 4, 4), float("nan")), "integer dtype"),
    (torch.ones(1, 4, 4, dtype=torch.bool), "integer dtype .* got torch.bool"),
    ([[[1, 2], [3, 4]]], "integer torch tensor .* got list"),
    (np.ones((1, 4, 4), dtype=np.int64), "integer torch tensor .* got ndarray"),
])
def test_decode_refuses_non_integer_codes(fsq, codes, message):
    with pytest.raises(ValueError, match=message):
        fsq.decode(codes)


def test_decode_accepts_any_integer_dtype(fsq):
    codes = torch.randint(0, 125, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(fsq.decode(codes.to(torch.int32)), fsq.decode(codes))


# -- empty inputs --------------------------------------------------------------------------------
def test_empty_batch_round_trips(fsq):
    codes = fsq.encode(torch.rand(0, 3, 16, 12))
    assert codes.shape == (0, 8, 6) and codes.dtype == torch.long
    images = fsq.decode(codes)
    assert images.shape == (0, 3, 16, 12) and images.dtype == torch.float32


def test_zero_sized_images_and_code_grids_are_refused(fsq):
    with pytest.raises(ValueError, match="positive height and width, got 0x0"):
        fsq.encode(torch.rand(1, 3, 0, 0))
    with pytest.raises(ValueError, match="positive height and width, got 16x0"):
        fsq(torch.rand(1, 3, 16, 0))
    with pytest.raises(ValueError, match="positive grid height and width, got 0x4"):
        fsq.decode(torch.zeros(1, 0, 4, dtype=torch.long))


# -- no side effects -----------------------------------------------------------------------------
def _state(tok: ImageTokenizer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tok.state_dict().items()}


def test_encode_and_decode_in_train_mode_change_nothing():
    tok = make_tokenizer("vq")  # EMA codebook + dead-code replacement: train mode would update them
    train_steps(tok, tiny_images(), steps=1)
    tok.train()
    tok.decoder.eval()  # deliberately frozen submodule: must stay in eval
    flags = {name: m.training for name, m in tok.named_modules()}
    before = _state(tok)
    images = tiny_images(n=3, seed=9)
    codes = tok.encode(images)
    assert torch.equal(tok.encode(images), codes)
    tok.decode(codes)
    after = tok.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), \
        [k for k in before if not torch.equal(before[k], after[k])]
    assert {name: m.training for name, m in tok.named_modules()} == flags
    assert tok.training and tok.quantizer.training and not tok.decoder.training


def test_fresh_kmeans_vq_in_train_mode_does_not_initialise_on_encode():
    tok = make_tokenizer("vq").train()  # a fresh VQTokenizer is in train mode
    with pytest.raises(ValueError, match="not been initialised"):
        tok.encode(tiny_images())
    assert not bool(tok.quantizer.vq._codebook.initted)  # no k-means on inference data
    assert tok.training and tok.quantizer.vq.training  # flags restored after the error


def test_eval_mode_restores_each_submodule_flag():
    net = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Sequential(torch.nn.Dropout()))
    net.train()
    net[1].eval()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training and not net[1][0].training


# -- PIL helpers ---------------------------------------------------------------------------------
def test_pil_to_tensor_errors():
    with pytest.raises(ValueError, match="^no images given$"):
        pil_to_tensor([])
    with pytest.raises(ValueError, match="expected PIL images, got str"):
        pil_to_tensor(["a.png"])


@pytest.mark.parametrize("images, message", [
    (torch.rand(3, 8, 8), "float \\[B, 3, H, W\\] tensor, got \\(3, 8, 8\\)"),
    (torch.rand(1, 4, 8, 8), "got \\(1, 4, 8, 8\\)"),
    (np.zeros((1, 3, 8, 8), dtype=np.float32), "got ndarray"),
    (torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8), "float in \\[0, 1\\], got dtype "
                                                              "torch.uint8 .*divide by 255"),
    (torch.full((1, 3, 8, 8), float("nan")), "non-finite"),
])
def test_tensor_to_pil_errors(images, message):
    with pytest.raises(ValueError, match=message):
        tensor_to_pil(images)


def test_pil_round_trip():
    img = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3), mode="RGB")
    x = pil_to_tensor(img)
    assert x.shape == (1, 3, 4, 6) and x.dtype == torch.float32
    assert np.array_equal(np.asarray(tensor_to_pil(x)[0]), np.asarray(img))
    assert tensor_to_pil(torch.rand(0, 3, 4, 4)) == []


def test_docstring_names_the_decorator_that_sets_type_name():
    doc = ImageTokenizer.__doc__
    assert "@register_tokenizer(" in doc and "IMAGE_TOKENIZERS.register" not in doc
