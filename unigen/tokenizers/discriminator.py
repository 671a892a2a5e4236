"""PatchGAN discriminator and the VQGAN adversarial loss for tokenizer training.

The discriminator is the N-layer PatchGAN of pix2pix (Isola et al. 2017) as used by VQGAN (Esser et
al. 2021): it scores overlapping patches, which sharpens textures a pixel loss blurs.  The generator's
adversarial term is scaled by VQGAN's adaptive weight, ``||grad_L(rec)|| / ||grad_L(gan)||`` at the
decoder's last layer ``L`` (eq. 7), and switched on only after ``start_step`` so the autoencoder first
learns to reconstruct.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchGANDiscriminator(nn.Module):
    """N-layer PatchGAN: images ``[B, 3, H, W]`` in [0, 1] -> patch logits ``[B, 1, h, w]``.

    Args:
        base_channels: channels of the first conv (doubled per layer, capped at 8x).
        num_layers: stride-2 conv layers (receptive field 70 px for 3, as in pix2pix).
        seed: seed of the initial weights (normal(0, 0.02), as in pix2pix/VQGAN).
    """

    def __init__(self, base_channels: int = 64, num_layers: int = 3, seed: int = 0) -> None:
        super().__init__()
        if base_channels < 1 or num_layers < 1:
            raise ValueError(f"base_channels ({base_channels}) and num_layers ({num_layers}) must be >= 1")
        widths = [base_channels * min(2 ** i, 8) for i in range(num_layers + 1)]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for i in range(1, num_layers + 1):
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(widths[i - 1], widths[i], 4, stride, 1, bias=False),
                       nn.BatchNorm2d(widths[i]), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        generator = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                with torch.no_grad():
                    module.weight.normal_(0.0, 0.02, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                with torch.no_grad():
                    module.weight.normal_(1.0, 0.02, generator=generator)
                    module.bias.zero_()

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images * 2.0 - 1.0)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor,
                       kind: Literal["hinge", "vanilla"]) -> Tensor:
    """Hinge (Lim & Ye 2017, VQGAN's default) or non-saturating logistic loss of the discriminator."""
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def generator_loss(fake_logits: Tensor, kind: Literal["hinge", "vanilla"]) -> Tensor:
    return -fake_logits.mean() if kind == "hinge" else F.softplus(-fake_logits).mean()


def adaptive_weight(reconstruction_loss: Tensor, gan_loss: Tensor, last_layer: Tensor,
                    max_weight: float = 1e4) -> Tensor:
    """VQGAN eq. 7: balance the two losses' gradient norms at the decoder's last layer."""
    rec_grad, = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)
    gan_grad, = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class AdversarialLoss(nn.Module):
    """The discriminator plus how its loss enters tokenizer training.

    Args:
        discriminator: the patch discriminator.
        weight: factor on the generator's adversarial loss (VQGAN: 0.8; LlamaGen: 0.5).
        start_step: generator step at which the adversarial terms switch on (discriminator warm-up).
        loss: ``"hinge"`` or ``"vanilla"`` (non-saturating logistic).
        adaptive: scale by the VQGAN adaptive weight (needs the tokenizer's ``last_layer``).
        max_adaptive_weight: clamp of the adaptive weight.
        lr: discriminator learning rate (``None``: the tokenizer's).
    """

    def __init__(self, discriminator: PatchGANDiscriminator | None = None, weight: float = 0.5,
                 start_step: int = 0, loss: Literal["hinge", "vanilla"] = "hinge",
                 adaptive: bool = True, max_adaptive_weight: float = 1e4,
                 lr: float | None = None) -> None:
        super().__init__()
        if loss not in ("hinge", "vanilla"):
            raise ValueError(f"adversarial loss must be 'hinge' or 'vanilla', got {loss!r}")
        if weight < 0 or start_step < 0:
            raise ValueError(f"adversarial weight ({weight}) and start_step ({start_step}) must be >= 0")
        self.discriminator = discriminator if discriminator is not None else PatchGANDiscriminator()
        self.weight = weight
        self.start_step = start_step
        self.loss = loss
        self.adaptive = adaptive
        self.max_adaptive_weight = max_adaptive_weight
        self.lr = lr

    def active(self, step: int) -> bool:
        return step >= self.start_step

    def generator_term(self, reconstructions: Tensor, nll: Tensor, last_layer: Tensor | None
                       ) -> tuple[Tensor, Tensor]:
        """(unweighted generator loss, its weight) for this step's reconstructions."""
        g_loss = generator_loss(self.discriminator(reconstructions), self.loss)
        if not self.adaptive:
            return g_loss, torch.tensor(self.weight, device=g_loss.device)
        if last_layer is None:
            raise ValueError("the adaptive adversarial weight needs a tokenizer with a `last_layer`")
        return g_loss, self.weight * adaptive_weight(nll, g_loss, last_layer, self.max_adaptive_weight)

    def discriminator_term(self, images: Tensor, reconstructions: Tensor) -> Tensor:
        return discriminator_loss(self.discriminator(images),
                                  self.discriminator(reconstructions.detach()), self.loss)
