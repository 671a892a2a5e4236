"""The FLOP and MFU formulas: exact known values, and exact agreement with torch's FLOP counter on
real forward, training and decoding passes."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops import (
    TransformerShape, ar_decode_flops, datasheet_peak, forward_flops, masked_decode_flops, mfu,
    training_flops,
)
from benchmarks.train_throughput import HeadPositions
from unigen.diffusion.vocab import SequenceLayout, VocabLayout
from unigen.modules.transformer import UnifiedTransformer
from unigen.pipeline import PrefixCachedModel
from unigen.sampling import ClassifierFreeGuidance, build_sampler, decode, make_generators
from unigen.sampling.autoregressive import generate_image_tokens
from unigen.tokenizers.text import SPECIAL_TOKENS

SPECIALS = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
VOCAB = VocabLayout(40, 27, SPECIALS)
SEQ = SequenceLayout(6, (3, 3))  # 19 positions: task, bos, 6 text, soi, 9 image, eoi


def make_net(seed=0):
    torch.manual_seed(seed)
    return UnifiedTransformer(VOCAB, SEQ, dim=32, depth=2, heads=4).eval()


def counted(fn):
    """FLOPs torch counts for ``fn`` with the math attention kernel (its matmuls are visible)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_shape_counts_the_networks_matmul_weights():
    net = make_net()
    shape = TransformerShape.of(net)
    assert shape == TransformerShape(dim=32, depth=2, mlp_hidden=128, seq_len=19, vocab_size=67)
    linear = sum(m.weight.numel() for m in net.blocks.modules() if isinstance(m, torch.nn.Linear))
    assert shape.block_params == linear == 2 * (4 * 32 * 32 + 3 * 32 * 128)
    assert shape.head_params == net.head.proj.weight.numel() == 32 * 67


def test_known_values():
    shape = TransformerShape(dim=32, depth=2, mlp_hidden=128, seq_len=19, vocab_size=67)
    # 2 sequences: 2*19*32768 matmul weights, 4*2*19*19*32 attention, 2*2144 head on 10 positions
    assert forward_flops(shape, 2, 10) == 2 * (2 * 19 * 32768 + 4 * 2 * 19 * 19 * 32) + 2 * 2144 * 10 == 2718080
    assert training_flops(shape, 2, 10) == 3 * 2718080
    assert forward_flops(shape, 1, 1, query_len=1, key_len=5) == 2 * 32768 + 4 * 2 * 5 * 32 + 2 * 2144
    assert mfu(2e12, 4.0, 1e12) == 0.5
    with pytest.raises(ValueError, match="positive"):
        mfu(1.0, 0.0, 1e12)
    assert datasheet_peak("NVIDIA H100 80GB HBM3") == 989.4e12 and datasheet_peak("cpu") is None


@pytest.mark.parametrize("prefix", [False, True])
def test_forward_and_training_flops_match_torchs_counter(prefix):
    net = make_net()
    tokens = torch.randint(0, VOCAB.total_size, (2, SEQ.length))
    mask = torch.zeros_like(tokens, dtype=torch.bool) if prefix else None
    rows = torch.tensor([0, 0, 1]), torch.tensor([4, 9, 12])
    shape = TransformerShape.of(net)
    forward = lambda: net.logits(net.hidden_states(tokens, mask)[rows], net.modality[rows[1]])  # noqa: E731
    assert counted(forward) == forward_flops(shape, 2, 3)
    assert counted(lambda: forward().logsumexp(-1).sum().backward()) == training_flops(shape, 2, 3)


def test_masked_training_step_flops_use_the_counted_head_positions(tokenizer_dirs):
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    module = UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=2, heads=4,
                           tasks={"t2i": 1, "caption": 1}, cond_dropout=0.0)
    module.configure_model()
    codes = torch.randint(0, module.space.vocab.image_size, (3, 8, 8))
    batch = {"codes": codes, "caption": ["a red circle", "two blue squares", "a green star"]}
    gen = torch.Generator().manual_seed(0)
    tb, _ = module.mixture.build(module.task_inputs(batch), module.space, gen)
    heads = HeadPositions(module.net)
    flops = counted(lambda: module.diffusion_loss(tb, gen)[0].backward())
    heads.close()
    assert heads.count > 0
    assert flops == training_flops(TransformerShape.of(module.net), 3, heads.count)


def image_targets(b):
    """``b`` random rows whose image segment is the target, and the prefix (everything else)."""
    tokens = torch.randint(VOCAB.text_size, VOCAB.total_size, (b, SEQ.length))
    target = torch.zeros_like(tokens, dtype=torch.bool)
    target[:, SEQ.image] = True
    return tokens, target, ~target[0]


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_masked_decode_flops_match_torchs_counter(cache, scale):
    net = make_net()
    b, mask_id = 3, SPECIALS["<mask>"]
    tokens, target, prefix = image_targets(b)
    cond = torch.zeros_like(target)
    cond[:, SEQ.text] = True
    model_fn = PrefixCachedModel(net, prefix) if cache else (lambda x: net(x, prefix.expand(x.shape[0], -1)))
    guidance = ClassifierFreeGuidance(scale) if scale != 1.0 else None
    result = {}

    def run():
        result["r"] = decode(model_fn, tokens, target, build_sampler("maskgit", mask_id=mask_id), num_steps=4,
                             guidance=guidance, cond_mask=cond if guidance else None,
                             generator=make_generators(range(b)))

    flops = counted(run)
    r = result["r"]
    assert r.num_model_calls == 4 and r.num_model_rows == 4 * b * (2 if guidance else 1)
    expected = masked_decode_flops(TransformerShape.of(net), int(prefix.sum()), r.num_model_rows // 4, 4, cache)
    assert flops == expected


def test_uncached_masked_decode_flops_count_logits_at_the_decoded_positions_only():
    """The pipeline's uncached decode asks for the image segment's logits only, as the benchmark
    counts them (``logit_positions``); counting logits everywhere overstated its FLOPs."""
    net = make_net()
    b, mask_id = 2, SPECIALS["<mask>"]
    tokens, target, prefix = image_targets(b)
    positions = target[0].nonzero().squeeze(-1)

    def model_fn(x):
        return net(x, prefix.expand(x.shape[0], -1), positions=positions)

    flops = counted(lambda: decode(model_fn, tokens, target, build_sampler("maskgit", mask_id=mask_id),
                                   num_steps=3, generator=make_generators(range(b)), positions=positions))
    shape = TransformerShape.of(net)
    assert flops == masked_decode_flops(shape, int(prefix.sum()), b, 3, False, len(positions))
    assert flops < masked_decode_flops(shape, int(prefix.sum()), b, 3, False)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_ar_decode_flops_match_torchs_counter(cache, scale):
    net = make_net()
    b = 2
    tokens = torch.randint(VOCAB.text_size, VOCAB.total_size, (b, SEQ.length))
    cond = torch.zeros_like(tokens, dtype=torch.bool)
    cond[:, SEQ.text] = True
    guidance = ClassifierFreeGuidance(scale) if scale != 1.0 else None
    flops = counted(lambda: generate_image_tokens(net, tokens, mask_id=SPECIALS["<mask>"], temperature=0.0,
                                                  guidance=guidance, cond_mask=cond, use_cache=cache))
    rows = b * (2 if guidance else 1)
    assert flops == ar_decode_flops(TransformerShape.of(net), SEQ.image.start, SEQ.num_image_tokens, rows, cache)
