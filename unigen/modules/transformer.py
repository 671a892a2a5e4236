"""The unified bidirectional transformer over the shared token space.

Pre-norm blocks (RMSNorm, SDPA attention with optional qk-norm, SwiGLU), token + modality embeddings,
modality-aware positions (:mod:`unigen.modules.position`), a recipe-chosen output head and logits
restricted to each position's modality.  One network serves text-to-image, captioning, VQA, joint
generation and inpainting (Show-o, UniDisc, MMaDA); tasks only decide which tokens are masked.

*Prefix attention* (LaViDa): with ``prefix`` passed, prefix positions (the task's condition segment:
the image for captioning/VQA, the prompt for text-to-image) attend only to the prefix, so their
keys/values do not depend on what is being decoded.  That is what makes the prefix KV cache exact:
:meth:`prefill` encodes the prefix once and :meth:`forward_cached` recomputes only the rest.  The
prefix is a property of the task, not of the batch, so results never depend on batch composition.

``attention_backend`` picks the kernel of the full forward pass (``sdpa``, ``flex`` or ``split``,
:mod:`unigen.modules.attention`); it is how the network runs, not what it computes, so it is not
part of the saved config.  ``split`` runs prefix attention on sequences reordered so that each
row's prefix comes first (:class:`~unigen.modules.attention.PrefixOrder`): no mask, so SDPA can
pick a FlashAttention-class kernel.

``activation_checkpointing`` (a plain attribute, off by default, likewise not saved): the full
forward passes run each block under :func:`torch.utils.checkpoint.checkpoint` while grad is on,
so backward recomputes a block's activations instead of keeping them (Chen et al. 2016, "Training
Deep Nets with Sublinear Memory Cost"): about one extra forward pass of compute for the memory of
one hidden state per block.  Same loss and gradients (the RNG state is restored, so dropout
recomputes the same masks); inference paths are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unigen.diffusion.vocab import IMAGE, SequenceLayout, VocabLayout
from unigen.modules.attention import (
    AttentionPattern, KVBuffer, PrefixOrder, SelfAttention, attention_pattern,
    check_attention_backend,
)
from unigen.modules.heads import build_head
from unigen.modules.mlp import SwiGLU
from unigen.modules.norm import RMSNorm
from unigen.modules.position import LearnedPositions, MultimodalRotary
from unigen.transfer import to_device

KV = tuple[Tensor, Tensor]


def check_transformer_size(dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
    """One clear error for a transformer size that cannot work (a zero width builds empty layers,
    zero blocks a model that only embeds; both would train without complaint)."""
    for name, value in (("dim", dim), ("depth", depth), ("heads", heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, dropout: float) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = SelfAttention(dim, heads, qk_norm=qk_norm, dropout=dropout)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_ratio, dropout=dropout)

    def forward(self, x: Tensor, attn_mask: AttentionPattern, rotary: tuple[Tensor, Tensor] | None,
                past: KV | KVBuffer | None = None) -> tuple[Tensor, KV]:
        attn, kv = self.attn(self.norm1(x), attn_mask, rotary, past)
        x = x + attn
        return x + self.mlp(self.norm2(x)), kv


def causal_attention_mask(num_queries: int, num_keys: int | None = None, device=None) -> Tensor:
    """Bool [Q, K] (True = may attend) for the last ``Q`` of ``K`` positions: query ``i`` sees keys
    ``<= K - Q + i`` (decoder-only LMs; the autoregressive baseline, LlamaGen)."""
    num_keys = num_queries if num_keys is None else num_keys
    query_pos = torch.arange(num_keys - num_queries, num_keys, device=device)
    return torch.arange(num_keys, device=device)[None, :] <= query_pos[:, None]


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@dataclass
class PrefixCache:
    """Keys/values of the prefix positions for every layer, in buffers with room for the
    recomputed positions after them, and which positions are recomputed."""

    kv: list[KVBuffer]
    recompute_idx: Tensor  # [R] positions recomputed at every step
    cached_idx: Tensor  # [P] prefix positions whose K/V are cached

    def copy_(self, other: "PrefixCache") -> "PrefixCache":
        """Overwrite these keys/values in place with ``other``'s (same prefix pattern and batch
        shape): a CUDA graph captured on this cache then reads the new prefix."""
        if not torch.equal(self.cached_idx, other.cached_idx):
            raise ValueError("a prefix cache can only be refreshed with the same prefix positions")
        if [b.keys.shape for b in self.kv] != [b.keys.shape for b in other.kv]:
            raise ValueError("a prefix cache can only be refreshed by one of the same batch shape")
        for buffer, new in zip(self.kv, other.kv):
            buffer.keys.copy_(new.keys)
            buffer.values.copy_(new.values)
        return self


class UnifiedTransformer(nn.Module):
    def __init__(self, vocab: VocabLayout, sequence: SequenceLayout, dim: int = 256, depth: int = 6,
                 heads: int = 4, mlp_ratio: float = 4.0, qk_norm: bool = True,
                 position: str = "learned", head: str = "shared", dropout: float = 0.0,
                 prefix_attention: bool = True, head_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        check_transformer_size(dim, depth, heads, mlp_ratio)
        if position not in ("learned", "rope"):
            raise ValueError(f"position must be 'learned' or 'rope', got {position!r}")
        if list(vocab.extra) != list(sequence.extra):
            raise ValueError(f"the vocabulary's extra segments {list(vocab.extra)} differ from the "
                             f"sequence layout's {list(sequence.extra)}")
        self.vocab, self.sequence = vocab, sequence
        self.dim, self.depth, self.heads = dim, depth, heads
        # everything needed to rebuild the network (saved next to the weights)
        self.config = {"vocab": vocab.to_dict(), "sequence": sequence.to_dict(), "dim": dim,
                       "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio, "qk_norm": qk_norm,
                       "position": position, "head": head, "dropout": dropout}
        # how it was trained: condition positions attending only to the condition (LaViDa's prefix
        # attention, which the prefix cache needs) or full attention; decoding must do the same.
        # Recorded only when off, so configs of earlier pipelines read unchanged.
        self.prefix_attention = bool(prefix_attention)
        if not self.prefix_attention:
            self.config["prefix_attention"] = False
        if head_kwargs:  # the head's own options (a plugin head's rank, say), when there are any
            self.config["head_kwargs"] = dict(head_kwargs)
        self.position = position
        self._attention_backend = "sdpa"
        # recompute each block in backward instead of storing its activations (module docstring);
        # how the network trains, not what it computes: not in ``config``
        self.activation_checkpointing: bool = False
        self.token_emb = nn.Embedding(vocab.total_size, dim)
        self.modality_emb = nn.Embedding(vocab.num_modalities, dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.modality_emb.weight, std=0.02)
        length = sequence.length
        self.learned_pos = LearnedPositions(dim, length, sequence.grid) if position == "learned" else None
        self.rotary = MultimodalRotary(dim // heads) if position == "rope" else None
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qk_norm, dropout) for _ in range(depth))
        self.norm = RMSNorm(dim)
        # extra segments' sizes only when there are any: a head written for text + image still
        # serves every model without a further modality
        self.head = build_head(head, dim, vocab.text_size, vocab.image_size, vocab.extra, head_kwargs)
        self.register_buffer("modality", sequence.modality(), persistent=False)
        self.register_buffer("grid_axes", sequence.grid_axes(), persistent=False)
        self.register_buffer("rope_axes", sequence.axes(), persistent=False)
        self.register_buffer("legal_bias", vocab.legal_bias(), persistent=False)
        self.apply(self._init_linear)

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def attention_backend(self) -> str:
        """``sdpa``, ``flex`` or ``split``: the kernel of full forward passes with prefix or causal
        attention."""
        return self._attention_backend

    @attention_backend.setter
    def attention_backend(self, backend: str) -> None:
        dropout = self.config["dropout"]
        self._attention_backend = check_attention_backend(backend, dropout)

    # -- pieces ------------------------------------------------------------------------------------
    def embed(self, tokens: Tensor, idx: Tensor | None = None) -> Tensor:
        """Token + modality (+ learned position) embeddings for positions ``idx`` (all if None)."""
        idx = torch.arange(tokens.shape[1], device=tokens.device) if idx is None else idx
        modality = self.modality[idx]
        x = self.token_emb(tokens) + self.modality_emb(modality)
        if self.learned_pos is not None:
            x = x + self.learned_pos(idx, self.grid_axes[idx], modality == IMAGE)
        return x

    def rotary_angles(self, idx: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        """cos/sin [S, Dh/2] for positions ``idx`` [S] (all if None); for ``idx`` [B, S] (each row
        its own positions) [B, 1, S, Dh/2], broadcasting over the heads."""
        if self.rotary is None:
            return None
        axes = self.rope_axes if idx is None else self.rope_axes[idx]
        angles = self.rotary.angles(axes)
        return angles if axes.ndim == 2 else tuple(a.unsqueeze(1) for a in angles)

    def logits(self, hidden: Tensor, modality: Tensor, vocab_limit: int | None = None) -> Tensor:
        """Logits over the whole vocabulary (or its first ``vocab_limit`` ids), illegal ids for the
        position's modality at -inf."""
        # heads registered before vocab_limit existed take the hidden states alone
        out = self.head(hidden) if vocab_limit is None else self.head(hidden, vocab_limit)
        bias = self.legal_bias[modality, :vocab_limit]
        # bf16 head output + float32 bias promotes to float32 in the add itself: no separate
        # [B, S, V] float32 copy first (same values: the bf16 -> float32 cast is exact)
        return out + bias if bias.dtype == torch.float32 else out.float() + bias

    # -- full forward ---------------------------------------------------------------------------------
    def hidden_states(self, tokens: Tensor, prefix: Tensor | None = None, causal: bool = False) -> Tensor:
        """[B, S] -> [B, S, D].  ``prefix`` [B, S] bool turns on prefix attention (module docstring;
        pass it on the host: the ``split`` backend plans there, the others copy it over without
        waiting); ``causal`` makes every position see only itself and earlier ones
        (autoregressive baseline)."""
        if tokens.shape[1] != self.sequence.length:
            raise ValueError(f"expected sequences of length {self.sequence.length}, got {tokens.shape[1]}")
        if prefix is not None and not causal and self.attention_backend == "split":
            return self._reordered_hidden_states(tokens, prefix)
        if prefix is not None:
            prefix = to_device(prefix, tokens.device)
        mask = attention_pattern(self.attention_backend, tokens.shape[0], tokens.shape[1], tokens.device,
                                 prefix, causal)
        x = self.embed(tokens)
        return self.norm(self._run_blocks(x, mask, self.rotary_angles()))

    def _reordered_hidden_states(self, tokens: Tensor, prefix: Tensor) -> Tensor:
        """Prefix attention with every row's prefix moved first (the ``split`` backend)."""
        order = PrefixOrder.of(prefix).to(tokens.device)
        x = order.apply(self.embed(tokens))
        x = self._run_blocks(x, order.split, self.rotary_angles(order.positions))
        return order.restore(self.norm(x))

    def _run_blocks(self, x: Tensor, mask: AttentionPattern, rotary: tuple[Tensor, Tensor] | None
                    ) -> Tensor:
        """Every block over the whole sequence (the full forward passes), each under activation
        checkpointing when it is on and grad is enabled (non-reentrant: inputs that need no grad,
        compiled blocks and a block mask all work, and dropout's RNG state is restored)."""
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x, _ = checkpoint(block, x, mask, rotary, use_reentrant=False)
            else:
                x, _ = block(x, mask, rotary)
        return x

    def forward(self, tokens: Tensor, prefix: Tensor | None = None, causal: bool = False,
                positions: Tensor | None = None, vocab_limit: int | None = None) -> Tensor:
        """[B, S] -> logits [B, S, V] (``causal``: see :meth:`hidden_states`).  With ``positions``
        [P] only those positions get logits: [B, P, V] (samplers need no logits for given tokens);
        with ``vocab_limit`` only the first ids: [..., vocab_limit] (text positions: the text range)."""
        hidden = self.hidden_states(tokens, prefix, causal)
        if positions is None:
            return self.logits(hidden, self.modality, vocab_limit)
        return self.logits(hidden[:, positions], self.modality[positions], vocab_limit)

    # -- prefix KV cache ------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, tokens: Tensor, prefix: Tensor) -> PrefixCache:
        """Encode the prefix once.  Every row must share one prefix pattern (one task per batch)."""
        if prefix.ndim == 2:
            if not bool((prefix == prefix[:1]).all()):
                raise ValueError("prefix caching needs the same prefix positions in every row")
            prefix = prefix[0]
        cached_idx = prefix.nonzero().squeeze(-1)
        recompute_idx = (~prefix).nonzero().squeeze(-1)
        x = self.embed(tokens[:, cached_idx], cached_idx)
        rotary = self.rotary_angles(cached_idx)
        kv: list[KVBuffer] = []
        for block in self.blocks:
            x, (k, v) = block(x, None, rotary)  # prefix positions see only the prefix
            # room for the recomputed positions after the prefix: each step writes its keys there
            kv.append(KVBuffer.holding(k, v, len(recompute_idx)))
        return PrefixCache(kv, recompute_idx, cached_idx)

    def forward_cached(self, tokens: Tensor, cache: PrefixCache, positions: Tensor | None = None,
                       vocab_limit: int | None = None) -> Tensor:
        """Logits from the cache: only the non-prefix positions are computed.  With ``positions``
        (a subset of the non-prefix positions) returns [B, P, V] for them; without, [B, S, V] with
        prefix rows 0 (they are given, so no sampler reads them).  ``vocab_limit``: see :meth:`forward`."""
        idx = cache.recompute_idx
        x = self.embed(tokens[:, idx], idx)
        rotary = self.rotary_angles(idx)
        for block, past in zip(self.blocks, cache.kv):
            x, _ = block(x, None, rotary, past)  # non-prefix queries attend to every key
        x = self.norm(x)
        if positions is not None:
            lookup = torch.full((tokens.shape[1],), -1, dtype=torch.long, device=idx.device)
            lookup[idx] = torch.arange(len(idx), device=idx.device)
            rows = lookup[positions]
            # a host read is illegal while a CUDA graph records; the eager warm-up calls that
            # precede every capture (unigen.sampling.graphed) have checked the same positions
            if not _capturing() and bool((rows < 0).any()):
                raise ValueError("positions must lie outside the cached prefix")
            return self.logits(x[:, rows], self.modality[positions], vocab_limit)
        sub = self.logits(x, self.modality[idx], vocab_limit)
        out = sub.new_zeros(tokens.shape[0], tokens.shape[1], sub.shape[-1])
        out[:, idx] = sub
        return out

    @classmethod
    def from_config(cls, config: dict) -> "UnifiedTransformer":
        cfg = dict(config)
        vocab, sequence = VocabLayout(**cfg.pop("vocab")), SequenceLayout(**cfg.pop("sequence"))
        return cls(vocab, sequence, **cfg)

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.token_emb.weight.numel()
        return n
