"""Lightning training of an image tokenizer (the VQGAN recipe of Esser et al. 2021, as refined by
LlamaGen, Sun et al. 2024).

Loss = reconstruction (L1 or L2) + quantizer losses (commitment, entropy; already weighted by the
tokenizer) + optional perceptual loss + optional adversarial loss from a PatchGAN discriminator,
switched on after a warm-up and scaled by VQGAN's adaptive weight.  With a discriminator the module
uses manual optimization with a second optimizer; ``trainer.global_step`` then still counts tokenizer
(generator) steps, because the discriminator's optimizer is stepped outside Lightning's counter.

Validation logs PSNR and SSIM (torchmetrics), exact codebook usage and perplexity over the whole
epoch, and a grid of (original | reconstruction) pairs (TensorBoard image + PNG in the log dir).
:meth:`TokenizerModule.export` writes the trained tokenizer (its EMA weights when ``ema_decay`` is
set) with ``save_pretrained`` for the unified model to load; ``unigen fit --export_dir DIR`` (or a
recipe's top-level ``export_dir:``) calls it when training ends.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from unigen import io
from unigen.tokenizers.base import ImageTokenizer, TokenizerOutput
from unigen.tokenizers.codebook_metrics import CodebookUsage
from unigen.tokenizers.discriminator import AdversarialLoss
from unigen.tokenizers.perceptual import PerceptualLoss
from unigen.tokenizers.visualize import comparison_grid, save_png
from unigen.training.checkpoint import RecordsClassPath, check_state_shapes
from unigen.training.ema import ModelEMA
from unigen.training.optim import warmup_cosine


def batch_images(batch: Any) -> Tensor:
    """The image tensor of a batch: a dict with ``"image"``, a tensor, or a 1-tuple (TensorDataset)."""
    if isinstance(batch, dict):
        if "image" not in batch:
            raise KeyError(f"batch has no 'image' entry (keys: {sorted(batch)})")
        return batch["image"]
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, (list, tuple)) and len(batch) == 1 and torch.is_tensor(batch[0]):
        return batch[0]
    raise TypeError(f"a tokenizer batch must be a dict with 'image' or an image tensor, "
                    f"got {type(batch).__name__}")


TOKENIZER_KEY = "unigen_tokenizer"


def load_exported_weights(tokenizer: ImageTokenizer, path: str) -> None:
    """Copy the weights of the tokenizer exported to ``path`` into ``tokenizer`` (in place); the
    two must be the same type with the same config, else one error names the differences."""
    exported = ImageTokenizer.from_pretrained(path)
    if type(exported) is not type(tokenizer):
        raise ValueError(f"init_from {path} holds a {type(exported).type_name!r} tokenizer, the "
                         f"recipe builds a {type(tokenizer).type_name!r} one")
    diff = io.config_diff(dict(exported.config), dict(tokenizer.config))
    if diff:
        raise ValueError(f"init_from {path} was trained with another config; (exported, recipe): "
                         f"{diff}")
    tokenizer.load_state_dict(exported.state_dict())


class TokenizerModule(RecordsClassPath, L.LightningModule):
    """Trains an :class:`~unigen.tokenizers.base.ImageTokenizer` on batches of images in [0, 1].

    Args:
        tokenizer: the tokenizer to train (``class_path`` + ``init_args`` in a recipe).
        reconstruction_loss: ``"l1"`` (VQGAN) or ``"l2"`` (LlamaGen) pixel loss.
        perceptual: optional perceptual loss (carries its own weight).
        adversarial: optional PatchGAN discriminator + adversarial loss settings.
        lr: peak AdamW learning rate of the tokenizer.
        weight_decay: AdamW weight decay.
        betas: AdamW betas (VQGAN/LlamaGen use (0.5, 0.9) with a GAN; (0.9, 0.99) without).
        warmup_steps: linear LR warm-up steps, followed by cosine decay over the run.
        min_lr_ratio: final LR as a fraction of ``lr``.
        ema_decay: keep an EMA of the tokenizer weights with this decay; validation and export
            use it.  ``None`` disables it.
        num_logged_images: image pairs in the logged reconstruction grid (0 disables it).
        init_from: directory written by ``save_pretrained`` whose weights the tokenizer starts from
            (fine-tuning, or continuing an exported run with a fresh schedule); its type and
            config must equal the recipe's ``tokenizer``.
    """

    #: state of parts a checkpoint cannot rebuild from its hyper-parameters (``unigen export`` only
    #: needs the tokenizer and its EMA)
    optional_state_prefixes = ("perceptual.", "adversarial.")
    #: arguments that only load starting weights: a checkpoint is rebuilt without them
    weights_only_init_args = ("init_from",)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # the tokenizer is a constructor object, not a hyper-parameter: record how to rebuild it
        checkpoint[TOKENIZER_KEY] = {"type": type(self.tokenizer).type_name,
                                     "config": self.tokenizer.config}

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        # a checkpoint of another tokenizer config: one line instead of torch's page of sizes
        check_state_shapes(self.state_dict(), state_dict,
                           f"another {type(self.tokenizer).type_name} config than the recipe's?")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def __init__(self, tokenizer: ImageTokenizer, reconstruction_loss: Literal["l1", "l2"] = "l1",
                 perceptual: PerceptualLoss | None = None, adversarial: AdversarialLoss | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.99), warmup_steps: int = 0,
                 min_lr_ratio: float = 0.1, ema_decay: float | None = None,
                 num_logged_images: int = 8, init_from: str | None = None) -> None:
        super().__init__()
        if reconstruction_loss not in ("l1", "l2"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'l2', got {reconstruction_loss!r}")
        if lr <= 0 or warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got {lr}, "
                             f"{warmup_steps}, {min_lr_ratio}")
        self.save_hyperparameters(ignore=["tokenizer", "perceptual", "adversarial"])
        if init_from is not None:
            load_exported_weights(tokenizer, init_from)
        self.tokenizer = tokenizer
        self.reconstruction_loss = reconstruction_loss
        self.perceptual = perceptual
        self.adversarial = adversarial
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.ema = ModelEMA(tokenizer, ema_decay) if ema_decay is not None else None
        self.num_logged_images = num_logged_images
        # the discriminator has its own optimizer, which needs manual optimization
        self.automatic_optimization = adversarial is None
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))  # mean of per-image PSNR
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.usage = CodebookUsage(tokenizer.codebook_size)
        self._ema_scope: contextlib.ExitStack | None = None
        self._grid: Tensor | None = None

    # -- losses ----------------------------------------------------------------------------------
    def _pixel_loss(self, reconstructions: Tensor, images: Tensor) -> Tensor:
        if self.reconstruction_loss == "l1":
            return F.l1_loss(reconstructions, images)
        return F.mse_loss(reconstructions, images)

    def generator_losses(self, images: Tensor, out: TokenizerOutput, adversarial: bool
                         ) -> dict[str, Tensor]:
        """All tokenizer-side loss terms; ``"loss"`` is the total to minimise."""
        terms = {"rec_loss": self._pixel_loss(out.reconstruction, images)}
        nll = terms["rec_loss"]
        if self.perceptual is not None:
            terms["perceptual_loss"] = self.perceptual(out.reconstruction, images)
            nll = nll + self.perceptual.weight * terms["perceptual_loss"]
        total = nll
        for name, value in out.losses.items():
            terms[f"quantizer_{name}"] = value
            total = total + value
        if adversarial and self.adversarial is not None:
            g_loss, weight = self.adversarial.generator_term(
                out.reconstruction, nll, getattr(self.tokenizer, "last_layer", None))
            terms["g_loss"], terms["g_weight"] = g_loss, weight
            total = total + weight * g_loss
        terms["loss"] = total
        return terms

    # -- training --------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.adversarial is not None and str(self.trainer.precision).startswith("16"):
            raise ValueError("the discriminator path steps its optimizer outside Lightning, so fp16 "
                             "loss scaling is unsupported: use precision bf16-mixed or 32")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        images = batch_images(batch)
        out = self.tokenizer(images)
        if self.adversarial is None:
            terms = self.generator_losses(images, out, adversarial=False)
        else:
            terms = self._adversarial_step(images, out)
        self._log_train(terms, out.codes, images.shape[0])
        return terms["loss"] if self.automatic_optimization else None

    def _adversarial_step(self, images: Tensor, out: TokenizerOutput) -> dict[str, Tensor]:
        opt_g, opt_d = self.optimizers()
        active = self.adversarial.active(self.global_step)
        terms = self.generator_losses(images, out, adversarial=active)
        opt_g.zero_grad()
        self.manual_backward(terms["loss"])
        opt_g.step()
        self._update_ema()  # manual optimization never calls optimizer_step
        self.lr_schedulers().step()
        if active:
            d_loss = self.adversarial.discriminator_term(images, out.reconstruction)
            raw_d = opt_d.optimizer  # stepped raw so global_step counts generator steps only
            raw_d.zero_grad()  # drops the grads the generator loss left in the discriminator
            self.manual_backward(d_loss)
            raw_d.step()
            terms["d_loss"] = d_loss
        return terms

    def _log_train(self, terms: dict[str, Tensor], codes: Tensor, batch_size: int) -> None:
        logged = {f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}
        logged["train/batch_code_usage"] = torch.tensor(
            codes.unique().numel() / self.tokenizer.codebook_size, device=codes.device)
        self.log_dict(logged, batch_size=batch_size)
        self.log("train/loss", terms["loss"].detach(), prog_bar=True, batch_size=batch_size)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # here, not in on_train_batch_end: Lightning runs callbacks (ModelCheckpoint) before the
        # module's on_train_batch_end, so a step-N checkpoint would hold N - 1 EMA updates and a
        # run resumed from it would lose one; once per optimizer step, also under accumulation
        self._update_ema()

    def _update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update(self.tokenizer)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.tokenizer.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, betas=self.betas,
                                      weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("the cosine LR schedule needs a finite run: set trainer.max_steps or "
                             "trainer.max_epochs")
        schedule = warmup_cosine(optimizer, self.warmup_steps, int(total), self.min_lr_ratio)
        scheduler = {"scheduler": schedule, "interval": "step"}
        if self.adversarial is None:
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        d_optimizer = torch.optim.AdamW(self.adversarial.discriminator.parameters(),
                                        lr=self.adversarial.lr or self.lr, betas=self.betas,
                                        weight_decay=self.weight_decay)
        return [optimizer, d_optimizer], [scheduler]

    # -- evaluation ------------------------------------------------------------------------------
    def _reset_metrics(self) -> None:
        # states made inside inference mode (``trainer.validate``) could not be updated in place
        # later under plain no_grad (validation during ``fit``), so always recreate them outside it
        with torch.inference_mode(False):
            for metric in (self.psnr, self.ssim, self.usage):
                metric.reset()

    def _start_eval(self) -> None:
        self._reset_metrics()
        if self.ema is not None:
            self._ema_scope = contextlib.ExitStack()
            self._ema_scope.enter_context(self.ema.swapped_into(self.tokenizer))

    def _end_ema(self) -> None:
        if self._ema_scope is not None:
            self._ema_scope.close()
            self._ema_scope = None

    def _eval_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        images = batch_images(batch)
        out = self.tokenizer(images)
        reconstructions = out.reconstruction.clamp(0.0, 1.0)
        self.psnr.update(reconstructions, images)
        self.ssim.update(reconstructions, images)
        self.usage.update(out.codes)
        self.log(f"{stage}/rec_loss", self._pixel_loss(out.reconstruction, images),
                 batch_size=images.shape[0])
        if batch_idx == 0 and self.num_logged_images > 0:
            self._grid = comparison_grid(images, reconstructions, self.num_logged_images)

    def _eval_epoch_end(self, stage: str) -> None:
        usage = self.usage.compute()
        self.log_dict({f"{stage}/psnr": self.psnr.compute(), f"{stage}/ssim": self.ssim.compute(),
                       f"{stage}/codebook_usage": usage["usage"].float(),
                       f"{stage}/perplexity": usage["perplexity"].float()})
        self._reset_metrics()
        if self._grid is not None and not self.trainer.sanity_checking:
            self._log_grid(self._grid, stage)
        self._grid = None
        self._end_ema()

    def _log_grid(self, grid: Tensor, stage: str) -> None:
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image(f"{stage}/reconstructions", grid, self.global_step)
        if self.trainer.is_global_zero:
            root = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            save_png(grid, root / "reconstructions" / f"{stage}_step{self.global_step:07d}.png")

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- export ----------------------------------------------------------------------------------
    def export(self, path: str | Path) -> None:
        """``save_pretrained`` the tokenizer (with its EMA weights when EMA is on), atomically."""
        with (self.ema.swapped_into(self.tokenizer) if self.ema is not None
              else contextlib.nullcontext()):
            self.tokenizer.save_pretrained(path)
