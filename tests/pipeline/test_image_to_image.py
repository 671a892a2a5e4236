"""Image to image: a share of each image's tokens, drawn at random, redrawn under a prompt."""

from __future__ import annotations

import math

import pytest
import torch

PROMPTS = ["a red circle", "two blue squares above a green star"]


@pytest.fixture(scope="module")
def images(pipe):
    return torch.rand(2, 3, pipe.image_size, pipe.image_size,
                      generator=torch.Generator().manual_seed(0))


def test_it_is_inpainting_of_the_random_region_in_fewer_steps(pipe, images):
    out = pipe.image_to_image(images, PROMPTS, strength=0.5, num_steps=6, seed=[3, 4],
                              output="codes", guidance_scale=2.0)
    generators = pipe.generators(2, [3, 4])
    regions = pipe.random_regions(2, 0.5, generators)  # advances the generators as the call did
    h, w = pipe.space.sequence.grid
    assert regions.shape == (2, h, w) and regions.sum().tolist() == 2 * round(0.5 * h * w)
    same = pipe.inpaint(images, regions, PROMPTS, num_steps=math.ceil(0.5 * 6), output="codes",
                        guidance_scale=2.0, generator=generators)
    assert torch.equal(out, same)
    kept = pipe.image_tokenizer.encode(images)
    assert torch.equal(out[~regions], kept[~regions])  # outside the region nothing moves


def test_the_regions_follow_the_seed_and_each_sample_is_its_own(pipe, images):
    a = pipe.random_regions(2, 0.3, pipe.generators(2, [3, 4]))
    b = pipe.random_regions(2, 0.3, pipe.generators(2, [3, 4]))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    both = pipe.image_to_image(images, PROMPTS, strength=0.3, num_steps=4, seed=[3, 4],
                               output="codes")
    alone = pipe.image_to_image(images[1:], PROMPTS[1], strength=0.3, num_steps=4, seed=[4],
                                output="codes")
    assert torch.equal(both[1], alone[0])


def test_strength_one_redraws_every_token_and_the_calls_scale_with_strength(pipe, images):
    h, w = pipe.space.sequence.grid
    assert bool(pipe.random_regions(1, 1.0, pipe.generators(1, 0)).all())
    assert int(pipe.random_regions(1, 1e-6, pipe.generators(1, 0)).sum()) == 1  # at least one
    _, calls = pipe.image_to_image(images, PROMPTS, strength=0.25, num_steps=16,
                                   return_calls=True, output="codes")
    assert calls == [4, 4]  # ceil(0.25 * 16) steps, one network call each


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, True, "0.5"])
def test_a_strength_outside_zero_to_one_is_refused(pipe, images, strength):
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        pipe.image_to_image(images, PROMPTS, strength=strength)
