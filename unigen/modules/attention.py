"""Multi-head self-attention on ``F.scaled_dot_product_attention`` (flash / memory-efficient
kernels come through SDPA when the device has them; nothing CUDA-only is imported here), or on
FlexAttention for patterns SDPA can only take as a dense mask.

Which positions may attend to which is an :data:`AttentionPattern`, built once per forward pass
by :func:`attention_pattern` and shared by every layer:

* ``None``: every position sees every other (FlashAttention-eligible);
* :data:`CAUSAL`: SDPA's own ``is_causal`` (FlashAttention-eligible, no mask in memory);
* a bool tensor (True = may attend): SDPA with a dense mask, which rules out FlashAttention;
* a ``BlockMask``: FlexAttention (Dong et al. 2024), which skips fully masked blocks and needs no
  dense mask; compiled on first use, since its eager form materialises every score.  It trains
  on CUDA only (torch has no FlexAttention backward on the CPU); on the CPU it runs forward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from unigen.modules.norm import RMSNorm
from unigen.modules.position import apply_rotary

ATTENTION_BACKENDS = ("sdpa", "flex")


class _Causal:
    """Marker pattern: each position attends to itself and the positions before it."""

    def __repr__(self) -> str:
        return "CAUSAL"


CAUSAL = _Causal()
AttentionPattern = Union[None, Tensor, BlockMask, _Causal]


def check_attention_backend(backend: str, dropout: float = 0.0) -> str:
    """``backend`` if it is one of :data:`ATTENTION_BACKENDS`; one error naming the choices (or
    FlexAttention's missing dropout) otherwise."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {list(ATTENTION_BACKENDS)}, got {backend!r}")
    if backend == "flex" and dropout > 0:
        raise ValueError("attention: flex has no attention dropout; use sdpa or dropout: 0")
    return backend


def prefix_attention_mask(prefix: Tensor) -> Tensor:
    """Bool [B, 1, S, S] (True = may attend): a prefix query attends only to prefix keys; any other
    query attends to every key."""
    return (~prefix)[:, None, :, None] | prefix[:, None, None, :]


def attention_pattern(backend: str, batch: int, length: int, device: torch.device,
                      prefix: Tensor | None = None, causal: bool = False) -> AttentionPattern:
    """The pattern for ``length`` positions: full (no ``prefix``, not ``causal``), causal, or
    prefix attention (``prefix`` [B, S] bool: a prefix query sees only prefix keys, any other
    query sees every key; LaViDa), in the form ``backend`` runs."""
    if causal and prefix is not None:
        raise ValueError("causal and prefix attention are exclusive: pass one of them")
    if prefix is None and not causal:
        return None
    if backend == "sdpa":
        return CAUSAL if causal else prefix_attention_mask(prefix)
    mask_mod: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    if causal:
        def mask_mod(b, h, q, kv):
            return q >= kv
        batch = None  # the same for every row
    else:
        def mask_mod(b, h, q, kv):
            return ~prefix[b, q] | prefix[b, kv]
    return create_block_mask(mask_mod, batch, None, length, length, device=device)


@functools.cache
def _compiled_flex_attention() -> Callable[..., Tensor]:
    return torch.compile(flex_attention, dynamic=False)


def run_flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask) -> Tensor:
    """FlexAttention, compiled: inside a compiled block the block's own graph fuses it; outside,
    a compiled copy of the kernel runs (eager FlexAttention materialises the scores)."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
        raise RuntimeError("attention: flex cannot train on the CPU (FlexAttention has no CPU "
                           "backward); use attention: sdpa there")
    fn = flex_attention if torch.compiler.is_compiling() else _compiled_flex_attention()
    # under autocast q/k/v may differ in dtype (qk-norm); FlexAttention wants one
    return fn(q, k.to(q.dtype), v.to(q.dtype), block_mask=block_mask)


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

    ``attn_mask``: an :data:`AttentionPattern`; a bool tensor (True = may attend) broadcasts to
    [B, heads, S_q, S_k] and may be rectangular (cached decoding).  ``past`` holds
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

    def forward(self, x: Tensor, attn_mask: AttentionPattern = None,
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
        if isinstance(attn_mask, BlockMask):
            out = run_flex_attention(q, k, v, attn_mask)
        else:
            causal = attn_mask is CAUSAL
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else attn_mask,
                                                 is_causal=causal,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(out, "b h s d -> b s (h d)")), new_kv

