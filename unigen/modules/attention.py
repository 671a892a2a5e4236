"""Multi-head self-attention on ``F.scaled_dot_product_attention`` (flash / memory-efficient
kernels come through SDPA when the device has them; nothing CUDA-only is imported here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from unigen.modules.norm import RMSNorm
from unigen.modules.position import apply_rotary


@dataclass
class KVBuffer:
    """Keys/values ``[B, heads, P + N, Dh]`` whose first ``P`` positions are cached.  A call on
    ``N`` new positions writes their keys/values into the last ``N`` slots in place and attends
    over the whole buffer: the same keys in the same order as concatenating, without copying the
    ``P`` cached positions at every decoding step (LaViDa's prefix cache re-reads the prefix,
    it need not rewrite it)."""

    keys: Tensor
    values: Tensor
    cached: int  # P: the leading positions that hold the cache

    @classmethod
    def holding(cls, keys: Tensor, values: Tensor, room: int) -> "KVBuffer":
        """A buffer holding ``keys``/``values`` with ``room`` free positions after them."""
        shape = (*keys.shape[:2], keys.shape[2] + room, keys.shape[3])
        buffer = cls(keys.new_empty(shape), values.new_empty(shape), keys.shape[2])
        buffer.keys[:, :, : buffer.cached] = keys
        buffer.values[:, :, : buffer.cached] = values
        return buffer

    def fill(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new positions after the cached ones; returns the whole buffer."""
        if new_keys.shape[2] != self.keys.shape[2] - self.cached or new_keys.shape[:2] != self.keys.shape[:2]:
            raise ValueError(f"a KV buffer of {tuple(self.keys.shape)} with {self.cached} cached "
                             f"positions takes exactly the rest, got {tuple(new_keys.shape)}")
        self.keys[:, :, self.cached:] = new_keys
        self.values[:, :, self.cached:] = new_values
        return self.keys, self.values


class SelfAttention(nn.Module):
    """Self-attention with optional qk-norm (Dehghani et al. 2023, ViT-22B) and rotary angles.

    ``attn_mask``: bool, True = may attend; broadcastable to [B, heads, S_q, S_k].  ``past`` holds
    cached keys/values [B, heads, S_past, Dh] that the queries also attend to, concatenated before
    the new ones, or a :class:`KVBuffer` that already has room for them (prefix KV cache).
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.dropout = dropout

    def project_kv(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = rearrange(self.qkv(x), "b s (three h d) -> three b h s d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        return q, k, v

    def forward(self, x: Tensor, attn_mask: Tensor | None = None,
                rotary: tuple[Tensor, Tensor] | None = None,
                past: tuple[Tensor, Tensor] | KVBuffer | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.project_kv(x, rotary)
        new_kv = (k, v)
        if isinstance(past, KVBuffer):
            k, v = past.fill(k, v)
        elif past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(out, "b h s d -> b s (h d)")), new_kv

