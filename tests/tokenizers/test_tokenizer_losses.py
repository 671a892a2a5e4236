"""Perceptual loss, PatchGAN discriminator and the VQGAN adversarial terms."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from image_tokenizer_testkit import tiny_images
from unigen.tokenizers.discriminator import (AdversarialLoss, PatchGANDiscriminator,
                                             adaptive_weight, discriminator_loss, generator_loss)
from unigen.tokenizers.perceptual import ConvFeatures, PerceptualLoss, VGG16Features

SMALL = ((4,), (8,))


def test_perceptual_loss_is_zero_on_identical_images_and_grows_with_distortion():
    loss = PerceptualLoss(ConvFeatures(SMALL))
    images = tiny_images(n=2, size=16)
    assert float(loss(images, images)) == pytest.approx(0.0, abs=1e-6)
    small = loss(images + 0.02 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0)),
                 images)
    large = loss(torch.flip(images, dims=[-1]), images)
    assert 0 < float(small) < float(large)


def test_perceptual_network_is_frozen_but_passes_gradients_to_the_input():
    loss = PerceptualLoss(ConvFeatures(SMALL))
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.network.training
    images = tiny_images(n=2, size=16)
    rec = (images * 0.5).requires_grad_(True)
    loss(rec, images).backward()
    assert rec.grad is not None and float(rec.grad.abs().sum()) > 0


def test_feature_weights_load_from_a_local_file(tmp_path):
    source = ConvFeatures(SMALL, seed=1)
    # extra non-feature keys (a full torchvision checkpoint has a classifier) are ignored
    save_file({**source.state_dict(), "classifier.0.weight": torch.zeros(2, 2)},
              str(tmp_path / "w.safetensors"))
    torch.save(source.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = ConvFeatures(SMALL, weights_path=str(tmp_path / name), seed=2)
        assert torch.equal(loaded.features[0].weight, source.features[0].weight)
    assert not torch.equal(ConvFeatures(SMALL, seed=2).features[0].weight,
                           source.features[0].weight)


def test_feature_weight_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found: .*vgg16.pth"):
        VGG16Features(str(tmp_path / "vgg16.pth"))
    save_file(ConvFeatures(SMALL).state_dict(), str(tmp_path / "small.safetensors"))
    with pytest.raises(ValueError, match="small.safetensors does not match the feature network"):
        ConvFeatures(((4,), (16,)), weights_path=str(tmp_path / "small.safetensors"))
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported weights file type"):
        ConvFeatures(SMALL, weights_path=str(tmp_path / "w.npz"))


def test_vgg16_taps_follow_torchvision_layout():
    # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 sit at features.3/8/15/22/29 in torchvision
    net = ConvFeatures(((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)))
    assert net.taps == [3, 8, 15, 22, 29]


def test_patchgan_output_shape_and_seeded_init():
    disc = PatchGANDiscriminator(base_channels=8, num_layers=3)
    logits = disc(tiny_images(n=2, size=64))
    assert logits.shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6 patches
    again = PatchGANDiscriminator(base_channels=8, num_layers=3)
    assert torch.equal(disc.layers[0].weight, again.layers[0].weight)
    assert float(disc.layers[0].weight.detach().std()) == pytest.approx(0.02, rel=0.2)


def test_gan_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # hinge: relu(1 - real) = (0, 0.5) -> 0.25; relu(1 + fake) = (0, 1) -> 0.5
    assert float(discriminator_loss(real, fake, "hinge")) == pytest.approx(0.5 * (0.25 + 0.5))
    assert float(generator_loss(fake, "hinge")) == pytest.approx(1.0)
    vanilla = 0.5 * (torch.nn.functional.softplus(-real).mean()
                     + torch.nn.functional.softplus(fake).mean())
    assert float(discriminator_loss(real, fake, "vanilla")) == pytest.approx(float(vanilla))


def test_adaptive_weight_is_the_gradient_norm_ratio():
    layer = torch.nn.Parameter(torch.ones(3))
    rec = (2.0 * layer).sum()  # grad norm 2 * sqrt(3)
    gan = (0.5 * layer).sum()  # grad norm 0.5 * sqrt(3)
    expected = (2.0 * 3 ** 0.5) / (0.5 * 3 ** 0.5 + 1e-4)
    assert float(adaptive_weight(rec, gan, layer)) == pytest.approx(expected, rel=1e-6)
    assert float(adaptive_weight(rec, gan, layer, max_weight=1.0)) == 1.0


def test_adversarial_loss_warm_up_and_settings():
    adv = AdversarialLoss(PatchGANDiscriminator(8, 2), weight=0.3, start_step=5, adaptive=False)
    assert not adv.active(4) and adv.active(5)
    images = tiny_images(n=2, size=16)
    g_loss, weight = adv.generator_term(images, torch.zeros(()), None)
    assert float(weight) == pytest.approx(0.3) and g_loss.ndim == 0
    with pytest.raises(ValueError, match="needs a tokenizer with a `last_layer`"):
        AdversarialLoss(PatchGANDiscriminator(8, 2)).generator_term(images, torch.zeros(()), None)
    with pytest.raises(ValueError, match="'hinge' or 'vanilla'"):
        AdversarialLoss(loss="wasserstein")
