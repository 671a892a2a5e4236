"""The unified model reading its own drawings: the prompt's likelihood as each image's caption.

A unified model can read images better than it draws them (the shapes model of the third H200 run:
VQA 97 %, caption attribute recall 97 %, text to image 42 %, docs/results.md).  So it can check its
own samples: score each candidate image by how well the prompt fits it *as a caption*, and keep
the best of several candidates per prompt (best-of-K reranking with the model itself as the
verifier; LaViDa-O uses its understanding to check and redo its generations the same way, through
self-reflection).  Nothing outside the one set of weights is needed.

The score is MDLM's evidence lower bound (Sahoo et al. 2024) on ``log p(caption | image)`` under
the captioning task: ``E_r [ (1/r) sum over masked text positions of log p(token) ]`` with mask
rate ``r`` uniform on (0, 1].  It is estimated by stratified quadrature (``num_masks`` rates at the
midpoints ``(m + 1/2) / M``), with the masked positions drawn from a per-prompt generator, so every
candidate of a prompt is scored under the same masks and their differences come from the images.
The image is the captioning task's prefix, so it is encoded once per candidate (prefix KV cache)
and each mask costs one pass over the text positions only.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from unigen.diffusion.tasks import TASKS, TaskInputs
from unigen.diffusion.token_space import TokenSpace
from unigen.modules.transformer import UnifiedTransformer


@torch.inference_mode()
def caption_elbo(net: UnifiedTransformer, space: TokenSpace, codes: Tensor, captions: Sequence[str],
                 generators: Sequence[torch.Generator], num_masks: int = 4) -> Tensor:
    """[B] lower bound on ``log p(captions[b] | image codes[b])`` in nats (module docstring).
    ``generators`` (one per row, CPU) draw each row's masked positions; equal generator states give
    equal masks, which is what makes two images' scores comparable."""
    if num_masks < 1:
        raise ValueError(f"num_masks must be >= 1, got {num_masks}")
    if len(generators) != len(captions) or codes.shape[0] != len(captions):
        raise ValueError(f"got {codes.shape[0]} images, {len(captions)} captions and "
                         f"{len(generators)} generators; caption_elbo needs one of each per row")
    device = codes.device
    tb = TASKS.get("caption")().build(TaskInputs(codes, captions=list(captions)), space)
    tokens, prefix = tb.tokens.to(device), tb.prefix[0].to(device)
    positions = tb.target[0].nonzero().squeeze(-1).to(device)  # the text segment: caption, <eos>, pads
    truth = tokens[:, positions]
    n = positions.numel()
    # one uniform per (row, mask, position), drawn on the host: a row's masks follow its generator
    draws = torch.stack([torch.rand(num_masks, n, generator=g) for g in generators]).to(device)
    cache = net.prefill(tokens, prefix)
    total = torch.zeros(len(captions), device=device)
    for m in range(num_masks):
        count = max(1, round((m + 0.5) / num_masks * n))
        # the `count` smallest draws of each row are its masked positions: a uniform subset
        masked = draws[:, m].argsort(dim=1)[:, :count]
        hide = torch.zeros_like(truth, dtype=torch.bool).scatter_(1, masked, True)
        inputs = tokens.clone()
        inputs[:, positions] = truth.masked_fill(hide, space.mask_id)
        logits = net.forward_cached(inputs, cache, positions, vocab_limit=space.vocab.text_size)
        logp = logits.float().log_softmax(-1).gather(-1, truth.unsqueeze(-1)).squeeze(-1)
        total += (logp * hide).sum(1) * (n / count)  # (1/r) with r the exact masked fraction
    return total / num_masks


def best_of(scores: Tensor) -> Tensor:
    """[K, B] scores of K candidates per row -> [B] index of each row's best candidate (the first
    one on ties, so candidate 0, the plain sample, wins when nothing tells them apart)."""
    return scores.argmax(dim=0)


__all__ = ["best_of", "caption_elbo"]
