"""Masked-diffusion samplers apart from the model: MaskGIT, ancestral, confident, remask, semi-AR,
Halton order, classifier-free guidance and the one decode loop. See docs/samplers.md."""

from unigen.sampling.ancestral import AncestralSampler
from unigen.sampling.base import (
    SAMPLERS, Sampler, SamplerOutput, build_sampler, check_num_steps, make_sampler,
)
from unigen.sampling.confidence import CONFIDENCE_MEASURES, token_confidence
from unigen.sampling.confident import ConfidentSampler
from unigen.sampling.decode import DecodeResult, decode
from unigen.sampling.guidance import GUIDANCE_SCHEDULES, ClassifierFreeGuidance, build_guidance
from unigen.sampling.halton import HaltonSampler
from unigen.sampling.inpaint import inpaint_tokens
from unigen.sampling.maskgit import MaskGITSampler
from unigen.sampling.remask import RemaskSampler
from unigen.sampling.reveal_rules import REVEAL_RULES
from unigen.sampling.rng import GeneratorArg, make_generators, rand_rows
from unigen.sampling.semi_ar import SemiARSampler

__all__ = [
    "AncestralSampler",
    "CONFIDENCE_MEASURES",
    "ClassifierFreeGuidance",
    "ConfidentSampler",
    "DecodeResult",
    "GUIDANCE_SCHEDULES",
    "GeneratorArg",
    "HaltonSampler",
    "MaskGITSampler",
    "REVEAL_RULES",
    "RemaskSampler",
    "SAMPLERS",
    "Sampler",
    "SamplerOutput",
    "SemiARSampler",
    "build_guidance",
    "build_sampler",
    "check_num_steps",
    "decode",
    "inpaint_tokens",
    "make_generators",
    "make_sampler",
    "rand_rows",
    "token_confidence",
]
