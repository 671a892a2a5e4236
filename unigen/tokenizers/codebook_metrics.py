"""Codebook health: how many codes a tokenizer actually uses.

Usage (fraction of the codebook seen at least once) and perplexity (``exp`` of the entropy of the
code histogram; equals the number of codes when all are used uniformly) are the collapse diagnostics
of VQ-VAE-2 (Razavi et al. 2019), ViT-VQGAN and LlamaGen.  Counts are exact over everything passed to
``update`` (e.g. a whole validation epoch) and summed across processes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class CodebookUsage(Metric):
    """Exact code histogram; ``compute()`` returns ``usage``, ``perplexity`` and ``used`` (count)."""

    full_state_update = False
    counts: Tensor

    def __init__(self, codebook_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        self.codebook_size = codebook_size
        self.add_state("counts", default=torch.zeros(codebook_size, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, codes: Tensor) -> None:
        if codes.is_floating_point() or codes.is_complex():
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        codes = codes.reshape(-1).long()
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        self.counts += torch.bincount(codes, minlength=self.codebook_size)

    def compute(self) -> dict[str, Tensor]:
        total = self.counts.sum()
        if total == 0:
            raise ValueError("CodebookUsage.compute() called before any codes were seen")
        probs = self.counts[self.counts > 0].double() / total
        entropy = -(probs * probs.log()).sum()
        used = (self.counts > 0).sum()
        return {"usage": used.double() / self.codebook_size, "perplexity": entropy.exp(),
                "used": used}
