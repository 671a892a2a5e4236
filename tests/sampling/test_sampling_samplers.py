"""Contract tests every registered sampler must pass, plus per-sampler behaviour."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from sampling_testkit import MASK, SEQ, DummyNet, generators, make_batch

from unigen.sampling import (
    SAMPLERS,
    AncestralSampler,
    ConfidentSampler,
    HaltonSampler,
    MaskGITSampler,
    RemaskSampler,
    Sampler,
    SemiARSampler,
    build_sampler,
    decode,
)
from unigen.sampling.rng import gumbel_rows

FACTORIES: dict[str, Callable[[], Sampler]] = {
    "maskgit": lambda: MaskGITSampler(mask_id=MASK),
    "maskgit_margin_linear": lambda: MaskGITSampler(schedule="linear", confidence="margin", mask_id=MASK),
    "ancestral": lambda: AncestralSampler(mask_id=MASK),
    "halton": lambda: HaltonSampler(mask_id=MASK),
    "halton_cosine_grid": lambda: HaltonSampler(schedule="cosine", grid=(4, 6), mask_id=MASK),
    "confident": lambda: ConfidentSampler(threshold=0.6, temperature=1.0, mask_id=MASK),
    "confident_entropy": lambda: ConfidentSampler(threshold=0.3, confidence="entropy", temperature=1.0, mask_id=MASK),
    "confident_scheduled": lambda: ConfidentSampler(
        threshold=0.5, rule="error_budget", temperature=1.0, choice_temperature=4.5, schedule="cosine", mask_id=MASK
    ),
    "remask_revise": lambda: RemaskSampler(revise_threshold=0.4, max_revise_fraction=0.3, mask_id=MASK),
    "semi_ar_maskgit": lambda: SemiARSampler(block_length=5, steps_per_block=3, mask_id=MASK),
    "semi_ar_confident": lambda: SemiARSampler(
        block_length=6, inner="confident", inner_kwargs={"threshold": 0.6, "temperature": 1.0}, mask_id=MASK
    ),
}
NUM_STEPS = {"semi_ar_maskgit": 15, "semi_ar_confident": 30}


def run(name: str, batch_size: int = 4, seeds: list[int] | None = None, net: DummyNet | None = None, **kwargs):
    tokens, is_masked = make_batch(batch_size)
    gens = generators(seeds if seeds is not None else list(range(100, 100 + batch_size)))
    sampler = FACTORIES[name]()
    result = decode(net or DummyNet(), tokens, is_masked, sampler, num_steps=NUM_STEPS.get(name, 8), generator=gens,
                    **kwargs)
    return tokens, is_masked, result


def test_every_registered_sampler_is_covered():
    covered = {type(f()).__name__ for f in FACTORIES.values()}
    assert {SAMPLERS.get(n).__name__ for n in SAMPLERS.names()} <= covered


@pytest.mark.parametrize("name", FACTORIES)
def test_reveals_everything_and_keeps_given_tokens(name):
    tokens, is_masked, result = run(name)
    assert result.tokens.shape == tokens.shape
    assert not (result.tokens == MASK).any()
    assert torch.equal(result.tokens[~is_masked], tokens[~is_masked])
    assert 1 <= result.steps_taken <= NUM_STEPS.get(name, 8)


@pytest.mark.parametrize("name", FACTORIES)
def test_never_emits_illegal_tokens(name):
    forbidden = (0, 1, 2)
    _, is_masked, result = run(name, net=DummyNet(forbidden=forbidden))
    assert not torch.isin(result.tokens[is_masked], torch.tensor(forbidden)).any()


@pytest.mark.parametrize("name", FACTORIES)
def test_same_seed_same_result_different_seed_different(name):
    first = run(name, seeds=[1, 2, 3, 4])[2].tokens
    again = run(name, seeds=[1, 2, 3, 4])[2].tokens
    other = run(name, seeds=[5, 6, 7, 8])[2].tokens
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", FACTORIES)
def test_shared_generator_is_reproducible(name):
    tokens, is_masked = make_batch(3)
    outs = [
        decode(DummyNet(), tokens, is_masked, FACTORIES[name](), num_steps=NUM_STEPS.get(name, 8),
               generator=torch.Generator().manual_seed(0)).tokens
        for _ in range(2)
    ]
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", FACTORIES)
def test_batch_invariance_with_per_row_generators(name):
    alone = run(name, batch_size=1, seeds=[42])[2]
    batched = run(name, batch_size=4, seeds=[42, 7, 8, 9])[2]
    assert torch.equal(alone.tokens[0], batched.tokens[0])


def test_maskgit_follows_the_schedule_count_exactly_per_row():
    tokens, is_masked = make_batch(4)
    sampler = MaskGITSampler(schedule="cosine", mask_id=MASK)
    seen: list[list[int]] = []
    result = decode(DummyNet(), tokens, is_masked, sampler, num_steps=6, generator=generators([0, 1, 2, 3]),
                    callback=lambda i, out: seen.append(out.is_masked.sum(-1).tolist()))
    expected = sampler.target_counts(is_masked)[:, 1:].T.tolist()
    assert seen == expected
    assert result.steps_taken == 6 and result.num_model_calls == 6
    assert len({tuple(c) for c in zip(*expected)}) > 1  # rows really have different counts


def test_maskgit_greedy_without_noise_reveals_the_most_confident_first():
    tokens, is_masked = make_batch(1)
    net = DummyNet()
    sampler = MaskGITSampler(temperature=0.0, choice_temperature=0.0, mask_id=MASK)
    sampler.set_timesteps(4)
    logits = net(tokens)
    out = sampler.step(logits, tokens, is_masked, 0, editable=is_masked)
    probs = torch.softmax(logits.masked_fill(torch.arange(16) == MASK, float("-inf")), -1)
    conf = probs.amax(-1)[0]
    revealed = (is_masked & ~out.is_masked)[0]
    assert conf[revealed].min() >= conf[is_masked[0] & ~revealed].max()
    assert torch.equal(out.tokens[0][revealed], probs.argmax(-1)[0][revealed])


def test_maskgit_choice_noise_anneals_to_zero():
    sampler = MaskGITSampler(choice_temperature=2.0, mask_id=MASK)
    sampler.set_timesteps(4)
    conf = torch.rand(2, 5, generator=torch.Generator().manual_seed(0)) + 0.01
    noisy = sampler.ranking_score(conf, 0, torch.Generator().manual_seed(1))
    noise = gumbel_rows((2, 5), torch.Generator().manual_seed(1), device="cpu")
    assert torch.allclose(noisy, conf.log() + 2.0 * 0.75 * noise)  # tau = 2 * (1 - 1/4) after step 0
    assert torch.equal(sampler.ranking_score(conf, 3, None), conf.log())  # no noise (and no draw) at the end


def test_maskgit_needs_editable_and_mask_id():
    tokens, is_masked = make_batch(1)
    sampler = MaskGITSampler()
    sampler.set_timesteps(4)
    with pytest.raises(ValueError, match="mask_id is not set"):
        sampler.step(DummyNet()(tokens), tokens, is_masked, 0, torch.Generator(), editable=is_masked)
    sampler.mask_id = MASK
    with pytest.raises(ValueError, match="needs editable="):
        sampler.step(DummyNet()(tokens), tokens, is_masked, 0, torch.Generator())


def test_ancestral_reveal_probability_follows_mdlm():
    sampler = AncestralSampler(schedule="linear", mask_id=MASK)
    sampler.set_timesteps(4)
    # linear: from t to t - 1/4 reveals (t - s) / t
    assert [sampler.reveal_probability(i) for i in range(4)] == pytest.approx([0.25, 1 / 3, 0.5, 1.0])


def test_ancestral_reveal_rate_matches_on_average():
    tokens = torch.full((64, SEQ), MASK)
    is_masked = torch.ones(64, SEQ, dtype=torch.bool)
    sampler = AncestralSampler(schedule="linear", mask_id=MASK)
    sampler.set_timesteps(4)
    out = sampler.step(DummyNet()(tokens), tokens, is_masked, 0, torch.Generator().manual_seed(0))
    assert (~out.is_masked).float().mean().item() == pytest.approx(0.25, abs=0.03)


def test_confident_decoding_needs_fewer_calls_than_maskgit_on_a_confident_network():
    tokens, is_masked = make_batch(4)
    confident = decode(DummyNet(sharpness=30.0), tokens, is_masked, ConfidentSampler(threshold=0.9, mask_id=MASK),
                       num_steps=16)
    maskgit = decode(DummyNet(sharpness=30.0), tokens, is_masked, MaskGITSampler(mask_id=MASK), num_steps=16,
                     generator=generators([0, 1, 2, 3]))
    assert maskgit.num_model_calls == 16
    assert confident.num_model_calls < 16 and confident.steps_taken == confident.num_model_calls


def test_confident_decoding_falls_back_to_one_token_per_step():
    tokens, is_masked = make_batch(1)
    result = decode(DummyNet(sharpness=0.01), tokens, is_masked, ConfidentSampler(threshold=0.99, mask_id=MASK),
                    num_steps=100)
    assert result.steps_taken == int(is_masked.sum())


def test_confident_decoding_budget_is_a_hard_bound():
    tokens, is_masked = make_batch(2)
    result = decode(DummyNet(sharpness=0.01), tokens, is_masked, ConfidentSampler(threshold=0.99, mask_id=MASK),
                    num_steps=3)
    assert result.steps_taken == 3 and not (result.tokens == MASK).any()


def test_build_sampler_by_name():
    sampler = build_sampler("remask", revise_threshold=0.2, mask_id=3)
    assert isinstance(sampler, RemaskSampler) and sampler.mask_id == 3 and sampler.confidence == "margin"
    with pytest.raises(KeyError, match="unknown sampler 'nope'"):
        build_sampler("nope")
    with pytest.raises(KeyError, match="unknown confidence measure"):
        build_sampler("maskgit", confidence="nope")
