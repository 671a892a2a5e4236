"""Confidence measures: how sure the network is of the token at each position (higher = surer).

``prob`` is MaskGIT's (Chang et al. 2022) probability of the chosen token; ``margin`` (top-1 minus
runner-up probability) and ``entropy`` are the alternatives LaViDa (Li et al. 2025) and Dimple
(Yu et al. 2025) use for low-confidence remasking. All lie in ``[-1, 1]`` (``prob``/``entropy`` in
``[0, 1]``) so thresholds are comparable. A new measure is one registered function.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from unigen.registry import Registry
from unigen.sampling.categorical import sample_tokens
from unigen.sampling.rng import GeneratorArg

ConfidenceFn = Callable[[Tensor, Tensor], Tensor]
CONFIDENCE_MEASURES: Registry[ConfidenceFn] = Registry("confidence measure")


@CONFIDENCE_MEASURES.register("prob")
def prob_confidence(probs: Tensor, tokens: Tensor) -> Tensor:
    """Probability of ``tokens`` under ``probs [B, S, V]`` (MaskGIT)."""
    return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@CONFIDENCE_MEASURES.register("margin")
def margin_confidence(probs: Tensor, tokens: Tensor) -> Tensor:
    """``p(token) - max_{v != token} p(v)``: top-1 minus top-2 when ``token`` is the argmax (LaViDa)."""
    chosen = prob_confidence(probs, tokens)
    others = probs.scatter(-1, tokens.unsqueeze(-1), float("-inf")).amax(-1)
    return chosen - others


@CONFIDENCE_MEASURES.register("entropy")
def entropy_confidence(probs: Tensor, tokens: Tensor) -> Tensor:
    """``1 - H(p) / log V``: 1 for a one-hot prediction, 0 for uniform over the ``V`` ids the
    position may take (independent of ``tokens``).  ``V`` counts the ids of nonzero probability:
    an image position's text ids are illegal (-inf logits), and counting them would score a
    uniform image prediction as sure (0.25 over 125 codes beside ~140 text ids)."""
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    legal = (probs > 0).sum(-1).clamp_min(2)
    return 1 - entropy / legal.to(entropy.dtype).log()


def token_confidence(measure: str, probs: Tensor, tokens: Tensor) -> Tensor:
    return CONFIDENCE_MEASURES.get(measure)(probs, tokens)


def sample_with_confidence(logits: Tensor, where: Tensor, temperature: float, generator: GeneratorArg,
                           measure: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(probs, sampled, confidence)``: tokens drawn where ``where`` is True, each scored by ``measure``.

    One float32 softmax of ``logits [B, S, V]`` serves the draw (at temperature 1) and the score, so a
    sampler makes a single pass over the vocabulary for both.
    """
    probs = torch.softmax(logits, dim=-1)
    sampled = sample_tokens(logits, where, temperature, generator, probs=probs)
    return probs, sampled, token_confidence(measure, probs, sampled)


def check_measure(measure: str) -> str:
    CONFIDENCE_MEASURES.get(measure)  # raises naming the known measures
    return measure
