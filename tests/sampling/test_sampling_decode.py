"""The decode loop: cached calls, classifier-free guidance, inpainting and input errors."""

from __future__ import annotations

import pytest
import torch
from sampling_testkit import MASK, SEQ, DummyNet, generators, make_batch

from unigen.sampling import (
    AncestralSampler,
    ClassifierFreeGuidance,
    ConfidentSampler,
    MaskGITSampler,
    decode,
    inpaint_tokens,
)
from unigen.sampling.guidance import step_progress


def prompt_batch(batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens with a condition prefix (first 6 positions) and a generated region after it."""
    tokens = torch.randint(0, MASK, (batch_size, SEQ), generator=torch.Generator().manual_seed(batch_size))
    cond_mask = torch.zeros_like(tokens, dtype=torch.bool)
    cond_mask[:, :6] = True
    is_masked = torch.zeros_like(cond_mask)
    is_masked[:, 8:] = True
    return tokens.masked_fill(is_masked, MASK), is_masked, cond_mask


def test_cached_ancestral_matches_uncached_with_fewer_calls():
    tokens, is_masked = make_batch(3)
    results = {}
    for cached in (False, True):
        net = DummyNet()
        results[cached] = decode(net, tokens, is_masked, AncestralSampler(mask_id=MASK), num_steps=64,
                                 generator=generators([3, 4, 5]), cache_unchanged=cached)
        assert results[cached].num_model_calls == net.calls  # counted honestly
    assert torch.equal(results[True].tokens, results[False].tokens)
    assert results[True].steps_taken == results[False].steps_taken
    assert results[True].num_model_calls < results[False].num_model_calls
    assert results[False].num_model_calls == results[False].steps_taken


def test_cache_never_skips_when_tokens_changed():
    tokens, is_masked = make_batch(2)
    result = decode(DummyNet(), tokens, is_masked, MaskGITSampler(mask_id=MASK), num_steps=8,
                    generator=generators([0, 1]), cache_unchanged=True)
    assert result.num_model_calls == 8  # MaskGIT reveals tokens every step


def guided(scale: float, net: DummyNet, **kwargs) -> tuple:
    tokens, is_masked, cond_mask = prompt_batch()
    result = decode(net, tokens, is_masked, MaskGITSampler(mask_id=MASK), num_steps=6,
                    generator=generators([0, 1, 2, 3]),
                    guidance=ClassifierFreeGuidance(scale, **kwargs), cond_mask=cond_mask)
    return result, tokens, is_masked, cond_mask


def plain(model_fn, tokens, is_masked):
    return decode(model_fn, tokens, is_masked, MaskGITSampler(mask_id=MASK), num_steps=6,
                  generator=generators([0, 1, 2, 3]))


def test_guidance_scale_one_is_exactly_the_conditional_decode():
    net = DummyNet()
    result, tokens, is_masked, _ = guided(1.0, net)
    assert torch.equal(result.tokens, plain(DummyNet(), tokens, is_masked).tokens)
    assert net.rows == 4 * result.num_model_calls == result.num_model_rows


def test_guidance_scale_zero_is_exactly_the_unconditional_decode():
    result, tokens, is_masked, cond_mask = guided(0.0, DummyNet())
    net = DummyNet()
    unconditional = plain(lambda x: net(x.masked_fill(cond_mask, MASK)), tokens, is_masked)
    assert torch.equal(result.tokens, unconditional.tokens)
    assert not torch.equal(result.tokens, plain(DummyNet(), tokens, is_masked).tokens)


def test_guidance_runs_one_batched_forward_of_both_passes():
    net = DummyNet()
    result, tokens, is_masked, _ = guided(3.0, net)
    assert net.calls == result.num_model_calls == 6 and net.rows == result.num_model_rows == 6 * 8
    assert not torch.equal(result.tokens, plain(DummyNet(), tokens, is_masked).tokens)


def test_guidance_outside_its_interval_is_the_plain_pass_and_uses_fewer_rows():
    net = DummyNet()
    result, tokens, is_masked, _ = guided(3.0, net, interval=(0.95, 0.99))  # progress is 0, .2, ..., 1: never inside
    assert torch.equal(result.tokens, plain(DummyNet(), tokens, is_masked).tokens)
    assert net.rows == 6 * 4
    partial = DummyNet()
    guided(3.0, partial, interval=(0.0, 0.5))  # steps at progress 0, .2, .4 are guided
    assert partial.rows == 3 * 8 + 3 * 4


def test_guidance_combines_log_probabilities_and_keeps_illegal_tokens_illegal():
    cfg = ClassifierFreeGuidance(2.5)
    tokens = torch.tensor([[1, 2, 3]])
    batch = cfg.prepare(tokens, torch.tensor([[True, False, False]]), MASK, 0.0)
    assert batch.mode == "both" and batch.inputs.tolist() == [[1, 2, 3], [MASK, 2, 3]]
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    logits[:, :, 0] = float("-inf")
    out = cfg.combine(logits, batch)
    cond, uncond = logits.log_softmax(-1)
    assert torch.allclose(out[..., 1:], (uncond + 2.5 * (cond - uncond))[..., 1:])
    assert out[..., 0].eq(float("-inf")).all() and not out.isnan().any()


@pytest.mark.parametrize("scale", [0.3, 2.5, -0.5])
def test_guidance_makes_a_token_illegal_in_either_pass_illegal(scale):
    cfg = ClassifierFreeGuidance(scale)
    batch = cfg.prepare(torch.tensor([[1, 2]]), torch.tensor([[True, False]]), MASK, 0.0)
    logits = torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(1))
    logits[0, :, 1] = float("-inf")  # illegal in the conditional pass only
    logits[1, :, 2] = float("-inf")  # illegal in the unconditional pass only
    logits[:, :, 3] = float("-inf")  # illegal in both
    out = cfg.combine(logits, batch)
    assert out[..., 1:4].eq(float("-inf")).all()
    assert torch.isfinite(out[..., [0, 4, 5]]).all()


def test_guidance_scale_schedules():
    linear = ClassifierFreeGuidance(5.0, schedule="linear")
    assert [linear.scale_at(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 3.0, 5.0])
    cosine = ClassifierFreeGuidance(5.0, schedule="cosine", min_scale=0.0)
    assert [cosine.scale_at(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.0, 2.5, 5.0])
    assert ClassifierFreeGuidance(4.0, interval=(0.2, 0.4)).scale_at(0.5) == 1.0
    assert [step_progress(i, 6) for i in (0, 5)] == [0.0, 1.0] and step_progress(0, 1) == 0.0
    with pytest.raises(KeyError, match="unknown guidance scale schedule"):
        ClassifierFreeGuidance(2.0, schedule="nope")
    with pytest.raises(ValueError, match="interval"):
        ClassifierFreeGuidance(2.0, interval=(0.6, 0.2))
    with pytest.raises(ValueError, match="guidance scale must be a finite number \\(1: no"):
        ClassifierFreeGuidance(float("nan"))
    assert ClassifierFreeGuidance(-1.0).scale == -1.0  # anti-guidance stays open to research
    with pytest.raises(ValueError, match="guidance scale must be a finite number .* got 1e"):
        ClassifierFreeGuidance(1e308)  # beyond float32: once an overflow in the middle of a decode
    for not_a_number in (True, "2"):
        with pytest.raises(ValueError, match="guidance scale must be a number, got"):
            ClassifierFreeGuidance(not_a_number)
    with pytest.raises(ValueError, match="guidance min_scale must be"):
        ClassifierFreeGuidance(2.0, schedule="linear", min_scale=float("inf"))


def test_inpainting_keeps_everything_outside_the_region():
    image = torch.randint(0, MASK, (2, 6, 4), generator=torch.Generator().manual_seed(0)).flatten(1)  # a 6x4 grid
    region = torch.zeros(2, 6, 4, dtype=torch.bool)
    region[:, 1:4, 1:3] = True
    region = region.flatten(1)
    tokens, is_masked = inpaint_tokens(image, region, MASK)
    assert torch.equal(is_masked, region) and (tokens[region] == MASK).all()
    assert torch.equal(tokens[~region], image[~region])
    result = decode(DummyNet(), tokens, is_masked, MaskGITSampler(mask_id=MASK), num_steps=4,
                    generator=generators([0, 1]))
    assert torch.equal(result.tokens[~region], image[~region])
    assert not (result.tokens == MASK).any()
    with pytest.raises(ValueError, match="region_mask must be a bool tensor"):
        inpaint_tokens(image, region.long(), MASK)


def test_decode_input_errors():
    tokens, is_masked, cond_mask = prompt_batch(2)
    sampler = MaskGITSampler(mask_id=MASK)
    gens = generators([0, 1])
    with pytest.raises(ValueError, match="needs a generator"):
        decode(DummyNet(), tokens, is_masked, sampler, num_steps=4)
    with pytest.raises(ValueError, match="1 generators for a batch of 2"):
        decode(DummyNet(), tokens, is_masked, sampler, num_steps=4, generator=gens[:1])
    with pytest.raises(ValueError, match="needs cond_mask"):
        decode(DummyNet(), tokens, is_masked, sampler, num_steps=4, generator=gens,
               guidance=ClassifierFreeGuidance(2.0))
    with pytest.raises(ValueError, match="overlaps is_masked"):
        decode(DummyNet(), tokens, is_masked, sampler, num_steps=4, generator=gens, cond_mask=is_masked)
    with pytest.raises(ValueError, match="given"):
        given_mask = tokens.masked_fill(torch.arange(SEQ) == 0, MASK)
        decode(DummyNet(), given_mask, is_masked, sampler, num_steps=4, generator=gens)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        decode(DummyNet(), tokens, is_masked, sampler, num_steps=0, generator=gens)
    with pytest.raises(ValueError, match="mask_id is not set"):
        decode(DummyNet(), tokens, is_masked, MaskGITSampler(), num_steps=4, generator=gens)


def test_decode_rejects_a_sampler_that_touches_given_tokens():
    class Vandal(MaskGITSampler):
        def step(self, logits, tokens, is_masked, step_index, generator=None, editable=None):
            out = super().step(logits, tokens, is_masked, step_index, generator, editable)
            out.tokens[:, 0] = (out.tokens[:, 0] + 1) % MASK
            return out

    tokens, is_masked, _ = prompt_batch(2)
    with pytest.raises(RuntimeError, match="changed a given"):
        decode(DummyNet(), tokens, is_masked, Vandal(mask_id=MASK), num_steps=4, generator=generators([0, 1]))


def test_decode_with_nothing_masked_calls_nothing():
    tokens = torch.randint(0, MASK, (2, SEQ), generator=torch.Generator().manual_seed(0))
    net = DummyNet()
    result = decode(net, tokens, torch.zeros_like(tokens, dtype=torch.bool), MaskGITSampler(mask_id=MASK), num_steps=4)
    assert result.num_model_calls == 0 == net.calls and torch.equal(result.tokens, tokens)


def leftmost_confident_net(tokens: torch.Tensor) -> torch.Tensor:
    """Sure of token 0 at each row's leftmost masked position and undecided everywhere else, so
    confident decoding reveals exactly one position per row and step: a row with ``m`` masked
    positions finishes after ``m`` calls."""
    logits = torch.zeros(*tokens.shape, 16)
    masked = tokens == MASK
    rows = masked.any(dim=1).nonzero().squeeze(-1)
    logits[rows, masked[rows].float().argmax(dim=1), 0] = 50.0
    return logits


@pytest.mark.parametrize("budget, expected", [(8, [1, 3, 5, 0]), (4, [1, 3, 4, 0])])
def test_calls_per_row_counts_calls_until_each_row_is_done(budget, expected):
    tokens = torch.zeros(4, SEQ, dtype=torch.long)
    is_masked = torch.zeros_like(tokens, dtype=torch.bool)
    for row, count in enumerate([1, 3, 5, 0]):
        is_masked[row, 10:10 + count] = True
    result = decode(leftmost_confident_net, tokens, is_masked, ConfidentSampler(mask_id=MASK),
                    num_steps=budget)
    # the last step of the budget reveals everything left
    assert result.calls_per_row.tolist() == expected and result.calls_per_row.dtype == torch.long
    assert result.num_model_calls == max(expected) == result.steps_taken


def test_calls_per_row_is_every_call_for_fixed_schedules_and_guidance():
    result, *_ = guided(3.0, DummyNet())
    assert result.calls_per_row.tolist() == [6] * 4  # one call per step, whatever the 2B rows


@pytest.mark.parametrize("make, cached, guidance", [
    (lambda: ConfidentSampler(threshold=0.5, temperature=1.0, mask_id=MASK), False, None),
    (lambda: ConfidentSampler(threshold=0.5, temperature=1.0, mask_id=MASK), True, 3.0),
    (lambda: AncestralSampler(mask_id=MASK), True, None),  # MDLM cache: skipped calls are free
    (lambda: AncestralSampler(mask_id=MASK), True, 2.0),
])
def test_calls_per_row_is_what_the_row_costs_decoded_alone(make, cached, guidance):
    tokens, is_masked = make_batch(4)
    cond_mask = ~is_masked & (torch.arange(SEQ) < 6) if guidance else None
    cfg = ClassifierFreeGuidance(guidance) if guidance else None
    seeds = [11, 12, 13, 14]
    kwargs = dict(num_steps=24, cache_unchanged=cached, guidance=cfg)
    batch = decode(DummyNet(sharpness=6.0), tokens, is_masked, make(), generator=generators(seeds),
                   cond_mask=cond_mask, **kwargs)
    alone = [decode(DummyNet(sharpness=6.0), tokens[b:b + 1], is_masked[b:b + 1], make(),
                    generator=generators(seeds[b:b + 1]),
                    cond_mask=None if cond_mask is None else cond_mask[b:b + 1], **kwargs)
             for b in range(4)]
    assert batch.calls_per_row.tolist() == [r.num_model_calls for r in alone]
    assert int(batch.calls_per_row.max()) <= batch.num_model_calls
    assert len(set(batch.calls_per_row.tolist())) > 1  # rows really finish at different calls
