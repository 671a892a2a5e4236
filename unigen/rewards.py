"""Rewards for generated images: a score per (image, prompt) pair, higher is better.

Reward fine-tuning (:mod:`unigen.training.reward_finetune`) draws images, scores them with a reward
named in the recipe and raises the likelihood of the better ones.  The field's rewards are
verifiers and learned judges: Flow-GRPO (Liu et al. 2025) trains on GenEval's object checker,
MMaDA's UniGRPO (Yang et al. 2025) on CLIP score and ImageReward.  Here:

* ``shapes_checker``: the share of the prompt's facts the pixel checker finds in the image
  (:func:`unigen.data.checker.check`: objects, colors, sizes, counts, positions, relations), mixed
  with whether all of them hold: a dense signal while few images pass, and the exact target;
* ``clip_score``: CLIPScore of a local CLIP model (the project's own, trained with
  ``recipes/clip_shapes.yaml``, or any ``transformers`` CLIP directory), for data without a checker.

Adding a reward: a class with ``__call__(images, prompts) -> RewardOutput`` registered with
``@REWARDS.register("name")`` (a plugin module works too), then ``reward: name`` and
``reward_kwargs:`` in the recipe.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from unigen.metrics.base import check_same_length
from unigen.registry import Registry

REWARDS: Registry[type] = Registry("reward")


@dataclass
class RewardOutput:
    """``rewards`` [B] float32 on the CPU; ``metrics``: means worth logging beside the reward
    (name -> value), e.g. the share of images that pass the checker."""

    rewards: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def check_batch(images: Tensor, prompts: Sequence[str], who: str) -> None:
    """One clear line for a batch a reward cannot score."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{who}: images must be a [B, 3, H, W] tensor in [0, 1], got {shape}")
    check_same_length(images, prompts, "images", "prompts")
    empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if empty:
        raise ValueError(f"{who}: prompt {empty[0]} is empty; every image needs its prompt")


@REWARDS.register("shapes_checker")
class ShapesCheckerReward:
    """``(1 - pass_weight) * share of the prompt's facts that hold + pass_weight * all hold``, minus
    ``extra_object_weight * extra / (extra + asked)`` for the ``extra`` objects drawn beyond the
    ``asked`` number the caption counts.

    ``pass_weight=1`` is the checker's verdict alone (GenEval-style binary reward, as Flow-GRPO);
    the default mixes in the share of facts, so an image with the right shape in the wrong color
    scores above an empty one while few images pass (a sparse 0/1 reward gives a group of
    failures no signal at all).  The checker, like GenEval's, does not mind objects the caption
    does not name, so a policy can raise its share of ``object_present`` facts by drawing many
    objects (measured: docs/reward_finetuning.md); ``extra_object_weight`` makes that cost."""

    def __init__(self, pass_weight: float = 0.5, extra_object_weight: float = 0.0) -> None:
        if not 0.0 <= pass_weight <= 1.0:
            raise ValueError(f"shapes_checker: pass_weight must be in [0, 1], got {pass_weight}")
        if extra_object_weight < 0:
            raise ValueError(f"shapes_checker: extra_object_weight must be >= 0, got "
                             f"{extra_object_weight}")
        self.pass_weight = float(pass_weight)
        self.extra_object_weight = float(extra_object_weight)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> RewardOutput:
        from unigen.data.checker import check, parse_caption

        check_batch(images, prompts, "shapes_checker")
        images = images.detach().float().cpu().clamp(0, 1)
        passed, shares, extras = [], [], []
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            try:
                query = parse_caption(prompt)
            except ValueError as err:
                raise ValueError(f"shapes_checker: prompt {i} ({prompt!r}) is not a shapes caption "
                                 f"the checker can read: {err}") from None
            result = check(image, query)
            passed.append(float(result.correct))
            shares.append(sum(f.holds for f in result.facts) / max(len(result.facts), 1))
            asked = sum(g.count for g in query.groups)
            extra = max(len(result.detections) - asked, 0)
            extras.append(extra / (extra + asked) if extra else 0.0)
        passed_t, shares_t, extras_t = (torch.tensor(v, dtype=torch.float32)
                                        for v in (passed, shares, extras))
        rewards = ((1 - self.pass_weight) * shares_t + self.pass_weight * passed_t
                   - self.extra_object_weight * extras_t)
        mean = (lambda t: float(t.mean()) if len(t) else 0.0)
        return RewardOutput(rewards, {"pass_rate": mean(passed_t), "fact_share": mean(shares_t),
                                      "extra_objects": mean(extras_t)})

    def describe(self) -> dict[str, Any]:
        return {"name": "shapes_checker", "pass_weight": self.pass_weight,
                "extra_object_weight": self.extra_object_weight}


@REWARDS.register("clip_score")
class ClipScoreReward:
    """CLIPScore (``100 * max(cos, 0)``, Hessel et al. 2021) of each pair, times ``scale``, from a
    local CLIP directory (nothing is downloaded)."""

    def __init__(self, clip: str | os.PathLike, scale: float = 0.01) -> None:
        from unigen.metrics.clip_score import CLIPScore

        self.metric = CLIPScore(clip)
        self.scale = float(scale)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> RewardOutput:
        check_batch(images, prompts, "clip_score")
        encoder = self.metric.encoder
        scores = self.metric.pair_scores(images.detach().float().to(encoder.device), list(prompts))
        return RewardOutput((scores * self.scale).float().cpu(),
                            {"clip_score": float(scores.mean()) if len(scores) else 0.0})

    def describe(self) -> dict[str, Any]:
        return {"name": "clip_score", "scale": self.scale, **self.metric.describe()}


def build_reward(name: str, **kwargs: Any):
    """The registered reward ``name`` built with ``kwargs`` (an unknown option is one error line)."""
    cls = REWARDS.get(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"reward {name!r}: {err}") from None
    return cls(**kwargs)


__all__ = ["REWARDS", "ClipScoreReward", "RewardOutput", "ShapesCheckerReward", "build_reward",
           "check_batch"]
