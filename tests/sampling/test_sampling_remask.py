"""LaViDa-style remasking: margin/entropy ranking and bounded low-confidence revision."""

from __future__ import annotations

import pytest
import torch
from sampling_testkit import MASK, DummyNet, generators, make_batch

from unigen.sampling import MaskGITSampler, RemaskSampler, decode


def decode_tracking(sampler, num_steps=8, batch_size=4):
    tokens, is_masked = make_batch(batch_size)
    history = [is_masked.clone()]
    result = decode(DummyNet(), tokens, is_masked, sampler, num_steps=num_steps,
                    generator=generators(list(range(batch_size))),
                    callback=lambda i, out: history.append(out.is_masked.clone()))
    return tokens, is_masked, result, history


def revising(**kwargs) -> RemaskSampler:
    options = dict(revise_threshold=0.5, max_revise_fraction=0.25, temperature=2.0, confidence="prob", mask_id=MASK)
    return RemaskSampler(**{**options, **kwargs})


def test_revision_remasks_low_confidence_tokens_but_never_given_ones_and_terminates():
    tokens, is_masked, result, history = decode_tracking(revising())
    remasked = [(~before & after) for before, after in zip(history, history[1:])]
    assert sum(int(r.sum()) for r in remasked) > 0  # revision really happened
    for r in remasked:
        assert not (r & ~is_masked).any()  # only the generated region is ever revised
        assert (r.sum(-1) <= (is_masked.sum(-1) * 0.25).floor()).all()  # per-step cap
    assert result.steps_taken == 8 and not (result.tokens == MASK).any()
    assert torch.equal(result.tokens[~is_masked], tokens[~is_masked])
    assert not remasked[-1].any()  # the last step only reveals


def test_revision_keeps_the_schedule_counts():
    sampler = revising()
    tokens, is_masked, _, history = decode_tracking(sampler)
    counts = torch.stack([h.sum(-1) for h in history], dim=1)
    assert torch.equal(counts, sampler.target_counts(is_masked))


def test_revision_with_a_threshold_nothing_reaches_is_bounded_by_the_schedule():
    # Every revealed token is "unconfident": revision is capped by what the schedule leaves masked.
    sampler = revising(revise_threshold=2.0, max_revise_fraction=1.0)
    _, is_masked, result, history = decode_tracking(sampler, num_steps=5)
    assert result.steps_taken == 5 and not (result.tokens == MASK).any()
    targets = sampler.target_counts(is_masked)
    for i, (before, after) in enumerate(zip(history, history[1:])):
        assert ((~before & after).sum(-1) <= targets[:, i + 1]).all()


def test_without_revision_remask_is_maskgit_with_margin_ranking():
    a = decode_tracking(RemaskSampler(temperature=1.0, choice_temperature=0.0, mask_id=MASK))[2]
    b = decode_tracking(MaskGITSampler(temperature=1.0, choice_temperature=0.0, confidence="margin", mask_id=MASK))[2]
    assert torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("measure", ["margin", "entropy"])
def test_measures_change_the_ranking(measure):
    tokens, is_masked = make_batch(1)
    logits = DummyNet()(tokens)
    picked = {}
    for name in ("prob", measure):
        sampler = MaskGITSampler(temperature=0.0, choice_temperature=0.0, confidence=name, mask_id=MASK)
        sampler.set_timesteps(4)
        picked[name] = sampler.step(logits, tokens, is_masked, 0, editable=is_masked)
        assert picked[name].confidence is not None
    conf = picked[measure].confidence[0]
    revealed = (is_masked & ~picked[measure].is_masked)[0]
    assert conf[revealed].min() >= conf[is_masked[0] & ~revealed].max()


def test_invalid_revise_fraction():
    with pytest.raises(ValueError, match="max_revise_fraction"):
        RemaskSampler(max_revise_fraction=1.5)
