"""Token sampling from logits: temperature, greedy, and inverse-CDF categorical draws.

Sampling uses ONE uniform number per position (inverse CDF) instead of Gumbel-max over the whole
vocabulary: memory stays ``[B, S]`` for the draws, and per-row generators stay batch invariant.

A masked step samples every position of its segment over the whole vocabulary (``[B, S, V]``
logits, where an autoregressive step has ``[B, 1, V]``), so each full pass over them counts: the
logits are not copied when they are already float32 with the mask token forbidden, one float32
softmax serves both the confidence ranking and the draw, no argmax pass is made when sampling,
and the inverse CDF searches block sums instead of writing a float64 cumulative sum of the
vocabulary (``benchmarks/sampler_overhead.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from unigen.sampling.rng import GeneratorArg, rand_rows

# Vocabulary block of the two-level inverse CDF: block sums are one read of the probabilities, and
# only one block per drawn position is summed cumulatively.
CDF_BLOCK = 128

NO_LEGAL_TOKEN = "logits give no legal token at some position (all -inf once mask_id is removed, or NaN)"



def check_temperatures(**values: Any) -> None:
    """Each ``name=value`` a finite number >= 0 (a NaN passes ``< 0`` and would only fail inside
    the decode, with a message about the logits)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

def legal_logits(logits: Tensor, mask_id: int) -> Tensor:
    """Float32 logits with ``mask_id`` forbidden: a sampler must never emit the mask token.

    Returns ``logits`` itself when it already is float32 with ``mask_id`` at -inf (the model's legal
    bias does that), else a copy; callers must not modify the result in place.  Rows without a
    legal token are caught by :func:`sample_tokens` from the draw's own totals, not by another
    pass over ``[B, S, V]`` here.
    """
    out = logits.float()
    if mask_id < out.shape[-1] and not bool(torch.isneginf(out[..., mask_id]).all()):
        out = out.clone()  # the caller's logits stay intact
        out[..., mask_id] = float("-inf")
    return out


def sample_tokens(logits: Tensor, where: Tensor, temperature: float, generator: GeneratorArg,
                  probs: Tensor | None = None) -> Tensor:
    """Sample a token at the positions of ``logits [B, S, V]`` where ``where [B, S]`` is True.

    Temperature 0 is greedy (argmax, no random draw). Otherwise one uniform per position of every row
    is drawn and every position gets a token from its distribution (callers read the ``where``
    positions): the draws a row consumes never depend on its state or its batch, and no
    data-dependent indexing makes a GPU wait. ``probs``: ``softmax(logits)`` when the caller has it
    already (reused at temperature 1).  Only the ``where`` positions must have a legal token: a
    given position's logits are never read, so a model may leave them all ``-inf``.
    """
    check_temperatures(temperature=temperature)
    if where.shape != logits.shape[:-1]:
        raise ValueError(f"where must be shaped like logits without the vocabulary axis, got {tuple(where.shape)}")
    if temperature == 0:
        tokens = logits.argmax(-1)
        best = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        if not bool((torch.isfinite(best) | ~where).all()):
            raise ValueError(NO_LEGAL_TOKEN)
        return tokens
    u = rand_rows(logits.shape[:-1], generator, device=logits.device, dtype=torch.float64, purpose="token sampling")
    if temperature != 1.0 or probs is None:
        probs = torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
    return inverse_cdf(probs.flatten(0, -2), u.flatten(), check=where.flatten()).view(u.shape)


def inverse_cdf(probs: Tensor, u: Tensor, block: int = CDF_BLOCK, check: Tensor | None = None) -> Tensor:
    """Token ``v`` with ``cdf[v - 1] <= u * total < cdf[v]`` for ``probs [N, V]`` and uniforms ``u [N]``.

    Two levels: sums of vocabulary blocks (in ``probs``' dtype; one read, no ``[N, V]`` output)
    locate the block, then a float64 cumulative sum of that one block locates the token. Tokens
    with zero probability own an empty interval, so they are never returned.  A row without mass
    (all ``-inf`` logits, or NaN) is an error where ``check [N]`` (default: every row) is True;
    elsewhere its token is an arbitrary in-range id nobody reads.
    """
    n, vocab_size = probs.shape
    num_blocks = -(-vocab_size // block)
    full = (vocab_size // block) * block
    sums = probs.new_zeros(n, num_blocks)
    if full:
        sums[:, : full // block] = probs[:, :full].unflatten(-1, (-1, block)).sum(-1)
    if full < vocab_size:
        sums[:, -1] = probs[:, full:].sum(-1)
    block_cdf = sums.to(torch.float64).cumsum(-1)
    target = u.to(torch.float64) * block_cdf[:, -1]
    which = torch.searchsorted(block_cdf, target.unsqueeze(-1), right=True).squeeze(-1).clamp_max(num_blocks - 1)
    before = torch.where(which > 0, block_cdf.gather(-1, (which - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1), 0.0)
    cols = which.unsqueeze(-1) * block + torch.arange(block, device=probs.device)
    inside = probs.gather(-1, cols.clamp_max(vocab_size - 1)).to(torch.float64).masked_fill(cols >= vocab_size, 0.0)
    local = torch.searchsorted(inside.cumsum(-1), (target - before).unsqueeze(-1), right=True).squeeze(-1)
    drawn = (which * block + local.clamp_max(block - 1)).clamp_max(vocab_size - 1)
    # Rounding (block sums against the block's own cumulative sum, or a target on the total mass)
    # can land on a token without mass; fix those rare rows only.
    landed = probs.gather(-1, drawn.unsqueeze(-1)).squeeze(-1)
    no_mass = ~(block_cdf[:, -1] > 0) | ~torch.isfinite(block_cdf[:, -1])  # all -inf logits, or NaN
    wrong = (landed <= 0) & ~no_mass  # a row without mass has no token to move to
    checked = no_mass if check is None else no_mass & check
    any_no_mass, any_wrong = torch.stack((checked.any(), wrong.any())).tolist()  # one host sync
    if any_no_mass:
        raise ValueError(NO_LEGAL_TOKEN)
    if any_wrong:
        drawn[wrong] = _nearest_with_mass(probs[wrong], drawn[wrong])
    return drawn


def _nearest_with_mass(probs: Tensor, drawn: Tensor) -> Tensor:
    """The last token with mass at or before ``drawn``, else the first one after it."""
    vocab = torch.arange(probs.shape[-1], device=probs.device)
    has_mass = probs > 0
    before = torch.where(has_mass & (vocab <= drawn.unsqueeze(-1)), vocab, -1).amax(-1)
    after = torch.where(has_mass, vocab, probs.shape[-1]).amin(-1)
    return torch.where(before >= 0, before, after)
