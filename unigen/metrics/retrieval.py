"""Image<->text retrieval accuracy of a contrastive model (the CLIP evaluation of Radford et al.,
2021), made duplicate-aware: synthetic data repeats captions, so a retrieved item counts as right
when its caption equals the query's, not only when it is the query's own pair."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from unigen.metrics.text_normalize import normalize_caption


def _caption_groups(captions: Sequence[str]) -> Tensor:
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(normalize_caption(c), len(ids)) for c in captions])


def retrieval_accuracy(image_embeddings: Tensor, text_embeddings: Tensor, captions: Sequence[str],
                       ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy both ways over a set of N paired (image, caption) rows.

    Returns ``i2t_top{k}``, ``t2i_top{k}`` and ``chance_top1`` (the expected top-1 of random
    rankings, which duplicates raise above 1/N)."""
    n = image_embeddings.shape[0]
    if text_embeddings.shape[0] != n or len(captions) != n:
        raise ValueError(f"got {n} images, {text_embeddings.shape[0]} texts, "
                         f"{len(captions)} captions")
    if max(ks) > n:
        raise ValueError(f"top-{max(ks)} retrieval needs at least {max(ks)} pairs, got {n}")
    img = torch.nn.functional.normalize(image_embeddings.double(), dim=-1)
    txt = torch.nn.functional.normalize(text_embeddings.double(), dim=-1)
    sims = img @ txt.T  # [image, text]
    groups = _caption_groups(captions)
    out: dict[str, float] = {}
    for name, scores in (("i2t", sims), ("t2i", sims.T)):
        ranked = scores.topk(max(ks), dim=1).indices  # [query, k]
        hit = groups[ranked] == groups[:, None]
        for k in ks:
            out[f"{name}_top{k}"] = hit[:, :k].any(dim=1).double().mean().item()
    same = (groups[:, None] == groups[None, :]).double().sum(dim=1)
    out["chance_top1"] = (same / n).mean().item()
    return out
