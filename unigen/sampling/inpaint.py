"""Inpainting / infilling needs no special sampler: mask the region, keep the rest as given, decode."""

from __future__ import annotations

import torch
from torch import Tensor


def inpaint_tokens(tokens: Tensor, region_mask: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
    """Mask ``region_mask`` of ``tokens [B, S]`` for regeneration; returns ``(masked_tokens, is_masked)``.

    For image tokens ``[B, h, w]`` flatten first (``einops.rearrange(codes, "b h w -> b (h w)")``).
    """
    if region_mask.shape != tokens.shape or region_mask.dtype != torch.bool:
        raise ValueError(
            f"region_mask must be a bool tensor shaped like tokens {tuple(tokens.shape)}, "
            f"got {region_mask.dtype} {tuple(region_mask.shape)}"
        )
    outside = tokens[~region_mask]
    if bool((outside == mask_id).any()):
        raise ValueError(f"tokens outside the region already hold mask_id={mask_id}")
    return tokens.masked_fill(region_mask, mask_id), region_mask.clone()
