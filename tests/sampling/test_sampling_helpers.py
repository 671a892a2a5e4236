"""Building blocks: per-row RNG, categorical sampling, confidence measures, top-k and schedule counts."""

from __future__ import annotations

import math

import pytest
import torch

from unigen.diffusion.schedules import build_schedule
from unigen.sampling.categorical import inverse_cdf, legal_logits, sample_tokens
from unigen.sampling.confidence import sample_with_confidence, token_confidence
from unigen.sampling.rng import gumbel_rows, make_generators, rand_rows
from unigen.sampling.selection import (masked_counts, replanned_counts, reveal_counts, schedule_time,
                                      select_top_k)


def test_rand_rows_per_row_generators_are_batch_invariant():
    alone = rand_rows((1, 5), make_generators([7]), device="cpu")
    batched = rand_rows((3, 5), make_generators([7, 8, 9]), device="cpu")
    assert torch.equal(alone[0], batched[0])
    assert not torch.equal(batched[0], batched[1])


def test_rand_rows_refuses_missing_or_wrong_generators():
    with pytest.raises(ValueError, match="needs a generator"):
        rand_rows((2, 3), None, device="cpu")
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        rand_rows((3, 3), make_generators([1, 2]), device="cpu")


def test_gumbel_rows_is_finite_and_has_gumbel_mean():
    noise = gumbel_rows((1, 200_000), torch.Generator().manual_seed(0), device="cpu")
    assert torch.isfinite(noise).all()
    assert abs(noise.mean().item() - 0.5772) < 0.01  # Euler-Mascheroni constant


def test_sample_tokens_matches_the_categorical_distribution():
    probs = torch.tensor([0.1, 0.2, 0.0, 0.7])
    logits = probs.log().expand(1, 40_000, 4).clone()
    where = torch.ones(1, 40_000, dtype=torch.bool)
    drawn = sample_tokens(logits, where, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn.flatten(), minlength=4).float() / drawn.numel()
    assert freq[2] == 0  # a zero-probability token is never drawn
    assert torch.allclose(freq, probs, atol=0.01)


def test_inverse_cdf_exact_values_and_edges():
    probs = torch.tensor([[0.0, 0.3, 0.0, 0.7]], dtype=torch.float64).expand(5, 4)
    u = torch.tensor([0.0, 0.29, 0.3, 0.999, 1.0])  # 1.0 stands in for a draw rounded onto the total mass
    assert inverse_cdf(probs, u).tolist() == [1, 1, 3, 3, 3]
    trailing_zero = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    assert inverse_cdf(trailing_zero, torch.tensor([1.0])).tolist() == [1]


