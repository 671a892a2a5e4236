import pytest
import torch

from unigen.diffusion.vocab import SequenceLayout, VocabLayout
from unigen.modules.heads import HEADS
from unigen.modules.transformer import UnifiedTransformer
from unigen.tokenizers.text import SPECIAL_TOKENS

SPECIALS = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
VOCAB = VocabLayout(40, 27, SPECIALS)
SEQ = SequenceLayout(6, (3, 3))


def make(position="learned", head="shared", seed=0):
    torch.manual_seed(seed)
    return UnifiedTransformer(VOCAB, SEQ, dim=32, depth=2, heads=4, position=position, head=head).eval()


def prefix_mask(b):
    prefix = torch.zeros(b, SEQ.length, dtype=torch.bool)
    prefix[:, SEQ.image] = True
    prefix[:, [0, 1, SEQ.soi_pos, SEQ.image.stop]] = True
    return prefix


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("head", HEADS.names())
def test_logits_shape_and_modality_restriction(position, head):
    net = make(position, head)
    tokens = torch.randint(0, VOCAB.total_size, (2, SEQ.length))
    logits = net(tokens)
    assert logits.shape == (2, SEQ.length, VOCAB.total_size)
    assert torch.isinf(logits[:, SEQ.image, :40]).all() and torch.isfinite(logits[:, SEQ.image, 40:]).all()
    assert torch.isinf(logits[:, SEQ.text, 40:]).all()
    assert torch.isinf(logits[:, SEQ.text, SPECIALS["<mask>"]]).all()


@pytest.mark.parametrize("head", HEADS.names())
@pytest.mark.parametrize("lora", [False, True])
def test_vocab_limit_scores_the_first_ids_exactly(head, lora):
    net = make("rope", head)
    if lora:
        from unigen.modules.lora import LoRAConfig, apply_lora

        apply_lora(net, LoRAConfig(rank=2, targets=["head"]))
    tokens = torch.randint(0, VOCAB.total_size, (2, SEQ.length))
    positions = torch.arange(SEQ.text.start, SEQ.text.stop)
    full = net(tokens, positions=positions)
    limited = net(tokens, positions=positions, vocab_limit=VOCAB.text_size)
    assert limited.shape == (2, len(positions), VOCAB.text_size)
    assert torch.allclose(limited, full[..., : VOCAB.text_size], atol=1e-6, rtol=0)
    assert torch.isinf(full[..., VOCAB.text_size:]).all()  # nothing legal was cut off


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_prefix_positions_ignore_the_rest(position):
    net = make(position)
    prefix = prefix_mask(2)
    a = torch.randint(0, VOCAB.total_size, (2, SEQ.length))
    b = a.clone()
    b[:, SEQ.text] = torch.randint(0, 40, (2, SEQ.max_text_len))
    ha, hb = net.hidden_states(a, prefix), net.hidden_states(b, prefix)
    assert torch.allclose(ha[prefix], hb[prefix], atol=1e-6)
    assert not torch.allclose(ha[~prefix], hb[~prefix], atol=1e-3)
    full_a = net.hidden_states(a)  # without prefix attention the image sees the text
    assert not torch.allclose(full_a[prefix], ha[prefix], atol=1e-4)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_prefix_cache_matches_full_forward(position):
    net = make(position)
    prefix = prefix_mask(3)
    tokens = torch.randint(0, VOCAB.total_size, (3, SEQ.length))
    full = net(tokens, prefix)
    cache = net.prefill(tokens, prefix)
    cached = net.forward_cached(tokens, cache)
    rest = ~prefix
    finite = torch.isfinite(full[rest])
    assert torch.equal(finite, torch.isfinite(cached[rest]))
    assert torch.allclose(full[rest][finite], cached[rest][finite], atol=1e-5)


def test_prefix_cache_needs_one_pattern_per_batch():
    net = make()
    prefix = prefix_mask(2)
    prefix[1, 3] = True
    with pytest.raises(ValueError, match="same prefix"):
        net.prefill(torch.zeros(2, SEQ.length, dtype=torch.long), prefix)


def test_same_seed_same_model_and_outputs():
    tokens = torch.randint(0, VOCAB.total_size, (2, SEQ.length), generator=torch.Generator().manual_seed(0))
    assert torch.equal(make(seed=3)(tokens), make(seed=3)(tokens))
    assert not torch.equal(make(seed=3)(tokens), make(seed=4)(tokens))


def test_config_round_trip_and_length_check():
    net = make("rope", "separate")
    clone = UnifiedTransformer.from_config(net.config)
    clone.load_state_dict(net.state_dict())
    tokens = torch.randint(0, VOCAB.total_size, (1, SEQ.length))
    assert torch.equal(net(tokens), clone.eval()(tokens))
    with pytest.raises(ValueError, match="length"):
        net(tokens[:, :-1])


def test_a_bf16_cast_keeps_the_rotary_frequencies_float32():
    from unigen.modules.position import MultimodalRotary

    net = make("rope", "shared")
    rotaries = [m for m in net.modules() if isinstance(m, MultimodalRotary)]
    before = [m.inv_freq.clone() for m in rotaries]
    net.to(torch.bfloat16)
    assert rotaries and all(torch.equal(m.inv_freq, b) and m.inv_freq.dtype == torch.float32
                            for m, b in zip(rotaries, before))
    assert next(net.parameters()).dtype == torch.bfloat16
