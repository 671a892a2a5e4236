"""The sampler contract at its edges: given positions' logits are never judged, the diffusers
``timesteps`` loop, the one ``num_steps`` check and the one construction path (``make_sampler``)."""

from __future__ import annotations

import pytest
import torch
from sampling_testkit import MASK, DummyNet, generators, make_batch

from unigen.sampling import (
    SAMPLERS, MaskGITSampler, Sampler, SemiARSampler, build_sampler, check_num_steps, decode,
    make_sampler,
)
from unigen.sampling.categorical import NO_LEGAL_TOKEN, sample_tokens

CONFIGS = [
    ("maskgit", {}),
    ("maskgit", {"temperature": 0, "choice_temperature": 0}),
    ("ancestral", {}),
    ("halton", {}),
    ("confident", {}),
    ("confident", {"temperature": 1.0, "schedule": "cosine", "choice_temperature": 4.5}),
    ("remask", {"revise_threshold": 0.5}),
    ("semi_ar", {"block_length": 4}),
]


class NoLegalTokenAtGiven:
    """A network whose logits are all -inf at the given positions (it never predicts them)."""

    def __init__(self, given: torch.Tensor) -> None:
        self.net, self.given = DummyNet(), given

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.net(tokens).clone()
        given = self.given.repeat(tokens.shape[0] // self.given.shape[0], 1)
        logits[given] = float("-inf")
        return logits


@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_given_positions_without_a_legal_token_are_not_an_error(name, kwargs):
    tokens, is_masked = make_batch(2)
    sampler = build_sampler(name, mask_id=MASK, **kwargs)
    result = decode(NoLegalTokenAtGiven(~is_masked), tokens, is_masked, sampler, num_steps=4,
                    generator=generators([0, 1]))
    assert torch.equal(result.tokens[~is_masked], tokens[~is_masked])
    assert not (result.tokens == MASK).any()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_sampled_position_without_a_legal_token_is_still_an_error(temperature):
    logits = torch.zeros(1, 3, 5)
    logits[0, 1] = float("-inf")
    where = torch.tensor([[True, False, True]])
    assert sample_tokens(logits, where, temperature, generators([0])).shape == (1, 3)
    with pytest.raises(ValueError, match="logits give no legal token"):
        sample_tokens(logits, torch.tensor([[True, True, False]]), temperature, generators([0]))
    assert "no legal token" in NO_LEGAL_TOKEN


@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_the_diffusers_timesteps_loop_is_decode(name, kwargs):
    tokens, is_masked = make_batch(3)
    net, num_steps = DummyNet(), 5
    want = decode(net, tokens, is_masked, build_sampler(name, mask_id=MASK, **kwargs),
                  num_steps=num_steps, generator=generators([0, 1, 2])).tokens
    sampler = build_sampler(name, mask_id=MASK, **kwargs)
    sampler.set_timesteps(num_steps)
    assert len(sampler.timesteps) == num_steps and len(sampler.time_grid) == num_steps + 1
    assert sampler.timesteps[0] == 1.0 and sampler.time_grid[-1] == 0.0
    gens, editable, x, masked = generators([0, 1, 2]), is_masked.clone(), tokens, is_masked
    for i, t in enumerate(sampler.timesteps):  # docs/samplers.md, "The contract"
        out = sampler.step(net(x), x, masked, i, generator=gens, editable=editable)
        x, masked = out.tokens, out.is_masked
        if sampler.done(masked):
            break
    assert torch.equal(x, want) and not masked.any()


def test_num_steps_is_checked_in_one_place():
    assert check_num_steps(8) == 8 and check_num_steps(8.0) == 8 and check_num_steps(torch.tensor(3)) == 3
    for bad in (0, -2, 8.5, float("nan"), "8"):
        with pytest.raises(ValueError, match="num_steps must be a positive integer"):
            check_num_steps(bad)
    for bad in (True, None):
        with pytest.raises(TypeError, match="num_steps must be a positive integer"):
            check_num_steps(bad)
    assert check_num_steps(1_000_000) == 1_000_000
    with pytest.raises(ValueError, match="num_steps must be at most 1,000,000 .* got 1000000000"):
        check_num_steps(10**9)  # its schedule alone once took 22 GB before anything was refused
    tokens, is_masked = make_batch(1)
    result = decode(DummyNet(), tokens, is_masked, MaskGITSampler(mask_id=MASK), num_steps=4.0,
                    generator=generators([0]))
    assert result.steps_taken == 4
    with pytest.raises(ValueError, match="got 4.5"):
        decode(DummyNet(), tokens, is_masked, MaskGITSampler(mask_id=MASK), num_steps=4.5,
               generator=generators([0]))


class NeedsEos(MaskGITSampler):
    """A plugin sampler whose constructor requires ``eos_id``."""

    needs_special_ids = ("eos_id",)

    def __init__(self, eos_id: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eos_id = eos_id


def test_make_sampler_fills_special_ids_refuses_mask_id_and_names_bad_options(monkeypatch):
    monkeypatch.setitem(SAMPLERS._items, "needs_eos", NeedsEos)
    ids = {"eos_id": 4, "pad_id": 0, "sep_id": 7}
    built = make_sampler("needs_eos", {}, mask_id=MASK, special_ids=ids)
    assert (built.mask_id, built.eos_id) == (MASK, 4)
    semi = make_sampler("semi_ar", {"pad_id": 9}, mask_id=MASK, special_ids=ids)
    assert (semi.eos_id, semi.pad_id) == (4, 9)
    with pytest.raises(ValueError, match="--sampler-arg: mask_id is set from the vocabulary"):
        make_sampler("maskgit", {"mask_id": 3}, mask_id=MASK, special_ids=ids, option="--sampler-arg")
    with pytest.raises(ValueError, match="--sampler-arg threshold='abc': sampler 'confident' cannot "
                                         "use this value \\(could not convert"):
        make_sampler("confident", {"threshold": "abc", "temperature": 0}, mask_id=MASK,
                     special_ids=ids, option="--sampler-arg")
    with pytest.raises(ValueError, match="--sampler-arg thresh=0.5: sampler 'confident' does not take "
                                         "this option"):
        make_sampler("confident", {"thresh": 0.5}, mask_id=MASK, special_ids=ids, option="--sampler-arg")
    with pytest.raises(KeyError, match="unknown sampler 'nope'"):
        make_sampler("nope", {}, mask_id=MASK, special_ids=ids)


def test_make_sampler_copies_a_sampler_object_and_fills_what_it_left_unset():
    given = SemiARSampler(block_length=4)
    built = make_sampler(given, mask_id=MASK, special_ids={"eos_id": 4, "pad_id": 0, "sep_id": 7})
    assert isinstance(built, Sampler) and built is not given
    assert (built.mask_id, built.eos_id, built.pad_id) == (MASK, 4, 0)
    assert (given.mask_id, given.eos_id, given.pad_id) == (None, None, None)
    kept = make_sampler(SemiARSampler(eos_id=5), mask_id=MASK, special_ids={"eos_id": 4, "pad_id": 0})
    assert (kept.eos_id, kept.pad_id) == (5, 0)


@pytest.mark.parametrize("sampler, option", [
    ("maskgit", "temperature"), ("maskgit", "choice_temperature"), ("ancestral", "temperature"),
    ("confident", "choice_temperature"), ("remask", "temperature"), ("halton", "temperature")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5])
def test_temperatures_must_be_finite_when_the_sampler_is_built(sampler, option, value):
    """A NaN temperature passed ``< 0`` and failed mid-decode, blaming the logits (and `unigen
    eval` had already removed the earlier run's results by then)."""
    with pytest.raises(ValueError, match=f"{option} must be a finite number >= 0, got {value!r}"):
        make_sampler(sampler, {option: value}, mask_id=MASK)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        sample_tokens(torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool), float("nan"),
                      torch.Generator().manual_seed(0))
