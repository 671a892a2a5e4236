"""The seeds of a pipeline call: ``seed`` (an integer, or one per sample) as one integer per sample,
each one ``torch.Generator.manual_seed`` takes (:func:`seed_list`)."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
from torch import Tensor

# what torch.Generator.manual_seed takes
SEED_RANGE = (-(2**63), 2**64 - 1)


def seed_list(n: int, seed: Any) -> list[int]:
    """The ``n`` seeds of a call: ``seed + i`` for an integer ``seed``, else ``seed`` itself (any
    sequence of integers: list, tuple, ``range``, integer array or tensor).  A seed
    ``torch.Generator`` cannot take is one error naming it."""
    kind = type(seed).__name__
    if isinstance(seed, (Tensor, np.ndarray)):
        seed = seed.tolist()  # a 0-d one gives its number, the others a list
    scalar = _integer(seed)
    if scalar is not None:
        seeds = [scalar + i for i in range(n)]
    else:
        items = None if isinstance(seed, (str, bytes, dict)) else _integers(seed)
        if items is None:
            raise TypeError(f"seed must be an integer or a sequence of integers (one per "
                            f"sample), got {kind} {str(seed)[:60]}")
        if len(items) != n:
            raise ValueError(f"got {len(items)} seeds for {n} samples")
        seeds = items
    low, high = SEED_RANGE
    for i, value in enumerate(seeds):
        if not low <= value <= high:
            raise ValueError(f"seed {value} (sample {i}) is out of range: a seed must lie in "
                             "[-2**63, 2**64 - 1]")
    return seeds


def _integer(value: Any) -> int | None:
    """``value`` as an int when it is an integer (numpy's too, never a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _integers(values: Any) -> list[int] | None:
    """The integers of an iterable, or None when it is not one or holds something else."""
    try:
        items = list(values)
    except TypeError:
        return None
    out = [_integer(v) for v in items]
    return None if any(v is None for v in out) else out
