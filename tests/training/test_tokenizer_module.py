"""TokenizerModule (Lightning training of image tokenizers) and the EMA helpers."""

from __future__ import annotations

import math
import re
import shutil

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tests.tokenizers.image_tokenizer_testkit import TINY
from unigen.tokenizers import FSQTokenizer, ImageTokenizer, VQTokenizer
from unigen.tokenizers.discriminator import AdversarialLoss, PatchGANDiscriminator
from unigen.tokenizers.perceptual import ConvFeatures, PerceptualLoss
from unigen.training import EMACallback, ModelEMA, TokenizerModule
from unigen.training.checkpoint import load_module_from_checkpoint
from unigen.training.optim import warmup_cosine_factor as warmup_cosine
from unigen.training.tokenizer_module import batch_images



pytestmark = pytest.mark.usefixtures("one_torch_thread")


class DictImages(Dataset):
    """Batches as the unigen data modules produce them: dicts with an ``image`` entry."""

    def __init__(self, n: int, size: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        low = torch.rand(n, 3, size // 4, size // 4, generator=g)
        self.images = nn.functional.interpolate(low, size=(size, size), mode="bilinear")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "caption": "a picture"}


def loaders(n_train: int = 16, n_val: int = 12, batch_size: int = 8):
    return (DataLoader(DictImages(n_train), batch_size=batch_size, shuffle=False),
            DataLoader(DictImages(n_val, seed=1), batch_size=batch_size))


def trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    defaults = dict(max_steps=max_steps, default_root_dir=tmp_path, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, logger=False,
                    num_sanity_val_steps=0, log_every_n_steps=1, accelerator="cpu",
                    check_val_every_n_epoch=None)
    return L.Trainer(**{**defaults, **kwargs})


def fsq() -> FSQTokenizer:
    return FSQTokenizer(levels=(5, 5, 5), **TINY)


# -- pure helpers -----------------------------------------------------------------------------------
def test_warmup_cosine_schedule_values():
    assert warmup_cosine(0, 4, 20, 0.1) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(99, 0, 20, 0.0) == pytest.approx(0.0)


def test_batch_images_accepts_dicts_tensors_and_tensor_datasets():
    x = torch.rand(2, 3, 4, 4)
    assert batch_images({"image": x, "caption": ["a", "b"]}) is x
    assert batch_images(x) is x
    assert batch_images([x]) is x
    with pytest.raises(KeyError, match="no 'image' entry \\(keys: \\['caption'\\]\\)"):
        batch_images({"caption": ["a"]})
    with pytest.raises(TypeError, match="dict with 'image' or an image tensor"):
        batch_images("images")


def test_bad_module_settings():
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        TokenizerModule(fsq(), reconstruction_loss="huber")
    with pytest.raises(ValueError, match="lr > 0"):
        TokenizerModule(fsq(), lr=0.0)


# -- training ---------------------------------------------------------------------------------------
def test_fit_improves_reconstruction_and_logs_metrics(tmp_path):
    train, val = loaders()
    module = TokenizerModule(fsq(), lr=5e-3, warmup_steps=2, min_lr_ratio=0.5, num_logged_images=4)
    logger = TensorBoardLogger(tmp_path, name="tb")
    t = trainer(tmp_path, max_steps=60, logger=logger, val_check_interval=30)
    before = t.validate(module, val, verbose=False)[0]
    t.fit(module, train, val)
    train_metrics = set(t.callback_metrics)
    after = t.validate(module, val, verbose=False)[0]
    assert after["val/rec_loss"] < 0.7 * before["val/rec_loss"]
    assert after["val/psnr"] > before["val/psnr"] + 2.0
    assert -1.0 <= after["val/ssim"] <= 1.0 and 0.0 < after["val/codebook_usage"] <= 1.0
    assert 1.0 <= after["val/perplexity"] <= 125.0
    assert {"train/loss", "train/rec_loss", "train/batch_code_usage"} <= train_metrics
    grids = sorted((tmp_path / "tb").rglob("reconstructions/val_step*.png"))
    assert grids and any(p.name == "val_step0000060.png" for p in grids)
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))


def test_validation_codebook_usage_is_exact_over_the_epoch(tmp_path):
    train, _ = loaders()
    module = TokenizerModule(fsq())
    val = DataLoader(DictImages(20, seed=3), batch_size=6)  # uneven last batch
    result = trainer(tmp_path, max_steps=1).validate(module, val, verbose=False)[0]
    codes = module.tokenizer.encode(DictImages(20, seed=3).images)
    expected_used = codes.unique().numel()
    assert result["val/codebook_usage"] == pytest.approx(expected_used / 125)
    counts = torch.bincount(codes.flatten(), minlength=125).double()
    p = counts[counts > 0] / counts.sum()
    assert result["val/perplexity"] == pytest.approx(math.exp(float(-(p * p.log()).sum())), rel=1e-5)


