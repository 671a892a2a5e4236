"""The ``model_fn``\\s that :func:`unigen.sampling.decode` calls for a pipeline: the transformer with
full attention over the sequence or with the prefix (the condition) encoded once
(:class:`PrefixCachedModel`), either one replayed as a CUDA graph, and :func:`_banning`, which
makes some ids impossible."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from unigen.modules.transformer import PrefixCache, UnifiedTransformer
from unigen.sampling.graphed import GraphedModelFn


def _banning(model_fn: Callable[[Tensor], Tensor], ids: Sequence[int]) -> Callable[[Tensor], Tensor]:
    """``model_fn`` with ``ids`` made impossible (-inf) wherever its logits reach them (a
    vocabulary cut to the text ids drops the higher ones)."""

    def banned(x: Tensor) -> Tensor:
        logits = model_fn(x)
        index = torch.tensor([i for i in ids if i < logits.shape[-1]], device=logits.device)
        return logits.index_fill(-1, index, float("-inf"))  # a copy: CUDA graphs' buffers stay

    return banned


class PrefixCachedModel:
    """``model_fn`` for :func:`unigen.sampling.decode` that encodes the prefix (the condition) once
    and recomputes only the other positions at each step (LaViDa prefix cache).  A cache is kept per
    batch shape (guidance may switch between B and 2B rows) and refreshed if the prefix changes.
    With ``cuda_graphs`` the cached step is replayed as a CUDA graph, and a changed prefix is
    written into the captured cache in place."""

    def __init__(self, net: UnifiedTransformer, prefix: Tensor, positions: Tensor | None = None,
                 vocab_limit: int | None = None, cuda_graphs: bool = False) -> None:
        self.net = net
        self.prefix = prefix  # [S] bool, shared by every row
        self.positions = positions  # logits only for these positions (see decode(positions=))
        self.vocab_limit = vocab_limit  # logits only for the first ids (text decoding)
        self._caches: dict[int, tuple[Tensor, PrefixCache]] = {}
        self.cuda_graphs = cuda_graphs
        self._step = GraphedModelFn(self._cached_step) if cuda_graphs else self._cached_step

    def _cached_step(self, tokens: Tensor) -> Tensor:
        cache = self._caches[tokens.shape[0]][1]
        return self.net.forward_cached(tokens, cache, self.positions, self.vocab_limit)

    def __call__(self, tokens: Tensor) -> Tensor:
        key = tokens[:, self.prefix]
        hit = self._caches.get(tokens.shape[0])
        if hit is None or not torch.equal(hit[0], key):
            cache = self.net.prefill(tokens, self.prefix)
            if hit is not None and self.cuda_graphs:
                cache = hit[1].copy_(cache)  # the graph reads the captured tensors
            self._caches[tokens.shape[0]] = (key.clone(), cache)
        return self._step(tokens)


def network_fn(net: UnifiedTransformer, prefix: Tensor, positions: Tensor | None, cached: bool,
               vocab_limit: int | None, cuda_graphs: bool) -> Callable[[Tensor], Tensor]:
    """The transformer as a ``model_fn`` (:meth:`UnifiedPipeline.model_fn` decides ``cached``
    and caches the graphed ones): :class:`PrefixCachedModel` when ``cached``, else full
    attention with ``prefix``'s first row for every row; a CUDA graph when ``cuda_graphs``."""
    if cached:
        return PrefixCachedModel(net, prefix[0], positions, vocab_limit, cuda_graphs)

    def full(x: Tensor) -> Tensor:
        return net(x, prefix[:1].expand(x.shape[0], -1), positions=positions,
                   vocab_limit=vocab_limit)

    return GraphedModelFn(full) if cuda_graphs else full
