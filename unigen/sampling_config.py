"""How a pipeline call decodes: :class:`SamplingConfig` (sampler, steps, guidance, caching, step
callback) and the defaults of text decoding (:data:`TEXT_SAMPLER`, :data:`ANSWER_STEPS`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from unigen.sampling import Sampler
from unigen.sampling.base import check_num_steps

# Reading an image is a prediction, not a draw: captions and answers decode greedily, revealing
# every token the model is sure of at once (Dimple, Yu et al. 2025; Fast-dLLM, Wu et al. 2025;
# LaViDa decodes understanding greedily too).  MaskGIT's sampled tokens and choice noise are an
# image-generation default: on the Fashion-MNIST CPU model they cost 7 points of VQA and leave
# 15 % of captions malformed (docs/samplers.md, "Decoding text").
TEXT_SAMPLER = "confident"
ANSWER_STEPS = 4  # the step budget of an answer (a few words); confident decoding stops earlier


@dataclass
class SamplingConfig:
    """How to decode one segment: sampler (a registered name, or a :class:`Sampler` object) +
    options, steps, guidance.  ``num_steps`` is checked here (a positive integer), once for every
    task."""

    sampler: str | Sampler = "maskgit"
    num_steps: int = 16
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    guidance_scale: float = 1.0
    guidance_kwargs: dict[str, Any] = field(default_factory=dict)
    use_cache: bool = True  # prefix KV cache: the condition is encoded once
    cache_unchanged: bool = False  # skip the network when its input did not change (MDLM cache)
    cuda_graphs: bool = False  # replay each step's network call as a CUDA graph (GPU only)
    #: called after every step as ``callback(step_index, tokens, is_masked)`` with copies of the
    #: whole sequences ``[B, S]`` (diffusers' ``callback_on_step_end``, to watch or record a
    #: decode; :meth:`UnifiedPipeline.partial_images` draws an image task's state)
    callback: Callable[[int, Tensor, Tensor], None] | None = None

    def __post_init__(self) -> None:
        self.num_steps = check_num_steps(self.num_steps)
        if self.callback is not None and not callable(self.callback):
            raise TypeError(f"callback must be callable (step_index, tokens, is_masked), got "
                            f"{type(self.callback).__name__}")

    @classmethod
    def from_options(cls, sampler: str | Sampler, num_steps: int, **options: Any) -> "SamplingConfig":
        """The config of a pipeline call; an unknown keyword is one ``TypeError`` naming the ones
        there are (the dataclass's own message names only the constructor)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown option {', '.join(map(repr, unknown))}; the options are "
                            f"{', '.join(sorted(known - {'sampler', 'num_steps'}))}")
        return cls(sampler, num_steps, **options)
