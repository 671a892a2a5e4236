"""The Halton-order sampler: its order, its counts, what it reveals each step, and its use by name."""

from __future__ import annotations

import math

import pytest
import torch
from sampling_testkit import MASK, DummyNet, generators, make_batch

from unigen.diffusion.schedules import build_schedule
from unigen.sampling import HaltonSampler, decode, make_sampler
from unigen.sampling.halton import halton_order, radical_inverse, reveal_ranks


def test_radical_inverse_mirrors_the_digits():
    index = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    assert radical_inverse(index, 2).tolist() == [0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375]
    assert radical_inverse(index, 3).tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1 / 9, 4 / 9, 7 / 9, 2 / 9])


@pytest.mark.parametrize("height, width", [(1, 1), (1, 8), (7, 1), (3, 5), (4, 4), (16, 16), (9, 13)])
def test_the_order_visits_every_cell_once(height, width):
    order = halton_order(height, width)
    assert sorted(order) == list(range(height * width))


def test_the_first_cells_are_the_halton_points_of_the_grid():
    # points i = 1, 2, 3: (1/2, 1/3), (1/4, 2/3), (3/4, 1/9) -> cells (2, 1), (1, 2), (3, 0) of 4 x 4
    assert halton_order(4, 4)[:3] == (2 * 4 + 1, 1 * 4 + 2, 3 * 4 + 0)
    # a line is van der Corput's order: 1/2, 1/4, 3/4, 1/8, ... of its length, 0 last
    assert halton_order(1, 8) == (4, 2, 6, 1, 5, 3, 7, 0)


