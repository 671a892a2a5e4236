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
  on CUDA only (torch has no FlexAttention backward on the CPU); on the CPU it runs forward;
* a :class:`PrefixSplit`: prefix attention on sequences reordered by :class:`PrefixOrder` (each
  row's prefix first, rows grouped by prefix pattern), as two SDPA calls per group with no mask
  at all, so FlashAttention-class kernels run it (the ``split`` backend).
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
from unigen.transfer import to_device

ATTENTION_BACKENDS = ("sdpa", "flex", "split")


class _Causal:
    """Marker pattern: each position attends to itself and the positions before it."""

    def __repr__(self) -> str:
        return "CAUSAL"


CAUSAL = _Causal()


@dataclass(frozen=True)
class PrefixSplit:
    """Prefix attention over reordered rows: ``groups`` holds ``(first row, end row, P)`` for each
    run of rows that share one prefix pattern and have their ``P`` prefix positions first."""

    groups: tuple[tuple[int, int, int], ...]


AttentionPattern = Union[None, Tensor, BlockMask, PrefixSplit, _Causal]


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
    if backend == "split" and prefix is not None:
        raise ValueError("attention: split runs prefix attention on reordered sequences "
                         "(PrefixOrder); build its PrefixSplit from PrefixOrder.of(prefix)")
    if backend in ("sdpa", "split"):
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
class PrefixOrder:
    """Where each row and position goes so that prefix attention needs no mask.

    Prefix attention (LaViDa) lets a prefix query see the prefix keys only and any other query
    see every key.  Put each row's prefix positions first and the pattern becomes two dense
    blocks: the first ``P`` queries over the first ``P`` keys, the rest over all keys.  Rows with
    the same pattern (a batch has one per task) are made neighbours, so each group is two SDPA calls
    on slices, with no mask.  Position information is added before reordering (learned
    positions) or travels with the positions (rotary angles of :attr:`positions`), so the network
    computes the same function; :meth:`restore` puts the outputs back in place.

    ``rows`` [B]: the source row of each reordered row; ``positions`` [B, S]: the source
    position of each reordered position.  Built on the host: the groups' bounds are Python ints.
    """

    rows: Tensor
    positions: Tensor
    restore_rows: Tensor
    restore_positions: Tensor
    split: PrefixSplit

    @classmethod
    def of(cls, prefix: Tensor) -> "PrefixOrder":
        """The order for ``prefix`` [B, S] bool (on the host; a device tensor is copied back)."""
        prefix = prefix.cpu()
        patterns, which = torch.unique(prefix, dim=0, return_inverse=True)
        rows = torch.sort(which, stable=True).indices
        counts = torch.bincount(which, minlength=patterns.shape[0]).tolist()
        # stable sorts keep the positions' own order inside the prefix and inside the rest
        orders = torch.sort((~patterns).to(torch.uint8), dim=1, stable=True).indices
        positions = orders[which[rows]]
        bounds, start = [], 0
        for count, p in zip(counts, patterns.sum(1).tolist()):
            bounds.append((start, start + count, p))
            start += count
        restore_rows = torch.argsort(rows)
        restore_positions = torch.argsort(positions, dim=1)[restore_rows]
        return cls(rows, positions, restore_rows, restore_positions, PrefixSplit(tuple(bounds)))

    def to(self, device: torch.device | str) -> "PrefixOrder":
        return PrefixOrder(*(to_device(t, device) for t in (
            self.rows, self.positions, self.restore_rows, self.restore_positions)), self.split)

    def apply(self, x: Tensor) -> Tensor:
        """[B, S, ...] in the original order -> reordered."""
        return x[self.rows[:, None], self.positions]

    def restore(self, x: Tensor) -> Tensor:
        """[B, S, ...] reordered -> the original order."""
        return x[self.restore_rows[:, None], self.restore_positions]


@torch.compiler.disable
def split_prefix_attention(q: Tensor, k: Tensor, v: Tensor, split: PrefixSplit,
                           dropout_p: float = 0.0) -> Tensor:
    """Prefix attention of reordered ``q``/``k``/``v`` [B, heads, S, Dh] as SDPA calls without a
    mask (see :class:`PrefixOrder`).  Outside ``torch.compile``: a compiled block would guard on
    the groups' bounds and recompile for every new task mix in a batch; the SDPA kernels are not
    fused with anything anyway."""
    length, outs = q.shape[2], []
    for start, stop, p in split.groups:
        q_g, k_g, v_g = q[start:stop], k[start:stop], v[start:stop]
        parts = []
        if p:
            parts.append(F.scaled_dot_product_attention(q_g[:, :, :p], k_g[:, :, :p], v_g[:, :, :p],
                                                        dropout_p=dropout_p))
        if p < length:
            parts.append(F.scaled_dot_product_attention(q_g[:, :, p:], k_g, v_g, dropout_p=dropout_p))
        outs.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    return torch.cat(outs) if len(outs) > 1 else outs[0]


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
        # qk-norm's float32 weight promotes bf16 q/k under autocast: back to the projection's
        # dtype, so every backend (SDPA casts, FlexAttention and the KV caches do not) runs in it
        return q.to(v.dtype), k.to(v.dtype), v

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
        elif isinstance(attn_mask, PrefixSplit):
            out = split_prefix_attention(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        else:
            causal = attn_mask is CAUSAL
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else attn_mask,
                                                 is_causal=causal,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(out, "b h s d -> b s (h d)")), new_kv

