import math

import pytest
import torch

from unigen.diffusion.schedules import SCHEDULES, build_schedule


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_endpoints_and_monotone(name):
    s = build_schedule(name)
    t = torch.linspace(0, 1, 101)
    rate = s.mask_rate(t)
    assert rate[0].item() == pytest.approx(0.0, abs=1e-6)
    assert rate[-1].item() == pytest.approx(1.0, abs=1e-6)
    assert bool((rate[1:] >= rate[:-1] - 1e-7).all())


def test_linear_elbo_weight_is_one_over_t():
    s = build_schedule("linear")
    t = torch.tensor([0.1, 0.25, 0.5, 1.0])
    assert torch.allclose(s.loss_weight(t), 1 / t, rtol=1e-4)


@pytest.mark.parametrize("name,shift", [(n, 1.0) for n in SCHEDULES.names()] + [("cosine", 3.0)])
@pytest.mark.parametrize("f", [lambda u: u, lambda u: u ** 3 + 0.5])
def test_both_copies_of_a_complementary_pair_estimate_the_same_elbo(name, shift, f):
    # a per-token loss f of the masked share u: the ELBO is the integral of f over u in [0, 1]
    s = build_schedule(name, shift=shift)
    t = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000  # midpoint rule over t
    rate = s.mask_rate(t)
    elbo = torch.trapezoid(f(torch.linspace(0, 1, 100_001, dtype=torch.float64)),
                           dx=1e-5).item()
    first = (s.loss_weight(t) * rate * f(rate)).mean().item()
    second = (s.share_weight(t, 1 - rate) * (1 - rate) * f(1 - rate)).mean().item()
    # (loss_weight floors t at 1e-4: arccos's first copy misses the 1 % of the ELBO below it)
    assert first == pytest.approx(elbo, rel=5e-3)
    assert second == pytest.approx(elbo, rel=5e-3)


def test_cosine_matches_maskgit_form():
    s = build_schedule("cosine")
    t = torch.tensor([0.3])
    assert s.mask_rate(t).item() == pytest.approx(math.sin(0.3 * math.pi / 2), rel=1e-6)


def test_shift_spends_more_time_masked():
    plain, shifted = build_schedule("linear"), build_schedule("linear", shift=3.0)
    t = torch.tensor([0.2, 0.5, 0.8])
    assert bool((shifted.mask_rate(t) > plain.mask_rate(t)).all())
    assert shifted.mask_rate(torch.tensor([1.0])).item() == pytest.approx(1.0)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="shift"):
        build_schedule("linear", shift=0)
    with pytest.raises(KeyError, match="unknown noise schedule"):
        build_schedule("nope")
