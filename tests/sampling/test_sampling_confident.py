"""Confident decoding's reveal rules (exact sets on hand-made confidences), its schedule floor and
its choice noise."""

from __future__ import annotations

import pytest
import torch
from sampling_testkit import MASK, DummyNet, generators, make_batch

from unigen.sampling import ConfidentSampler, decode
from unigen.sampling.reveal_rules import REVEAL_RULES
from unigen.sampling.selection import masked_counts

# One row; position 4 is not a candidate (already revealed) despite its top confidence.
CONF = torch.tensor([[0.95, 0.60, 0.99, 0.80, 1.00, 0.90]])
CANDIDATES = torch.tensor([[True, True, True, True, False, True]])


def revealed(rule: str, value: float) -> list[int]:
    out = REVEAL_RULES.get(rule)(CONF, CANDIDATES, value)
    assert not (out & ~CANDIDATES).any()
    return out[0].nonzero().flatten().tolist()


def test_threshold_rule_judges_each_position_alone():
    assert revealed("threshold", 0.9) == [0, 2, 5]
    assert revealed("threshold", 0.999) == []


def test_factor_rule_follows_fast_dllm():
    # sorted errors 0.01, 0.05, 0.10, 0.20, 0.40 -> (n + 1) * error = 0.02, 0.15, 0.40, 1.00, 2.40
    assert revealed("factor", 0.5) == [0, 2, 5]
    assert revealed("factor", 0.99) == [0, 2, 5]
    assert revealed("factor", 1.01) == [0, 2, 3, 5]
    assert revealed("factor", 0.01) == []


def test_error_budget_rule_bounds_the_summed_error():
    # cumulative errors 0.01, 0.06, 0.16, 0.36, 0.76
    assert revealed("error_budget", 0.2) == [0, 2, 5]
    assert revealed("error_budget", 0.36) == [0, 2, 3, 5]
    assert revealed("error_budget", 5.0) == [0, 1, 2, 3, 5]
    assert revealed("error_budget", 0.005) == []


def test_error_budget_reveals_few_of_many_individually_likely_positions():
    # 100 positions each 95 % "background": the threshold rule commits all of them in one step,
    # where the chance that all are background is 0.95 ** 100 < 1 %; a budget of 0.52 commits 10.
    conf = torch.full((1, 100), 0.95)
    candidates = torch.ones(1, 100, dtype=torch.bool)
    assert int(REVEAL_RULES.get("threshold")(conf, candidates, 0.9).sum()) == 100
    assert int(REVEAL_RULES.get("error_budget")(conf, candidates, 0.52).sum()) == 10


@pytest.mark.parametrize("rule", ["threshold", "factor", "error_budget"])
def test_confident_sampler_with_each_rule_reveals_at_least_one_and_never_a_given_token(rule):
    tokens, is_masked = make_batch(3)
    sampler = ConfidentSampler(threshold=0.5, rule=rule, temperature=1.0, mask_id=MASK)
    sampler.set_timesteps(50)
    logits = torch.randn(*tokens.shape, MASK + 1, generator=torch.Generator().manual_seed(0))
    out = sampler.step(logits, tokens, is_masked, 0, torch.Generator().manual_seed(1))
    newly = is_masked & ~out.is_masked
    assert (newly.sum(-1) >= 1).all()
    assert torch.equal(out.tokens[~is_masked], tokens[~is_masked])
    assert "rule" in repr(sampler) and rule in repr(sampler)


def test_unknown_rule_is_one_clear_error():
    with pytest.raises(KeyError, match="unknown reveal rule 'nope'; known: error_budget, factor, "
                                       "threshold") as err:
        ConfidentSampler(rule="nope")
    assert "\n" not in err.value.args[0]


def step_counts(sampler: ConfidentSampler, net: DummyNet, tokens, is_masked, num_steps: int, seeds=(0, 1, 2)):
    """Masked positions per row after each step, stepping by hand (no early stop)."""
    sampler.set_timesteps(num_steps)
    editable, counts = is_masked.clone(), [is_masked.sum(-1)]
    gens = generators(list(seeds))
    for i in range(num_steps):
        out = sampler.step(net(tokens), tokens, is_masked, i, gens, editable=editable)
        tokens, is_masked = out.tokens, out.is_masked
        counts.append(is_masked.sum(-1))
    return torch.stack(counts, -1), tokens


def test_scheduled_confident_decoding_is_maskgit_when_nothing_passes_the_rule():
    tokens, is_masked = make_batch(3)
    sampler = ConfidentSampler(threshold=0.999, schedule="cosine", mask_id=MASK)
    counts, _ = step_counts(sampler, DummyNet(sharpness=0.01), tokens, is_masked, 8)
    expected = masked_counts(sampler.schedule, torch.linspace(1, 0, 9, dtype=torch.float64), is_masked.sum(-1))
    assert torch.equal(counts, expected)


def test_scheduled_confident_decoding_skips_ahead_and_never_exceeds_its_budget():
    tokens, is_masked = make_batch(4)
    sure = DummyNet(sharpness=30.0)
    result = decode(sure, tokens, is_masked, ConfidentSampler(threshold=0.9, schedule="cosine", mask_id=MASK),
                    num_steps=16)
    assert result.num_model_calls < 16 and not (result.tokens == MASK).any()
    # every step reveals at least one position until none is left
    counts, _ = step_counts(ConfidentSampler(threshold=0.9, schedule="cosine", mask_id=MASK), sure, tokens,
                            is_masked, 16, seeds=(0, 1, 2, 3))
    revealed = counts[:, :-1] - counts[:, 1:]
    assert ((revealed >= 1) | (counts[:, :-1] == 0)).all() and (counts[:, -1] == 0).all()


def test_scheduled_confident_decoding_needs_editable():
    tokens, is_masked = make_batch(1)
    sampler = ConfidentSampler(schedule="cosine", mask_id=MASK)
    sampler.set_timesteps(4)
    with pytest.raises(ValueError, match="needs editable="):
        sampler.step(DummyNet()(tokens), tokens, is_masked, 0)


def test_choice_noise_changes_the_order_reproducibly():
    tokens, is_masked = make_batch(3)
    net = DummyNet(sharpness=1.0)

    def run(seeds):
        sampler = ConfidentSampler(threshold=0.99, choice_temperature=4.5, mask_id=MASK)
        return decode(net, tokens, is_masked, sampler, num_steps=24, generator=generators(seeds)).tokens

    assert torch.equal(run([5, 6, 7]), run([5, 6, 7]))
    assert not torch.equal(run([5, 6, 7]), run([8, 9, 10]))  # greedy tokens: only the order differs
    plain = ConfidentSampler(threshold=0.99, mask_id=MASK)
    assert torch.equal(decode(net, tokens, is_masked, plain, num_steps=24).tokens,
                       decode(net, tokens, is_masked, plain, num_steps=24).tokens)


def test_scheduled_confident_decoding_is_exactly_maskgit_when_nothing_passes():
    from unigen.sampling import MaskGITSampler

    tokens, is_masked = make_batch(4)
    net = DummyNet(sharpness=2.0)
    never = ConfidentSampler(threshold=2.0, temperature=1.0, choice_temperature=4.5, schedule="cosine", mask_id=MASK)
    ours = decode(net, tokens, is_masked, never, num_steps=8, generator=generators([1, 2, 3, 4]))
    theirs = decode(net, tokens, is_masked, MaskGITSampler(mask_id=MASK), num_steps=8,
                    generator=generators([1, 2, 3, 4]))
    assert torch.equal(ours.tokens, theirs.tokens) and ours.num_model_calls == theirs.num_model_calls == 8
