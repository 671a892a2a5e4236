"""Recipes name samplers and guidance by class_path (LightningCLI subclass mode) or registry name."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

from unigen.sampling import SAMPLERS, ClassifierFreeGuidance, MaskGITSampler, Sampler, SemiARSampler

RECIPE = """
sampler:
  class_path: unigen.sampling.SemiARSampler
  init_args:
    block_length: 8          # positions per block
    steps_per_block: 4       # inner steps per block
    inner: confident         # registered name of the within-block rule
    inner_kwargs: {threshold: 0.8, confidence: margin}
    eos_id: 2
    pad_id: 0
guidance:
  scale: 3.0                 # 1 = no guidance
  interval: [0.0, 0.6]       # guide only the first 60% of the steps
  schedule: linear
"""


def parser() -> ArgumentParser:
    p = ArgumentParser()
    p.add_argument("--sampler", type=Sampler)
    p.add_class_arguments(ClassifierFreeGuidance, "guidance")
    return p


def test_recipe_parses_and_instantiates():
    p = parser()
    objects = p.instantiate_classes(p.parse_string(RECIPE))
    sampler, guidance = objects.sampler, objects.guidance
    assert isinstance(sampler, SemiARSampler) and sampler.block_length == 8 and sampler.eos_id == 2
    assert sampler.inner.threshold == 0.8 and sampler.inner.confidence == "margin"
    assert isinstance(guidance, ClassifierFreeGuidance) and guidance.interval == (0.0, 0.6)
    assert guidance.scale_at(0.3) == pytest.approx(1.0 + 2.0 * 0.3)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_registered_sampler_instantiates_from_class_path(name):
    cls = SAMPLERS.get(name)
    p = ArgumentParser()
    p.add_argument("--sampler", type=Sampler)
    cfg = p.parse_object({"sampler": {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": {"mask_id": 5}}})
    sampler = p.instantiate_classes(cfg).sampler
    assert type(sampler) is cls and sampler.mask_id == 5


def test_schedule_accepts_an_instance_or_a_name():
    from unigen.diffusion.schedules import PolynomialSchedule

    sampler = MaskGITSampler(schedule=PolynomialSchedule(power=3.0))
    sampler.set_timesteps(2)
    assert sampler.target_counts(torch.ones(1, 8, dtype=torch.bool)).tolist() == [[8, 7, 0]]  # floor(8 * 0.875)
    with pytest.raises(KeyError, match="unknown noise schedule 'nope'"):
        MaskGITSampler(schedule="nope")
