"""Autoregressive decoding of the image segment: one token per network call, in raster order.

The baseline the masked samplers are measured against (decoder-only image generation as in
LlamaGen, Sun et al. 2024, and Parti/DALL-E): the :class:`~unigen.modules.transformer.UnifiedTransformer`
run with a causal mask, the prompt ``[task][bos] text [soi]`` encoded once (*prefill*), then each image
token sampled from the logits of the position before it and fed back.  :func:`generate_image_tokens`
keeps every layer's keys/values in a :class:`KVCache` so a step costs one position; with
``use_cache=False`` it reruns the whole causal sequence each step (the reference the cache must equal).

Randomness follows :mod:`unigen.sampling.rng`: one generator for the batch or one per row (then a row's
tokens do not depend on its batch).  Classifier-free guidance reuses
:class:`~unigen.sampling.guidance.ClassifierFreeGuidance`: conditional and unconditional rows (the
prompt replaced by ``<mask>``, as in training) run as one batch of 2B rows, combined on log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unigen.diffusion.vocab import IMAGE
from unigen.modules.transformer import KV, UnifiedTransformer, causal_attention_mask
from unigen.sampling.categorical import legal_logits, sample_tokens
from unigen.sampling.decode import DecodeResult
from unigen.sampling.guidance import ClassifierFreeGuidance, GuidedBatch, step_progress
from unigen.sampling.rng import GeneratorArg, check_generator


@dataclass
class KVCache:
    """Keys/values of every layer for the first ``length`` positions, in buffers allocated once for
    ``max_length`` positions (allocated on the first write, in the keys' dtype and device)."""

    depth: int
    max_length: int
    length: int = 0
    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)

    def past(self, layer: int) -> KV | None:
        if self.length == 0:
            return None
        return self.keys[layer][:, :, : self.length], self.values[layer][:, :, : self.length]

    def write(self, layer: int, kv: KV) -> None:
        """Store the new positions' keys/values ``[B, H, n, Dh]`` after the cached ones."""
        k, v = kv
        if len(self.keys) <= layer:
            shape = (*k.shape[:2], self.max_length, k.shape[-1])
            self.keys.append(k.new_empty(shape))
            self.values.append(v.new_empty(shape))
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v


def extend(net: UnifiedTransformer, tokens: Tensor, cache: KVCache) -> Tensor:
    """Run the causal network on the ``n`` positions after the cached ones; returns their final
    hidden states ``[B, n, D]`` and appends their keys/values to ``cache``."""
    n = tokens.shape[1]
    if cache.length + n > cache.max_length:
        raise ValueError(f"KV cache holds {cache.max_length} positions, asked for {cache.length + n}")
    idx = torch.arange(cache.length, cache.length + n, device=tokens.device)
    x = net.embed(tokens, idx)
    rotary = net.rotary_angles(idx)
    # a single new query may see every cached key and itself: no mask needed (and SDPA's fastest path)
    mask = causal_attention_mask(n, cache.length + n, tokens.device) if n > 1 else None
    for layer, block in enumerate(net.blocks):
        x, kv = block(x, mask, rotary, cache.past(layer))
        cache.write(layer, kv)
    cache.length += n
    return net.norm(x)


def sample_next(logits: Tensor, temperature: float, top_k: int | None, generator: GeneratorArg,
                mask_id: int) -> Tensor:
    """One token per row from ``logits [B, V]``: temperature (0 = greedy), optional top-k filtering
    (Fan et al. 2018), inverse-CDF draws with one uniform per row (batch invariant with per-row
    generators)."""
    logits = legal_logits(logits, mask_id)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    rows = torch.ones(logits.shape[0], 1, dtype=torch.bool, device=logits.device)
    return sample_tokens(logits[:, None], rows, temperature, generator)[:, 0]


class _Guide:
    """Builds the network rows (conditional, plus unconditional under guidance) and combines their
    next-token logits; the unconditional rows follow the same sampled tokens."""

    def __init__(self, guidance: ClassifierFreeGuidance | None, num_tokens: int) -> None:
        self.guidance, self.num_tokens = guidance, num_tokens

    def rows(self, tokens: Tensor, cond_mask: Tensor | None, mask_id: int) -> Tensor:
        if self.guidance is None:
            return tokens
        if cond_mask is None:
            raise ValueError("guidance needs cond_mask= (the prompt positions to drop for the unconditional pass)")
        return torch.cat((tokens, tokens.masked_fill(cond_mask, mask_id)))

    def combine(self, logits: Tensor, step: int) -> Tensor:
        """``logits [B or 2B, V]`` -> guided ``[B, V]`` for image token ``step``."""
        if self.guidance is None:
            return logits
        scale = self.guidance.scale_at(step_progress(step, self.num_tokens))
        # both passes always run: the KV cache of the unconditional rows must stay complete
        return self.guidance.combine(logits[:, None], GuidedBatch(logits, "both", scale))[:, 0]

    def repeat(self, token: Tensor) -> Tensor:
        return token if self.guidance is None else torch.cat((token, token))


@torch.no_grad()
def generate_image_tokens(net: UnifiedTransformer, tokens: Tensor, *, mask_id: int,
                          temperature: float = 1.0, top_k: int | None = None,
                          generator: GeneratorArg = None,
                          guidance: ClassifierFreeGuidance | None = None,
                          cond_mask: Tensor | None = None, use_cache: bool = True) -> DecodeResult:
    """Fill the image segment of ``tokens [B, S]`` (the prompt part given) token by token.

    Args:
        net: the transformer, trained with ``causal=True`` (:class:`~unigen.training.ar_module.AutoregressiveModule`).
        tokens: full-length sequences; the image segment's values are ignored and overwritten.
        mask_id: the ``<mask>`` id (never sampled; fills the prompt of unconditional rows).
        temperature, top_k: sampling (temperature 0 = greedy, no random draws).
        generator: one ``torch.Generator`` or one per row.
        guidance, cond_mask: classifier-free guidance and the prompt positions it drops.
        use_cache: KV cache (one position per step) or full causal recomputation (reference).
    Returns a :class:`~unigen.sampling.decode.DecodeResult` (calls = network calls made).
    """
    seq = net.sequence
    if tokens.dim() != 2 or tokens.shape[1] != seq.length:
        raise ValueError(f"tokens must be [B, {seq.length}], got {tuple(tokens.shape)}")
    check_generator(generator, tokens.shape[0])
    if temperature > 0 and generator is None:
        raise ValueError("sampling with temperature > 0 needs a generator (or one per row); "
                         "unigen never samples from the global RNG")
    start, n = seq.image.start, seq.num_image_tokens
    guide = _Guide(guidance, n)
    out = tokens.clone()
    rows = guide.rows(out, cond_mask, mask_id)
    modality = torch.full((rows.shape[0],), IMAGE, dtype=torch.long, device=rows.device)
    cache = KVCache(len(net.blocks), start + n - 1) if use_cache else None
    hidden = extend(net, rows[:, :start], cache)[:, -1] if use_cache else None
    for step in range(n):
        if not use_cache:
            # positions from ``start + step`` on hold stale values; the causal mask hides them
            hidden = net.hidden_states(rows, causal=True)[:, start + step - 1]
        logits = guide.combine(net.logits(hidden, modality), step)
        token = sample_next(logits, temperature, top_k, generator, mask_id)
        out[:, start + step] = token
        rows[:, start + step] = guide.repeat(token)
        if use_cache and step < n - 1:
            hidden = extend(net, rows[:, start + step : start + step + 1], cache)[:, -1]
    return DecodeResult(out, num_model_calls=n, steps_taken=n, num_model_rows=n * rows.shape[0])
