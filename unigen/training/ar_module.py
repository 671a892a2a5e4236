"""The autoregressive baseline: the same network, trained with a causal mask and next-token loss.

``AutoregressiveModule`` trains the :class:`~unigen.modules.transformer.UnifiedTransformer` of
:class:`~unigen.training.unified_module.UnifiedModule` (same tokenizers, sequence layout
``[t2i][bos] text [soi] image [eoi]``, positions, head, AdamW + warm-up/cosine, condition dropout for
classifier-free guidance) as a decoder-only text-to-image model in raster order (LlamaGen, Sun et al.
2024; Parti): every position attends to itself and earlier ones, and the position before each image
token predicts it.  Only the mask, the loss and the decoding differ from the masked model, so
comparing the two measures the generation paradigm, not the plumbing.

``AutoregressivePipeline`` samples it with the KV-cached decoder of :mod:`unigen.sampling.autoregressive`
and saves/loads like :class:`~unigen.pipeline.UnifiedPipeline`, marked ``"kind": "autoregressive"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from unigen.diffusion.masking import drop_condition
from unigen.diffusion.tasks import TASKS, TaskBatch, TaskInputs
from unigen.modules.attention import check_attention_backend
from unigen.modules.transformer import check_transformer_size
from unigen.pipeline import UnifiedPipeline
from unigen.sampling.autoregressive import generate_image_tokens
from unigen.sampling.guidance import ClassifierFreeGuidance
from unigen.tokenizers.base import ImageTokenizer
from unigen.training.checkpoint import RecordsClassPath
from unigen.training.compilation import compile_mode
from unigen.training.frozen import FrozenImageTokenizer
from unigen.training.optim import OPTIMIZERS
from unigen.training.stages import EvaluationStages
from unigen.training.unified_module import UnifiedModule
from unigen.training.validation_sampling import (
    _log_dir, _log_image, check_sampling_options, sampling_defaults,
)
from unigen.visual import captioned_grid, save_png

PIPELINE_KIND = "autoregressive"


class AutoregressiveModule(RecordsClassPath, FrozenImageTokenizer, EvaluationStages, L.LightningModule):
    """Decoder-only text-to-image baseline on the unified transformer.

    Args (same meaning as :class:`~unigen.training.unified_module.UnifiedModule`'s):
        image_tokenizer, text_tokenizer: tokenizer directories.
        image_size, max_text_len: the sequence layout (image_size is linked from the data by the CLI).
        dim, depth, heads, mlp_ratio, qk_norm, position, head, dropout: the transformer.
        cond_dropout: probability of replacing a row's prompt by ``<mask>`` (classifier-free guidance).
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: AdamW with warm-up + cosine decay.
        optimizer: ``adamw`` or ``muon``, as for :class:`UnifiedModule` (twins train alike).
        compile: ``torch.compile`` each transformer block: ``true`` or a mode name.
        activation_checkpointing: recompute each block's activations in backward instead of
            keeping them (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): less
            memory for about a third more compute; same loss and gradients.  Not with FSDP's own
            ``activation_checkpointing_policy`` (refused).
        attention: ``sdpa`` (SDPA's own causal kernel) or ``flex`` (FlexAttention); ``split``
            only changes prefix attention, so here it runs as ``sdpa``.
        seed: seeds the per-step generators (condition dropout): exact resume on CPU.
        val_sampling: ``{num_samples, guidance_scale, temperature, top_k, seed}`` for the sample grid
            and checker accuracy logged at validation and test (checked here); ``{}`` turns it
            off.  ``unigen predict`` draws with its ``guidance_scale``, ``temperature``, ``top_k``
            and ``seed``.
    """

    def __init__(self, image_tokenizer: str, text_tokenizer: str, image_size: int = 64,
                 max_text_len: int = 24, dim: int = 256, depth: int = 6, heads: int = 4,
                 mlp_ratio: float = 4.0, qk_norm: bool = True, position: str = "learned",
                 head: str = "shared", dropout: float = 0.0, cond_dropout: float = 0.1,
                 lr: float = 3e-4, weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95),
                 warmup_steps: int = 100, min_lr_ratio: float = 0.1, compile: bool | str = False,
                 seed: int = 0, val_sampling: dict[str, Any] | None = None,
                 attention: str = "sdpa", activation_checkpointing: bool = False,
                 optimizer: str = "adamw") -> None:
        super().__init__()
        OPTIMIZERS.get(optimizer)
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        compile_mode(compile)
        check_attention_backend(attention, dropout)
        check_transformer_size(dim, depth, heads, mlp_ratio)
        check_sampling_options(val_sampling, log_ar_validation_samples)
        self.save_hyperparameters()
        # the masked model's own t2i task: identical token layout and condition segment
        self.task = TASKS.get("t2i")()
        self.net = None
        self.image_tokenizer: ImageTokenizer | None = None
        self.space = None

    # UnifiedModule's own construction, per-step generators, data path and optimizer: the two models
    # differ only in attention mask, loss and decoding (these functions use no zero-argument super())
    configure_model = UnifiedModule.configure_model
    check_state_shapes = UnifiedModule.check_state_shapes  # one line, not torch's page of sizes
    _generator = UnifiedModule._generator
    _micro_batch = UnifiedModule._micro_batch
    _step_generator = UnifiedModule._step_generator
    task_inputs = UnifiedModule.task_inputs
    configure_optimizers = UnifiedModule.configure_optimizers
    configure_callbacks = UnifiedModule.configure_callbacks
    _writes_step_logs = UnifiedModule._writes_step_logs
    on_train_batch_start = UnifiedModule.on_train_batch_start

    # -- loss ----------------------------------------------------------------------------------------
    def next_token_loss(self, tb: TaskBatch, generator: torch.Generator | None) -> Tensor:
        """Mean cross-entropy of every image token given the prompt and the image tokens before it.
        With a ``generator``, prompts are dropped with probability ``cond_dropout`` (training)."""
        tokens = tb.tokens
        if generator is not None and self.hparams.cond_dropout > 0:
            tokens, _ = drop_condition(tokens, tb.cond, self.hparams.cond_dropout, self.space.mask_id,
                                       generator)
        hidden = self.net.hidden_states(tokens, causal=True)
        image = self.space.sequence.image
        # position p predicts token p + 1: ``<soi>`` predicts the first image token
        logits = self.net.logits(hidden[:, image.start - 1 : image.stop - 1], self.net.modality[image])
        return F.cross_entropy(logits.flatten(0, 1), tb.tokens[:, image].flatten())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        gen = self._step_generator(batch_idx)
        tb = self.task.build(self.task_inputs(batch), self.space, gen)
        loss = self.next_token_loss(tb, gen)
        if self._writes_step_logs():  # as UnifiedModule: no host read of the loss between logs
            self.log("train/loss", loss, prog_bar=True, batch_size=len(tb.tokens))
        return loss

    def _evaluation_step(self, stage: str, batch: dict[str, Any], batch_idx: int) -> None:
        tb = self.task.build(self.task_inputs(batch), self.space)
        loss = self.next_token_loss(tb, None)  # the conditional likelihood: no prompt dropout
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(tb.tokens))
        if batch_idx == 0:
            self._sample_batch = batch

    def _log_samples(self, stage: str) -> None:
        batch = getattr(self, "_sample_batch", None)
        self._sample_batch = None
        if batch is not None and self.hparams.val_sampling:
            metrics = log_ar_validation_samples(self, batch, **self.hparams.val_sampling, stage=stage)
            for key, value in metrics.items():
                self.log(key, torch.tensor(value, device=self.device), sync_dist=True)  # NCCL: no host tensors

    # -- prediction ----------------------------------------------------------------------------------
    def predict_settings(self) -> dict[str, Any]:
        settings = sampling_defaults(log_ar_validation_samples)
        settings.update(self.hparams.get("val_sampling") or {})
        return {k: settings[k] for k in ("guidance_scale", "temperature", "top_k", "seed")}

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
                     ) -> dict[str, Any]:
        """An image from each caption of the batch (sample ``i`` with seed ``seed + i``), in
        :meth:`UnifiedModule.predict_step`'s format (text to image only)."""
        from unigen.training.prediction import batch_indices, to_uint8

        s = self.predict_settings()
        index = batch_indices(batch, batch_idx)
        captions = list(batch["caption"])
        images = self.to_pipeline().text_to_image(
            captions, guidance_scale=s["guidance_scale"], temperature=s["temperature"],
            top_k=s["top_k"], seed=[s["seed"] + i for i in index], output="tensor")
        return {"index": index, "prompt": captions, "generated": to_uint8(images)}

    # -- export --------------------------------------------------------------------------------------
    def to_pipeline(self) -> "AutoregressivePipeline":
        self.configure_model()
        return AutoregressivePipeline(self.net, self.image_tokenizer, self.space.text_tokenizer)

    def export(self, path: str | Path) -> None:
        self.to_pipeline().save_pretrained(path)


def log_ar_validation_samples(module: AutoregressiveModule, batch: dict[str, Any], num_samples: int = 8,
                              guidance_scale: float = 1.0, temperature: float = 1.0,
                              top_k: int | None = None, seed: int = 0, *, stage: str = "val"
                              ) -> dict[str, float]:
    """Generate from the first val captions, save a captioned grid and, for shapes data, return the
    pixel checker's accuracy (the metric the masked model logs as ``val/t2i_checker_accuracy``;
    ``stage`` ``test`` logs ``test/...`` and names the grid ``test_ar_t2i_step*.png``)."""
    captions = list(batch["caption"][:num_samples])
    was_training = module.net.training
    module.net.eval()
    try:
        images = module.to_pipeline().text_to_image(captions, guidance_scale=guidance_scale,
                                                    temperature=temperature, top_k=top_k, seed=seed,
                                                    output="tensor").cpu()
    finally:
        module.net.train(was_training)
    grid = captioned_grid(images, captions)
    prefix = "" if stage == "val" else f"{stage}_"
    save_png(grid, _log_dir(module) / "samples" / f"{prefix}ar_t2i_step{module.global_step:07d}.png")
    _log_image(module, f"{stage}/ar_t2i_samples", grid)
    scenes = batch.get("scene")
    if not scenes or not scenes[0]:
        return {}
    from unigen.data.checker import check, parse_caption

    ok = [check(img, parse_caption(c)).correct for img, c in zip(images, captions)]
    return {f"{stage}/t2i_checker_accuracy": sum(ok) / len(ok)}


class AutoregressivePipeline(UnifiedPipeline):
    """Text-to-image with the autoregressive baseline; same directory layout as
    :class:`~unigen.pipeline.UnifiedPipeline` plus ``"kind": "autoregressive"`` in ``pipeline.json``."""

    KIND = PIPELINE_KIND

    def text_to_image(self, prompts: str | Sequence[str], guidance_scale: float = 1.0,
                      temperature: float = 1.0, top_k: int | None = None,
                      seed: int | Sequence[int] = 0, generator=None, output: str = "pil",
                      use_cache: bool = True, guidance_kwargs: dict[str, Any] | None = None,
                      return_calls: bool = False, num_images_per_prompt: int = 1
                      ) -> list[Image.Image] | Tensor | tuple:
        """One image per prompt (``num_images_per_prompt`` each, as the masked pipeline), decoded
        token by token (sample ``i`` uses ``seed + i``); ``return_calls=True`` adds each
        sample's network calls (one per image token)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        prompts = self._per_image(prompts, num_images_per_prompt)
        grid = self.space.sequence.grid
        codes = torch.zeros(len(prompts), *grid, dtype=torch.long, device=self.device)
        tb = TASKS.get("t2i")().build(TaskInputs(codes, captions=prompts), self.space)
        guidance = None
        if guidance_scale != 1.0 or guidance_kwargs:
            guidance = ClassifierFreeGuidance(guidance_scale, **(guidance_kwargs or {}))
        with torch.inference_mode():
            result = generate_image_tokens(
                self.transformer, tb.tokens.to(self.device), mask_id=self.space.mask_id,
                temperature=temperature, top_k=top_k,
                generator=self.generators(len(prompts), seed, generator), guidance=guidance,
                cond_mask=tb.cond.to(self.device), use_cache=use_cache)
        return self._image_output(result.tokens, output, result.calls_per_row.tolist(), return_calls)

    def _text_to_image_only(self, *args: Any, **kwargs: Any):
        raise NotImplementedError("the autoregressive baseline generates images from text only "
                                  "(captioning, VQA, inpainting, image to image and infilling "
                                  "need the masked model)")

    caption = answer = inpaint = image_to_image = infill = _text_to_image_only