def _full_cumsum_draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The textbook inverse CDF: one float64 cumulative sum over the whole vocabulary."""
    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, (u.double() * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)


@pytest.mark.parametrize("vocab_size", [5, 128, 300, 1000])
def test_two_level_inverse_cdf_draws_what_a_full_cumulative_sum_draws(vocab_size):
    gen = torch.Generator().manual_seed(vocab_size)
    probs = torch.rand(4000, vocab_size, generator=gen, dtype=torch.float64) ** 4
    probs[torch.rand(probs.shape, generator=gen) < 0.3] = 0.0  # runs of zero-mass tokens
    probs[:, 0] += 1e-3  # every row keeps some mass
    u = torch.rand(4000, generator=gen, dtype=torch.float64)
    drawn = inverse_cdf(probs, u, block=16)
    assert torch.equal(drawn, _full_cumsum_draw(probs, u))
    assert bool((probs.gather(-1, drawn[:, None]) > 0).all())


def test_two_level_inverse_cdf_on_float32_probabilities_never_draws_zero_mass():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2000, 700, generator=gen) * 6
    logits[:, 100:300] = float("-inf")  # whole blocks without mass
    probs = torch.softmax(logits, -1)
    u = torch.cat([torch.rand(1997, generator=gen, dtype=torch.float64), torch.tensor([0.0, 1.0, 1 - 1e-17])])
    drawn = inverse_cdf(probs, u)
    assert bool((probs.gather(-1, drawn[:, None]) > 0).all())
    agree = (drawn[:1997] == _full_cumsum_draw(probs[:1997], u[:1997])).float().mean()
    assert agree > 0.999  # float32 block sums move a boundary by ~1e-7 of its mass at most
    assert drawn[1997] == probs[1997].nonzero().min()  # u = 0: the first token with mass
    assert drawn[1998] == probs[1998].nonzero().max()  # u = 1 (rounded onto the total): the last one


def test_legal_logits_copies_only_when_it_must():
    logits = torch.randn(2, 3, 5)
    logits[..., 4] = float("-inf")
    assert legal_logits(logits, 4) is logits  # float32, mask already forbidden: no [B, S, V] copy
    finite = torch.randn(2, 3, 5)
    before = finite.clone()
    out = legal_logits(finite, 4)
    assert out is not finite and torch.equal(finite, before)  # the caller's logits stay intact
    assert out[..., 4].eq(float("-inf")).all()


def test_sample_tokens_draws_every_position_and_reuses_given_probs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=gen)
    where = torch.zeros(3, 7, dtype=torch.bool)
    where[0, 2] = True
    probs = torch.softmax(logits, -1)
    a = sample_tokens(logits, where, 1.0, torch.Generator().manual_seed(5))
    b = sample_tokens(logits, where, 1.0, torch.Generator().manual_seed(5), probs=probs)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="where must be shaped"):
        sample_tokens(logits, where[:, :3], 1.0, torch.Generator().manual_seed(5))


def test_sample_tokens_temperature_zero_is_argmax_and_needs_no_generator():
    logits = torch.randn(2, 6, 9, generator=torch.Generator().manual_seed(1))
    drawn = sample_tokens(logits, torch.ones(2, 6, dtype=torch.bool), 0.0, None)
    assert torch.equal(drawn, logits.argmax(-1))


def test_low_temperature_concentrates_on_the_argmax():
    logits = torch.tensor([[[0.0, 1.0, 0.5]]]).expand(1, 2000, 3).clone()
    drawn = sample_tokens(logits, torch.ones(1, 2000, dtype=torch.bool), 0.05, torch.Generator().manual_seed(0))
    assert (drawn == 1).float().mean() > 0.99


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
@pytest.mark.parametrize("bad", ["only_mask", "nan"])
def test_legal_logits_forbids_mask_id_and_sampling_rejects_positions_without_legal_tokens(temperature, bad):
    logits = torch.zeros(1, 2, 4)
    assert legal_logits(logits, 3)[..., 3].eq(float("-inf")).all()
    assert torch.equal(legal_logits(logits, 7), logits)  # mask_id outside the output vocabulary
    broken = torch.zeros(1, 3, 4)
    if bad == "only_mask":
        broken[0, 1] = float("-inf")
        broken[0, 1, 3] = 0.0
    else:
        broken[0, 1, 2] = float("nan")
        broken[0, 1, [0, 1, 3]] = float("-inf")
    where = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="no legal token"):
        sample_tokens(legal_logits(broken, 3), where, temperature, torch.Generator().manual_seed(0))


def test_confidence_measures_known_values():
    probs = torch.tensor([[[0.5, 0.3, 0.2]]])
    top, second = torch.tensor([[0]]), torch.tensor([[1]])
    assert token_confidence("prob", probs, second).item() == pytest.approx(0.3)
    assert token_confidence("margin", probs, top).item() == pytest.approx(0.2)
    assert token_confidence("margin", probs, second).item() == pytest.approx(-0.2)
    uniform = torch.full((1, 1, 4), 0.25)
    one_hot = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])
    assert token_confidence("entropy", uniform, torch.tensor([[0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert token_confidence("entropy", one_hot, torch.tensor([[1]])).item() == pytest.approx(1.0)
    # uniform over the ids a position may take (the rest illegal, probability 0) is still unsure
    legal_only = torch.zeros(1, 1, 8)
    legal_only[..., 3:] = 0.2
    assert token_confidence("entropy", legal_only, torch.tensor([[3]])).item() == pytest.approx(0.0, abs=1e-6)
    expected = 1 - (-(probs * probs.log()).sum()) / math.log(3)
    assert token_confidence("entropy", probs, top).item() == pytest.approx(expected.item())
    with pytest.raises(KeyError, match="unknown confidence measure 'nope'"):
        token_confidence("nope", probs, top)


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.5])
def test_sample_with_confidence_scores_the_tokens_it_draws(temperature):
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(3))
    where = torch.tensor([[True, False, True, True, False], [False, True, True, False, True]])
    probs, sampled, confidence = sample_with_confidence(
        logits, where, temperature, torch.Generator().manual_seed(4), "margin")
    expected = sample_tokens(logits, where, temperature, torch.Generator().manual_seed(4))
    assert torch.equal(sampled, expected)  # the same draw as sampling alone, from the same generator
    assert torch.allclose(probs, torch.softmax(logits, -1))  # probabilities at temperature 1, for ranking
    assert torch.allclose(confidence, token_confidence("margin", probs, sampled))


def test_select_top_k_picks_highest_candidates_per_row_with_stable_ties():
    score = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.2], [3.0, 2.0, 1.0, float("-inf"), 0.0]])
    candidates = torch.tensor([[True, True, True, False, True], [False, True, True, True, True]])
    chosen = select_top_k(score, candidates, torch.tensor([2, 4]))
    assert chosen.tolist() == [[False, True, True, False, False], [False, True, True, True, True]]
    ties = select_top_k(torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool), torch.tensor([2]))
    assert ties.tolist() == [[True, True, False, False]]


def test_masked_counts_known_cosine_values():
    timesteps = torch.linspace(1, 0, 5, dtype=torch.float64)
    counts = masked_counts(build_schedule("cosine"), timesteps, torch.tensor([16, 3, 0]))
    # floor(16 * sin(pi/2 * t)) for t = 1, .75, .5, .25, 0
    assert counts[0].tolist() == [16, 14, 11, 6, 0]
    # fewer positions than steps: one per step, then done early
    assert counts[1].tolist() == [3, 2, 1, 0, 0]
    assert counts[2].tolist() == [0, 0, 0, 0, 0]


def test_masked_counts_are_exact_where_the_product_is_an_integer():
    # linear: floor(90 * t) on t = 1, .9, ..., 0 is 90, 81, ..., 0 (float64 makes 90 * 0.7 62.99...)
    counts = masked_counts(build_schedule("linear"), torch.linspace(1, 0, 11, dtype=torch.float64),
                           torch.tensor([90]))
    assert counts[0].tolist() == list(range(90, -1, -9))
    # cosine: sin(pi/6) = 1/2, so 4 positions keep 2 masked at t = 1/3
    counts = masked_counts(build_schedule("cosine"), torch.linspace(1, 0, 4, dtype=torch.float64),
                           torch.tensor([4]))
    assert counts[0].tolist() == [4, 3, 2, 0]


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial"])
def test_masked_counts_reveal_at_least_one_per_step(name):
    timesteps = torch.linspace(1, 0, 13, dtype=torch.float64)
    counts = masked_counts(build_schedule(name), timesteps, torch.arange(0, 40))
    steps = counts[:, :-1] - counts[:, 1:]
    assert (counts[:, -1] == 0).all()
    assert ((steps >= 1) | (counts[:, :-1] == 0)).all()


def test_reveal_counts_bounds():
    k = reveal_counts(torch.tensor([5, 5, 0, 3]), torch.tensor([2, 5, 0, 0]))
    assert k.tolist() == [3, 1, 0, 3]


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial"])
def test_schedule_time_inverts_the_mask_rate(name):
    schedule = build_schedule(name)
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    assert torch.allclose(schedule_time(schedule, schedule.mask_rate(t)), t, atol=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial"])
def test_replanned_counts_follow_maskgit_on_schedule_and_jump_when_ahead(name):
    schedule = build_schedule(name)
    for n in (1, 5, 10, 36, 100, 256):
        for k in (2, 3, 7, 8, 16):
            expected = masked_counts(schedule, torch.linspace(1, 0, k + 1, dtype=torch.float64), torch.tensor([n]))
            masked, path = torch.tensor([n]), [n]
            for i in range(k):
                count, _ = replanned_counts(schedule, masked, torch.tensor([n]), i, k)
                masked = masked - count
                path.append(int(masked))
            assert path == expected[0].tolist(), (n, k)
    # a row already down to 10 of 100 at step 1 of 8 is treated as late in the schedule
    count, t_next = replanned_counts(schedule, torch.tensor([10, 100]), torch.tensor([100, 100]), 1, 8)
    assert t_next[0] < t_next[1] and 1 <= count[0] <= 10
