"""Tiny image-tokenizer factories shared by the image-tokenizer tests (CPU, milliseconds per step).

``conftest.py`` puts this folder on ``sys.path`` so the tests import it by name."""

from __future__ import annotations

import torch

from unigen.tokenizers import FSQTokenizer, LFQTokenizer, QuantizedAutoencoder, VQTokenizer

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=8, norm_num_groups=4)

# name -> constructor kwargs; every quantizer family, and plain VQ next to VQ with tricks
TINY_TOKENIZERS = {
    "fsq": (FSQTokenizer, dict(levels=(5, 5, 5))),
    "vq": (VQTokenizer, dict(codebook_size=64, codebook_dim=4)),
    "vq_plain": (VQTokenizer, dict(codebook_size=64, codebook_dim=4, cosine=False,
                                   ema_update=False, kmeans_init=False, dead_code_threshold=0)),
    "lfq": (LFQTokenizer, dict(codebook_size=64)),
}


def make_tokenizer(name: str, **overrides) -> QuantizedAutoencoder:
    cls, kwargs = TINY_TOKENIZERS[name]
    return cls(**{**TINY, **kwargs, **overrides})


def tiny_images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random images (blurred noise), more image-like than i.i.d. pixels."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear",
                                           align_corners=False)


def train_steps(tokenizer: QuantizedAutoencoder, images: torch.Tensor, steps: int,
                lr: float = 3e-3) -> list[float]:
    """Plain training loop (L1 + quantizer losses); returns the reconstruction loss per step."""
    opt = torch.optim.Adam([p for p in tokenizer.parameters() if p.requires_grad], lr=lr)
    tokenizer.train()
    history = []
    for _ in range(steps):
        out = tokenizer(images)
        rec = (out.reconstruction - images).abs().mean()
        loss = rec + sum(out.losses.values(), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(rec.item())
    return history