def test_each_early_step_spreads_over_the_whole_grid():
    # the first 2 * 3 Halton points fall one in each box of a 2 x 3 partition (its stratification),
    # where a raster or a confidence order would put them side by side
    order = halton_order(12, 12)
    boxes = {(cell // 12 // 6, cell % 12 // 4) for cell in order[:6]}
    assert len(boxes) == 6
    rows, cols = torch.tensor(order[:16]) // 12, torch.tensor(order[:16]) % 12
    points = torch.stack([rows, cols], -1).float()
    closest = torch.cdist(points, points).add(torch.eye(16) * 1e9).amin()
    assert closest >= 2  # no two of the first 16 of 144 cells touch


def test_ranks_read_a_square_view_as_a_grid_and_anything_else_as_a_line():
    assert torch.equal(reveal_ranks(16, None).argsort(), torch.tensor(halton_order(4, 4)))
    assert torch.equal(reveal_ranks(24, (4, 6)).argsort(), torch.tensor(halton_order(4, 6)))
    assert torch.equal(reveal_ranks(10, None).argsort(), torch.tensor(halton_order(1, 10)))
    assert torch.equal(reveal_ranks(10, (4, 6)).argsort(), torch.tensor(halton_order(1, 10)))


def test_each_step_reveals_the_schedules_count_earliest_in_the_order_first():
    tokens, is_masked = make_batch(4)
    sampler = HaltonSampler(mask_id=MASK)
    ranks = reveal_ranks(tokens.shape[1], None)
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    before = [is_masked]
    result = decode(DummyNet(), tokens, is_masked, sampler, num_steps=6, generator=generators([0, 1, 2, 3]),
                    callback=lambda i, out: (steps.append((before[-1], out.is_masked)),
                                             before.append(out.is_masked)))
    counts = build_schedule("arccos").mask_rate(torch.linspace(1, 0, 7, dtype=torch.float64))
    for i, (was, now) in enumerate(steps):
        expected_left = torch.minimum(
            (is_masked.sum(-1, keepdim=True) * counts[i + 1]).floor().long().squeeze(-1),
            was.sum(-1) - 1).clamp_min(0)
        assert now.sum(-1).tolist() == expected_left.tolist()
        revealed = was & ~now
        for row in range(4):
            if revealed[row].any() and now[row].any():
                assert ranks[revealed[row]].max() < ranks[now[row]].min()
    assert result.steps_taken == 6 and not (result.tokens == MASK).any()


def test_greedy_tokens_are_the_networks_argmax_and_given_tokens_stay():
    tokens, is_masked = make_batch(2)
    net = DummyNet()
    sampler = HaltonSampler(temperature=0.0, mask_id=MASK)
    sampler.set_timesteps(3)
    logits = net(tokens)
    out = sampler.step(logits, tokens, is_masked, 0, editable=is_masked)
    revealed = is_masked & ~out.is_masked
    best = logits.masked_fill(torch.arange(logits.shape[-1]) == MASK, float("-inf")).argmax(-1)
    assert revealed.any()
    assert torch.equal(out.tokens[revealed], best[revealed])
    assert torch.equal(out.tokens[~is_masked], tokens[~is_masked])


def test_the_arccos_schedule_reveals_more_early_than_cosine():
    arccos, cosine = build_schedule("arccos"), build_schedule("cosine")
    t = torch.tensor([15 / 16])
    assert float(arccos.mask_rate(t)) == pytest.approx(2 / math.pi * math.acos(1 / 16))
    assert 1 - float(arccos.mask_rate(t)) > 5 * (1 - float(cosine.mask_rate(t)))


@pytest.mark.parametrize("options, message", [
    ({"grid": [4]}, "grid must be two positive integers"),
    ({"grid": [4, 0]}, "grid must be two positive integers"),
    ({"temperature": -1}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number >= 0, got nan"),
])
def test_bad_options_are_one_line_naming_them(options, message):
    with pytest.raises(ValueError, match=message) as err:
        make_sampler("halton", options, mask_id=MASK)
    assert "\n" not in str(err.value) and "'halton'" in str(err.value)


def test_the_pipeline_draws_with_it_by_name_and_by_seed(tokenizer_dirs):
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    pipe = UnifiedModule(**tokenizer_dirs, image_size=32, max_text_len=24, dim=32, depth=2, heads=4,
                         tasks={"t2i": 1}).to_pipeline()
    first = pipe.text_to_image(["a red circle", "two blue squares"], num_steps=4, sampler="halton",
                               seed=[3, 4], output="codes")
    again = pipe.text_to_image(["two blue squares"], num_steps=4, sampler="halton", seed=[4],
                               output="codes")
    maskgit = pipe.text_to_image(["a red circle", "two blue squares"], num_steps=4, seed=[3, 4],
                                 output="codes")
    assert first.shape == maskgit.shape and first.shape[0] == 2
    assert torch.equal(first[1], again[0])  # batch invariant, seeded
    assert not torch.equal(first, maskgit)


def test_the_pipeline_gives_it_the_grid_of_each_view_it_decodes(tokenizer_dirs, monkeypatch):
    """The image segment is the token grid; a text view is a line even when its length is a
    square (a 25-token caption is not a 5x5 image); a grid the caller gives stands."""
    from unigen.sampling.base import SAMPLERS
    from unigen.sampling.halton import HaltonSampler
    from unigen.training.unified_module import UnifiedModule

    seen: list[tuple[tuple[int, int] | None, int]] = []

    class Spy(HaltonSampler):
        def step(self, logits, tokens, is_masked, step_index, generator=None, editable=None):
            seen.append((self.grid, tokens.shape[1]))
            return super().step(logits, tokens, is_masked, step_index, generator, editable)

    monkeypatch.setitem(SAMPLERS._items, "halton_spy", Spy)
    torch.manual_seed(0)
    pipe = UnifiedModule(**tokenizer_dirs, image_size=32, max_text_len=25, dim=32, depth=1, heads=4,
                         tasks={"t2i": 1, "caption": 1}).to_pipeline()
    images = pipe.text_to_image(["a red circle"], num_steps=2, sampler="halton_spy", output="pil")
    assert set(seen) == {((8, 8), 64)}  # 32 px, 4x downsampling: the 8x8 grid
    seen.clear()
    pipe.caption(images, num_steps=2, sampler="halton_spy")
    assert set(seen) == {((1, 25), 25)}  # the caption's 25 positions, in a line
    seen.clear()
    pipe.text_to_image(["a red circle"], num_steps=2, sampler="halton_spy",
                       sampler_kwargs={"grid": [4, 16]}, output="codes")
    assert set(seen) == {((4, 16), 64)}
