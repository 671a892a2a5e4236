"""Token sampling from logits: temperature, greedy, and inverse-CDF categorical draws.

Sampling uses ONE uniform number per position (inverse CDF) instead of Gumbel-max over the whole
vocabulary: memory stays ``[B, S]`` for the draws, and per-row generators stay batch invariant.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unigen.sampling.rng import GeneratorArg, rand_rows


def legal_logits(logits: Tensor, mask_id: int) -> Tensor:
    """Float32 copy of ``logits`` with ``mask_id`` forbidden: a sampler must never emit the mask token."""
    out = logits.to(torch.float32, copy=True)  # one copy whatever the input dtype; the caller's logits stay intact
    if mask_id < out.shape[-1]:
        out[..., mask_id] = float("-inf")
    if not torch.isfinite(out.amax(-1)).all():
        raise ValueError("logits give no legal token at some position (all -inf once mask_id is removed, or NaN)")
    return out


def sample_tokens(logits: Tensor, where: Tensor, temperature: float, generator: GeneratorArg) -> Tensor:
    """Sample a token at every position of ``logits [B, S, V]`` where ``where [B, S]`` is True.

    Temperature 0 is greedy (argmax, no random draw). Otherwise one uniform per position of every row
    is drawn (whether or not the position is sampled) so the draws a row consumes never depend on its
    state or its batch. Positions outside ``where`` get argmax (callers ignore them).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    tokens = logits.argmax(-1)
    if temperature == 0:
        return tokens
    u = rand_rows(logits.shape[:-1], generator, device=logits.device, dtype=torch.float64, purpose="token sampling")
    if not where.any():
        return tokens
    probs = torch.softmax(logits[where].double() / temperature, dim=-1)
    tokens[where] = inverse_cdf(probs, u[where])
    return tokens


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Token ``v`` with ``cdf[v - 1] <= u * total < cdf[v]`` for ``probs [N, V]`` and uniforms ``u [N]``.

    Tokens with zero probability own an empty interval, so they are never returned.
    """
    cdf = probs.cumsum(-1)
    target = u.to(cdf.dtype) * cdf[:, -1]
    drawn = torch.searchsorted(cdf, target.unsqueeze(-1), right=True).squeeze(-1)
    # Rounding can push ``target`` onto the total mass and land past the last token with mass; fix
    # those rare rows only (a full [N, V] scan per step would cost more than the draw itself).
    vocab_size = probs.shape[-1]
    landed = probs.gather(-1, drawn.clamp_max(vocab_size - 1).unsqueeze(-1)).squeeze(-1)
    wrong = (drawn >= vocab_size) | (landed <= 0)
    if bool(wrong.any()):
        vocab = torch.arange(vocab_size, device=probs.device)
        drawn[wrong] = torch.where(probs[wrong] > 0, vocab, -1).amax(-1)
    return drawn
