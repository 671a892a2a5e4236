"""Which masked positions adaptive (confident) decoding reveals in one step, given confidences.

Each rule takes ``confidence [B, S]``, the ``candidates [B, S]`` still masked and one number, and
returns the boolean ``[B, S]`` set to reveal (possibly empty; the sampler adds the most confident
position when it is). A new rule is one registered function.

* ``threshold`` (Dimple, Yu et al. 2025; Fast-dLLM, Wu et al. 2025): every position whose confidence
  reaches the value. Each position is judged alone, so many positions that are each likely (say
  "background") are committed together even when, jointly, one of them should differ.
* ``factor`` (Fast-dLLM's factor rule): the ``n`` most confident positions for the largest ``n`` with
  ``(n + 1) * (1 - c_(n)) < f``, where ``c_(n)`` is the ``n``-th highest confidence. The more positions
  are committed at once, the surer each must be.
* ``error_budget``: the most confident positions while the sum of their ``1 - c`` stays within the
  value. By the union bound, the chance that any committed token differs from what sequential
  decoding would sample is at most that sum, so the rule bounds the joint error of one step rather
  than each position's; it reveals many tokens only once the model is sure of all of them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from unigen.registry import Registry
from unigen.sampling.selection import select_top_k

RevealRule = Callable[[Tensor, Tensor, float], Tensor]
REVEAL_RULES: Registry[RevealRule] = Registry("reveal rule")


def _sorted_errors(confidence: Tensor, candidates: Tensor) -> Tensor:
    """``1 - c`` of each row's candidates in descending confidence order; +inf past the candidates."""
    errors = torch.where(candidates, 1.0 - confidence.float(), float("inf"))
    return errors.sort(dim=-1, stable=True).values


@REVEAL_RULES.register("threshold")
def threshold_rule(confidence: Tensor, candidates: Tensor, value: float) -> Tensor:
    """Every candidate with confidence >= ``value``."""
    return candidates & (confidence >= value)


@REVEAL_RULES.register("factor")
def factor_rule(confidence: Tensor, candidates: Tensor, value: float) -> Tensor:
    """The ``n`` most confident candidates, ``n`` the largest with ``(n + 1)(1 - c_(n)) < value``."""
    errors = _sorted_errors(confidence, candidates)
    n = torch.arange(1, errors.shape[-1] + 1, device=errors.device, dtype=errors.dtype)
    # (n + 1) and the sorted errors both grow with n, so the rule holds on a prefix: count it.
    count = ((n + 1) * errors < value).sum(-1)
    return select_top_k(confidence, candidates, count)


@REVEAL_RULES.register("error_budget")
def error_budget_rule(confidence: Tensor, candidates: Tensor, value: float) -> Tensor:
    """The most confident candidates while the sum of their ``1 - c`` is <= ``value``."""
    errors = _sorted_errors(confidence, candidates)
    count = (errors.cumsum(-1) <= value).sum(-1)
    return select_top_k(confidence, candidates, count)


def check_rule(rule: str) -> str:
    REVEAL_RULES.get(rule)  # raises naming the known rules
    return rule
