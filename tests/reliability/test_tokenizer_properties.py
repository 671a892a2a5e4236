"""Property-based checks of the image-tokenizer interface (hypothesis): for any batch size and any
image size divisible by the downsample factor, codes and images have the promised shapes, dtypes
and ranges; any other size is one clear error.  (The text and metadata parsers have theirs in
tests/tokenizers/test_text.py and tests/data/test_imagefolder.py.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unigen.tokenizers import FSQTokenizer, LFQTokenizer, VQTokenizer

# two levels: downsample factor 2; plain VQ (k-means init refuses to encode before training)
TINY = dict(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
            mid_block_attention=False)
TOKENIZERS = {
    "fsq": lambda: FSQTokenizer(levels=(3, 3), seed=0, **TINY),
    "vq": lambda: VQTokenizer(codebook_size=32, codebook_dim=4, cosine=False, ema_update=False,
                              kmeans_init=False, dead_code_threshold=0, seed=0, **TINY),
    "lfq": lambda: LFQTokenizer(codebook_size=16, seed=0, **TINY),
}
PROPERTY = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]().eval()


@st.composite
def image_batches(draw, factor: int):
    b = draw(st.integers(1, 3))
    h, w = (factor * draw(st.integers(1, 6)) for _ in range(2))
    seed = draw(st.integers(0, 2**31 - 1))
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@PROPERTY
@given(data=st.data())
def test_encode_decode_shapes_for_any_divisible_size(tokenizer, data):
    f, k = tokenizer.downsample_factor, tokenizer.codebook_size
    images = data.draw(image_batches(f))
    b, _, h, w = images.shape
    codes = tokenizer.encode(images)
    assert codes.shape == (b, h // f, w // f) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < k
    out = tokenizer.decode(codes)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # a batch is the concatenation of its samples
    assert torch.equal(tokenizer.encode(images[-1:]), codes[-1:])


@PROPERTY
@given(data=st.data())
def test_any_valid_codes_decode(tokenizer, data):
    b, h, w = (data.draw(st.integers(1, n)) for n in (3, 5, 5))
    codes = torch.tensor(data.draw(st.lists(st.integers(0, tokenizer.codebook_size - 1),
                                            min_size=b * h * w, max_size=b * h * w))).view(b, h, w)
    f = tokenizer.downsample_factor
    assert tokenizer.decode(codes).shape == (b, 3, h * f, w * f)


@PROPERTY
@given(data=st.data())
def test_sizes_not_divisible_by_the_factor_are_one_clear_error(tokenizer, data):
    f = tokenizer.downsample_factor
    h = data.draw(st.integers(1, 13).filter(lambda n: n % f))
    w = f * data.draw(st.integers(1, 6))
    h, w = data.draw(st.permutations([h, w]))
    with pytest.raises(ValueError, match=f"not divisible by the downsample factor {f}") as err:
        tokenizer.encode(torch.rand(1, 3, h, w))
    assert "\n" not in str(err.value)


@PROPERTY
@given(code=st.one_of(st.integers(-50, -1), st.integers(16, 200)))
def test_out_of_range_codes_are_refused(tokenizer, code):
    codes = torch.zeros(1, 2, 2, dtype=torch.long)
    codes[0, 1, 1] = code if code < 0 else tokenizer.codebook_size + code - 16
    with pytest.raises(ValueError, match=f"codes must lie in \\[0, {tokenizer.codebook_size}\\)"):
        tokenizer.decode(codes)
