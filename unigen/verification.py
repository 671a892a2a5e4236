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
and each mask costs one pass over the text positions only; a model trained without prefix attention
is read as it was trained, with full attention and no cache.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from unigen.diffusion.tasks import TASKS, TaskInputs
from unigen.diffusion.token_space import TokenSpace
from unigen.modules.transformer import UnifiedTransformer


@torch.inference_mode()
def caption_elbos(net: UnifiedTransformer, space: TokenSpace, codes: Tensor,
                  caption_sets: Sequence[Sequence[str]], generators: Sequence[torch.Generator],
                  num_masks: int = 4) -> Tensor:
    """[C, B] lower bounds on ``log p(caption_sets[c][b] | image codes[b])`` in nats (module
    docstring), every caption of a row read under the same masks.  The image is encoded once for
    all ``C`` sets: it is the captioning task's prefix, which never attends to the text.
    ``generators`` (one per row, CPU) draw each row's masked positions; equal generator states
    give equal masks, which is what makes two images' scores comparable."""
    if num_masks < 1:
        raise ValueError(f"num_masks must be >= 1, got {num_masks}")
    rows = codes.shape[0]
    if len(generators) != rows or any(len(c) != rows for c in caption_sets):
        raise ValueError(f"got {rows} images, {[len(c) for c in caption_sets]} captions and "
                         f"{len(generators)} generators; caption_elbo needs one of each per row")
    device = codes.device
    task = TASKS.get("caption")()
    batches = [task.build(TaskInputs(codes, captions=list(c)), space) for c in caption_sets]
    prefix = batches[0].prefix[0].to(device)
    positions = batches[0].target[0].nonzero().squeeze(-1).to(device)  # caption, <eos>, pads
    n = positions.numel()
    # one uniform per (row, mask, position), drawn on the host: a row's masks follow its generator
    draws = torch.stack([torch.rand(num_masks, n, generator=g) for g in generators]).to(device)
    hidden = []
    for m in range(num_masks):
        count = max(1, round((m + 0.5) / num_masks * n))
        # the `count` smallest draws of each row are its masked positions: a uniform subset
        masked = draws[:, m].argsort(dim=1)[:, :count]
        hidden.append((count, torch.zeros(rows, n, dtype=torch.bool, device=device)
                       .scatter_(1, masked, True)))
    if getattr(net, "prefix_attention", True):
        cache = net.prefill(batches[0].tokens.to(device), prefix)

        def read(inputs: Tensor) -> Tensor:
            return net.forward_cached(inputs, cache, positions, vocab_limit=space.vocab.text_size)
    else:  # trained with full attention: the image reads the text, so no prefix cache either
        def read(inputs: Tensor) -> Tensor:
            return net(inputs, torch.zeros_like(inputs, dtype=torch.bool), positions=positions,
                       vocab_limit=space.vocab.text_size)
    out = []
    for tb in batches:
        tokens = tb.tokens.to(device)
        truth = tokens[:, positions]
        total = torch.zeros(rows, device=device)
        for count, hide in hidden:
            inputs = tokens.clone()
            inputs[:, positions] = truth.masked_fill(hide, space.mask_id)
            logits = read(inputs)
            logp = logits.float().log_softmax(-1).gather(-1, truth.unsqueeze(-1)).squeeze(-1)
            total += (logp * hide).sum(1) * (n / count)  # (1/r) with r the exact masked fraction
        out.append(total / num_masks)
    return torch.stack(out)


def caption_elbo(net: UnifiedTransformer, space: TokenSpace, codes: Tensor, captions: Sequence[str],
                 generators: Sequence[torch.Generator], num_masks: int = 4) -> Tensor:
    """[B] lower bound on ``log p(captions[b] | image codes[b])`` (:func:`caption_elbos` of one set)."""
    return caption_elbos(net, space, codes, [captions], generators, num_masks)[0]


def contrastive_caption_score(net: UnifiedTransformer, space: TokenSpace, codes: Tensor,
                              captions: Sequence[str], contrast: Sequence[Sequence[str]],
                              generators: Sequence[torch.Generator], num_masks: int = 4) -> Tensor:
    """[B] log-probability that each image shows its caption rather than one of the ``contrast``
    captions (each a set of B), with the captions' ELBOs as their log-likelihoods: the caption's
    share of a softmax over all of them (a generative classifier's posterior under a uniform
    prior).  An image the model cannot read gives every caption a similar likelihood and scores
    near ``-log(1 + len(contrast))``; the plain ELBO can rank such an image above one that shows
    the caption, because a confident reading of a wrong image costs more than an unsure one."""
    elbos = caption_elbos(net, space, codes, [captions, *contrast], generators, num_masks)
    return elbos[0] - elbos.logsumexp(dim=0)


def best_of(scores: Tensor) -> Tensor:
    """[K, B] scores of K candidates per row -> [B] index of each row's best candidate (the first
    one on ties, so candidate 0, the plain sample, wins when nothing tells them apart)."""
    return scores.argmax(dim=0)


__all__ = ["best_of", "caption_elbo", "caption_elbos", "contrastive_caption_score"]