def test_plain_tensor_batches_train_too(tmp_path):
    images = DictImages(8).images
    module = TokenizerModule(fsq())
    t = trainer(tmp_path, max_steps=2)
    t.fit(module, DataLoader(TensorDataset(images), batch_size=4))
    assert t.global_step == 2


def test_vq_trains_with_kmeans_init_inside_lightning(tmp_path):
    train, val = loaders()
    module = TokenizerModule(VQTokenizer(codebook_size=32, codebook_dim=4, **TINY))
    t = trainer(tmp_path, max_steps=3, val_check_interval=3)
    t.fit(module, train, val)
    assert bool(module.tokenizer.quantizer.vq._codebook.initted)
    assert "train/quantizer_commitment" in t.callback_metrics
    assert 0 < t.callback_metrics["val/codebook_usage"] <= 1


def test_perceptual_discriminator_and_ema_path(tmp_path):
    train, val = loaders()
    adversarial = AdversarialLoss(PatchGANDiscriminator(base_channels=8, num_layers=2),
                                  start_step=2, weight=0.5)
    module = TokenizerModule(fsq(), perceptual=PerceptualLoss(ConvFeatures(((4,), (8,))), 0.5),
                             adversarial=adversarial, ema_decay=0.9)
    assert not module.automatic_optimization
    disc_before = adversarial.discriminator.layers[0].weight.detach().clone()
    t = trainer(tmp_path, max_steps=4)
    t.fit(module, train, val)
    assert t.global_step == 4  # generator steps; the discriminator's do not count
    metrics = t.callback_metrics
    assert {"train/perceptual_loss", "train/g_loss", "train/g_weight", "train/d_loss"} <= set(metrics)
    assert float(metrics["train/g_weight"]) > 0
    assert not torch.equal(disc_before, adversarial.discriminator.layers[0].weight)
    # the EMA lags the live weights, and validation/export use it
    live = module.tokenizer.encoder.conv_in.weight.detach().clone()
    ema = module.ema.shadow()["encoder.conv_in.weight"]
    assert not torch.equal(live, ema)
    module.export(tmp_path / "exported")
    exported = ImageTokenizer.from_pretrained(tmp_path / "exported")
    assert torch.equal(exported.encoder.conv_in.weight, ema)
    assert torch.equal(module.tokenizer.encoder.conv_in.weight, live)  # swapped back
    with_ema = t.validate(module, val, verbose=False)[0]
    module.ema = None
    without = t.validate(module, val, verbose=False)[0]
    assert with_ema["val/rec_loss"] != without["val/rec_loss"]


def test_discriminator_is_not_trained_before_its_start_step(tmp_path):
    train, _ = loaders()
    adversarial = AdversarialLoss(PatchGANDiscriminator(base_channels=8, num_layers=2),
                                  start_step=100)
    module = TokenizerModule(fsq(), adversarial=adversarial)
    disc_before = adversarial.discriminator.layers[0].weight.detach().clone()
    trainer(tmp_path, max_steps=2).fit(module, train)
    assert torch.equal(disc_before, adversarial.discriminator.layers[0].weight)


# -- EMA --------------------------------------------------------------------------------------------
def test_model_ema_exact_average_and_swap():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model)
    assert torch.equal(ema.shadow()["weight"], torch.full((2, 2), 2.0))
    with ema.swapped_into(model):
        assert torch.equal(model.weight, torch.full((2, 2), 2.0))
    assert torch.equal(model.weight, torch.full((2, 2), 4.0))
    assert int(ema.num_updates) == 1


def test_model_ema_warmup_copies_buffers_and_checks_keys():
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(3.0)
    model(torch.randn(4, 2))  # moves the running statistics, bumps num_batches_tracked
    ema.update(model)
    shadow = ema.shadow()
    assert torch.equal(shadow["weight"], torch.full((2,), 1.0 + 0.9 * 2.0))  # parameters: averaged
    for key in ("running_mean", "running_var", "num_batches_tracked"):  # buffers: the model's own
        assert torch.equal(shadow[key], model.state_dict()[key]), key
    assert ema.current_decay() == pytest.approx(2 / 11)
    assert "num_updates" in ema.state_dict()
    with pytest.raises(ValueError, match="no longer matches its EMA"):
        ema.update(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="decay must lie in"):
        ModelEMA(model, decay=1.0)


