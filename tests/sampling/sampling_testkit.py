"""A deterministic dummy network and batches for the sampler tests (no real model)."""

from __future__ import annotations

import torch
from torch import Tensor

VOCAB = 16
MASK = 15  # inside the network's output vocabulary, so samplers must forbid it themselves
SEQ = 24


class DummyNet:
    """Logits from a fixed random table indexed by an exact integer hash of (row context, position).

    Integer hashing makes the output bitwise identical whatever the batch size, and every row depends
    only on its own tokens, so batch-invariance tests test the samplers, not float reductions.
    """

    def __init__(
        self, vocab: int = VOCAB, seq_len: int = SEQ, sharpness: float = 3.0, seed: int = 0,
        forbidden: tuple[int, ...] = (), table_size: int = 1009,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(table_size, vocab, generator=g) * sharpness
        if forbidden:
            self.table[:, list(forbidden)] = float("-inf")
        self.weights = torch.randint(1, 997, (seq_len,), generator=g)
        self.table_size = table_size
        self.calls = 0
        self.rows = 0

    def __call__(self, tokens: Tensor) -> Tensor:
        self.calls += 1
        self.rows += tokens.shape[0]
        context = (tokens * self.weights).sum(-1, keepdim=True)
        positions = torch.arange(tokens.shape[1])
        return self.table[(context * 31 + positions * 7919) % self.table_size]


def make_batch(batch_size: int, seed: int = 0, seq_len: int = SEQ) -> tuple[Tensor, Tensor]:
    """Random given tokens and a masked region per row; row b differs in where and how much is masked.

    Row 0 is the same whatever ``batch_size``: the batch-invariance tests compare it alone and batched.
    """
    tokens, masks = [], []
    for b in range(batch_size):
        g = torch.Generator().manual_seed(seed * 1000 + b)
        row = torch.randint(0, MASK, (seq_len,), generator=g)
        start = int(torch.randint(0, seq_len // 3, (1,), generator=g))
        length = int(torch.randint(seq_len // 3, seq_len - start + 1, (1,), generator=g))
        masked = torch.zeros(seq_len, dtype=torch.bool)
        masked[start : start + length] = True
        masked[int(torch.randint(0, seq_len, (1,), generator=g))] = True  # a stray hole: infilling
        tokens.append(row.masked_fill(masked, MASK))
        masks.append(masked)
    return torch.stack(tokens), torch.stack(masks)


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]