class _Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1)
        self.val_weights: list[torch.Tensor] = []
        self.epoch_end_weights: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self.val_weights.append(self.net.weight.detach().clone())

    def on_validation_epoch_end(self):  # where the unified module draws its samples
        self.epoch_end_weights.append(self.net.weight.detach().clone())

    def on_train_batch_end(self, *args):
        self.live_weight = self.net.weight.detach().clone()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_ema_callback_validates_with_and_finally_applies_the_average(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    module = _Regressor()
    callback = EMACallback(decay=0.5, attribute="net", warmup=False)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    t = trainer(tmp_path, max_steps=4, callbacks=[callback, checkpoints], val_check_interval=4,
                limit_val_batches=1, enable_checkpointing=True)
    t.fit(module, data, data)
    ema_weight = callback.ema.shadow()["weight"]
    assert torch.equal(module.val_weights[-1], ema_weight)  # validated on the EMA
    assert torch.equal(module.epoch_end_weights[-1], ema_weight)  # samples drawn with it too
    assert not torch.equal(module.live_weight, ema_weight)
    saved = torch.load(checkpoints.last_model_path, weights_only=True)["state_dict"]["net.weight"]
    assert torch.equal(saved, module.live_weight)  # the checkpoint holds the trained weights
    assert torch.equal(module.net.weight, ema_weight)  # applied on fit end
    assert set(callback.state_dict()) >= {"weight", "bias", "num_updates"}


def test_ema_callback_moves_once_per_optimizer_step_under_accumulation(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    callback = EMACallback(decay=0.5, attribute="net", warmup=False)
    t = trainer(tmp_path, max_steps=3, callbacks=[callback], accumulate_grad_batches=2,
                limit_val_batches=0)
    module = _Regressor()
    t.fit(module, data)
    assert t.global_step == 3 and int(callback.ema.num_updates) == 3  # 6 micro-batches, 3 steps


def test_ema_of_a_cosine_vq_tokenizer_keeps_its_codebook_unit_norm(tmp_path):
    module = TokenizerModule(VQTokenizer(codebook_size=16, **TINY), ema_decay=0.9, lr=1e-2)
    trainer(tmp_path, max_steps=6).fit(module, loaders()[0])
    codebook = "quantizer.vq._codebook.embed"
    live, averaged = module.tokenizer.state_dict()[codebook], module.ema.shadow()[codebook]
    assert torch.equal(averaged, live)
    torch.testing.assert_close(averaged.norm(dim=-1), torch.ones_like(averaged.norm(dim=-1)))
    weights = [k for k, _ in module.tokenizer.named_parameters()]
    assert any(not torch.equal(module.ema.shadow()[k], module.tokenizer.state_dict()[k]) for k in weights)


def test_init_from_starts_from_an_exported_tokenizer(tmp_path):
    torch.manual_seed(0)
    exported = FSQTokenizer(levels=(5, 5, 5), **TINY)
    with torch.no_grad():
        for p in exported.parameters():
            p.add_(torch.randn_like(p))  # weights no fresh tokenizer of this config has
    exported.save_pretrained(tmp_path / "tok")
    module = TokenizerModule(FSQTokenizer(levels=(5, 5, 5), **TINY), init_from=str(tmp_path / "tok"),
                             ema_decay=0.9)
    for (name, a), b in zip(exported.state_dict().items(), module.tokenizer.state_dict().values()):
        assert torch.equal(a, b), name
    # the EMA starts from the loaded weights too
    for key, value in module.ema.shadow().items():
        assert torch.equal(value, exported.state_dict()[key]), key

    # the checkpoint holds every weight: exporting it needs no starting directory
    t = trainer(tmp_path, max_steps=1)
    t.fit(module, loaders()[0])
    t.save_checkpoint(tmp_path / "run.ckpt")
    shutil.rmtree(tmp_path / "tok")
    rebuilt = load_module_from_checkpoint(tmp_path / "run.ckpt")
    for (name, a), b in zip(module.tokenizer.state_dict().items(), rebuilt.tokenizer.state_dict().values()):
        assert torch.equal(a, b), name
    assert rebuilt.hparams.init_from is None
    exported.save_pretrained(tmp_path / "tok")

    with pytest.raises(ValueError, match=r"another config.*levels"):
        TokenizerModule(FSQTokenizer(levels=(8, 5, 5), **TINY), init_from=str(tmp_path / "tok"))
    with pytest.raises(ValueError, match="holds a 'fsq' tokenizer"):
        TokenizerModule(VQTokenizer(codebook_size=16, **TINY), init_from=str(tmp_path / "tok"))
    with pytest.raises(FileNotFoundError, match="^image tokenizer directory not found: "
                       + re.escape(str(tmp_path / "none")) + " "):
        TokenizerModule(FSQTokenizer(levels=(5, 5, 5), **TINY), init_from=str(tmp_path / "none"))
