"""``UnifiedModule``: the LightningModule that trains the unified masked-diffusion transformer.

It holds a frozen image tokenizer (loaded from a directory made by a tokenizer recipe; batches may
instead carry pretokenized ``codes``), the text tokenizer, and the :class:`UnifiedTransformer`.  A
training step: tasks mixed by ratio -> clean sequences -> noise schedule masks targets -> optional
complementary copy (LaViDa) and condition dropout (CFG) -> transformer -> loss on masked positions.
The network is built in ``configure_model`` so recipes instantiate without any file on disk and
sharded strategies (FSDP) can wrap it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from unigen.data.batch_transforms import EncodeModalities, hand_off_batch_transform, segment_codes
from unigen.diffusion.losses import LOSS_KINDS, LOSS_REDUCTIONS, masked_token_loss
from unigen.diffusion.masking import Noiser, drop_condition
from unigen.diffusion.schedules import build_schedule
from unigen.diffusion.tasks import TaskBatch, TaskInputs, TaskMixture
from unigen.diffusion.token_space import TokenSpace
from unigen.diffusion.vocab import SequenceLayout, VocabLayout
from unigen.modalities import Modality, build_modalities
from unigen.modules.attention import check_attention_backend
from unigen.modules.transformer import UnifiedTransformer, check_transformer_size
from unigen.tokenizers.base import ImageTokenizer
from unigen.tokenizers.text import TextTokenizer
from unigen.training.checkpoint import RecordsClassPath
from unigen.training.compilation import compile_blocks, compile_mode, mark_step_begin
from unigen.training.frozen import FrozenImageTokenizer
from unigen.training.optim import OPTIMIZERS, FusedOptimizerClipping, build_optimizer, warmup_cosine
from unigen.training.reliability import NonFiniteLossGuard, micro_batch_index, step_seed
from unigen.training.stages import EvaluationStages
from unigen.training.validation_sampling import (
    check_sampling_options, log_validation_samples, sampling_defaults, validation_metrics,
)
from unigen.transfer import to_device

Noise = torch.Generator | list[torch.Generator]  # one per batch, or one per sample
ENCODE_TRANSFORM = "encode_modalities"  # the batch transform's name on the data module (setup)


@dataclass
class MaskPlan:
    """A step's masking, decided on the host (:meth:`UnifiedModule.plan_masks`)."""

    masked: Tensor  # [copies * B, S] bool: positions replaced by <mask> and predicted
    weight: Tensor  # [copies * B] each row's loss weight
    rows: Tensor  # [N] the masked positions' rows ...
    cols: Tensor  # [N] ... and columns (masked.nonzero())
    copies: int  # 2 with complementary masking (rows B + i mask row i's complement), else 1


class UnifiedModule(RecordsClassPath, FrozenImageTokenizer, FusedOptimizerClipping, EvaluationStages,
                    L.LightningModule):
    """Masked discrete diffusion over text + image tokens (Show-o, UniDisc, MDLM, LaViDa).

    Args:
        image_tokenizer: directory written by an image tokenizer's ``save_pretrained``.
        text_tokenizer: directory (or ``tokenizer.json``) written by ``TextTokenizer.save_pretrained``.
        image_size: training image size (linked from the data module by the CLI).
        max_text_len: length of the text segment (caption or question + answer, with ``<eos>``).
        question_slot: 0, or the text positions every question (+ ``<sep>``) is padded to, so the
            VQA answer always starts there and image + question form a cacheable prefix (LaViDa);
            see :class:`~unigen.diffusion.vocab.SequenceLayout`.
        answer_len: 0, or the text positions a VQA answer is trained and decoded in (answer +
            ``<eos>`` + padding; later positions are given ``<pad>``); see ``SequenceLayout``.
        dim, depth, heads, mlp_ratio, qk_norm, position, head, dropout: the transformer.
        head_kwargs: options of the output head (a registered plugin head's, e.g. ``{rank: 32}``),
            saved in the exported transformer's config.
        tasks: task name -> sampling ratio (``t2i``, ``caption``, ``vqa``, ``joint``, ``text``,
            ``inpaint`` or any registered task).
        task_kwargs: task name -> constructor arguments, e.g. ``{caption: {text: descriptions}}``
            trains captioning on the exhaustive scene descriptions of the shapes world.
        schedule, schedule_kwargs: masking schedule (``linear``, ``cosine``, ``polynomial``,
            ``arccos``; ``shift``).
        loss: ``ce`` (MaskGIT/Show-o) or ``elbo`` (MDLM 1/t weighting).
        loss_reduction: ``tokens`` (one mean over the batch: long targets such as images dominate)
            or ``tasks`` (each task's mean, then their weighted mean: Show-o's per-task losses);
            see :mod:`unigen.diffusion.losses`.
        task_loss_weights: task name -> weight with ``loss_reduction: tasks`` (default 1 each;
            Show-o's ``t2i_coeff`` / ``mmu_coeff``).
        complementary_masking: also train each sample with the complement of its mask (LaViDa).
        cond_dropout: probability of dropping a row's whole condition (classifier-free guidance).
        prefix_attention: condition positions attend only to the condition (enables the prefix cache).
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: AdamW with warm-up + cosine decay.
        optimizer: ``adamw``, or ``muon`` (Jordan et al. 2024: orthogonalized momentum for the
            blocks' weight matrices, AdamW with ``betas`` for embeddings, head and norms; its
            update is scaled to AdamW's RMS, so ``lr`` and ``weight_decay`` carry over;
            :mod:`unigen.training.muon`); a name registered in ``unigen.training.optim.OPTIMIZERS``.
        compile: ``torch.compile`` each transformer block: ``true`` (default mode) or a mode name,
            e.g. ``reduce-overhead`` (CUDA graphs; :mod:`unigen.training.compilation`).
        activation_checkpointing: recompute each transformer block's activations in backward
            instead of keeping them from the forward pass (Chen et al. 2016, "Training Deep Nets
            with Sublinear Memory Cost"): about a third more compute per step for the memory of
            one hidden state per block, so a larger model or batch fits on one GPU or with DDP.
            Same loss and gradients; not saved with the exported network.  Under FSDP use the
            strategy's ``activation_checkpointing_policy`` instead (both at once is refused;
            docs/performance.md, "Activation checkpointing").
        attention: the kernel of the training forward: ``sdpa`` (prefix attention as a dense mask),
            ``flex`` (FlexAttention block mask, compiled) or ``split`` (each row's prefix moved
            first, then SDPA without a mask; :mod:`unigen.modules.attention`).  The same function
            each way; exported pipelines decode with ``sdpa``.
        seed: seeds the per-step generators (task mixing, masking, dropout): exact resume on CPU.
        val_sampling: options for the sample grids and metrics logged at validation and test
            (the arguments of :func:`~unigen.training.validation_sampling.log_validation_samples`,
            checked here); ``{}`` turns them off.  ``unigen predict`` decodes with its
            ``num_steps``, ``guidance_scale``, ``sampler``, ``text_steps`` and ``seed``.
        modalities: further modalities, each a segment of its own (:mod:`unigen.modalities`):
            segment name -> ``{kind: registered modality, **its arguments}`` (``kind`` defaults
            to the name), e.g. ``{layout: {kind: shapes_layout}}`` with the tasks
            ``t2layout``, ``layout2i``, ``i2layout``.  Each reads its batch field
            (``Modality.field``); a data module with batch transforms encodes it in its loader
            workers (:meth:`setup`).
        per_sample_noise: draw each sample's task, mask and condition dropout from its own
            generator seeded by (seed, step, the sample's ``index``), not one generator per batch:
            N ranks with batch B then train exactly like one process with batch N*B (with
            ``loss: elbo``, a mean over rows); costs a Python loop over the rows.
        init_weights: pipeline directory (``--export_dir`` / ``save_pretrained``) whose transformer
            weights the model starts from, with a fresh optimizer and schedule: continuing a run
            in pieces (e.g. across lent GPU sessions).  Its architecture must be this recipe's and
            the tokenizers must be the pipeline's (one error otherwise).  To fine-tune with freezing
            or LoRA instead, use :class:`~unigen.training.finetune.FinetuneModule`.
    """

    #: arguments that only load starting weights: a checkpoint is rebuilt without them
    weights_only_init_args = ("init_weights",)

    def __init__(self, image_tokenizer: str, text_tokenizer: str, image_size: int = 64,
                 max_text_len: int = 24, dim: int = 256, depth: int = 6, heads: int = 4,
                 mlp_ratio: float = 4.0, qk_norm: bool = True, position: str = "learned",
                 head: str = "shared", dropout: float = 0.0,
                 tasks: dict[str, float] | None = None, task_kwargs: dict[str, dict] | None = None,
                 schedule: str = "cosine", schedule_kwargs: dict[str, float] | None = None,
                 loss: str = "ce", complementary_masking: bool = False, cond_dropout: float = 0.1,
                 prefix_attention: bool = True, lr: float = 3e-4, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100,
                 min_lr_ratio: float = 0.1, compile: bool | str = False, seed: int = 0,
                 val_sampling: dict[str, Any] | None = None, per_sample_noise: bool = False,
                 init_weights: str | None = None, question_slot: int = 0,
                 loss_reduction: str = "tokens", task_loss_weights: dict[str, float] | None = None,
                 answer_len: int = 0, attention: str = "sdpa",
                 modalities: dict[str, dict[str, Any]] | None = None,
                 activation_checkpointing: bool = False, optimizer: str = "adamw",
                 head_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        OPTIMIZERS.get(optimizer)  # an unknown name fails here, not when training starts
        if loss not in LOSS_KINDS:
            raise ValueError(f"loss must be one of {LOSS_KINDS}, got {loss!r}")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        compile_mode(compile)  # an unknown mode fails here, not when the model is built
        check_attention_backend(attention, dropout)
        check_transformer_size(dim, depth, heads, mlp_ratio)
        check_sampling_options(val_sampling, log_validation_samples)  # a typo fails now, not at validation
        self.save_hyperparameters()
        self.modalities: dict[str, Modality] = build_modalities(modalities)
        self.mixture = TaskMixture(tasks or {"t2i": 1.0}, task_kwargs)
        # a buffer, so it is on the training device without a copy every step (not checkpointed)
        self.register_buffer("task_loss_weight", task_weight_vector(
            self.mixture.names, loss_reduction, task_loss_weights), persistent=False)
        self.noiser = Noiser(build_schedule(schedule, **(schedule_kwargs or {})))
        self.net: UnifiedTransformer | None = None
        self.image_tokenizer: ImageTokenizer | None = None
        self.space: TokenSpace | None = None

    # -- construction --------------------------------------------------------------------------------
    def configure_model(self) -> None:
        checkpointing = activation_checkpointing_option(self)  # before the return: a strategy may be new
        if self.net is not None:
            return
        hp = self.hparams
        text_tok = TextTokenizer.from_pretrained(hp.text_tokenizer)
        image_tok = ImageTokenizer.from_pretrained(hp.image_tokenizer)
        image_tok.requires_grad_(False).eval()
        extra = getattr(self, "modalities", None) or {}  # (the AR model has no further modality)
        vocab = VocabLayout.from_tokenizers(text_tok, image_tok.codebook_size,
                                            {n: m.codebook_size for n, m in extra.items()})
        sequence = SequenceLayout(hp.max_text_len, image_tok.latent_grid(hp.image_size),
                                  hp.get("question_slot", 0), hp.get("answer_len", 0),
                                  {n: m.shape for n, m in extra.items()})
        self.space = TokenSpace(text_tok, vocab, sequence)
        # a task without its <name> token: stop before training (the AR subclass has no mixture)
        for task in getattr(getattr(self, "mixture", None), "tasks", ()):
            for token in task.task_tokens:
                self.space.task_token(token)
        if getattr(self, "mixture", None) is not None:
            self.mixture.check_segments(("text", "image", *extra))
        self.image_tokenizer = image_tok
        self.net = UnifiedTransformer(vocab, sequence, dim=hp.dim, depth=hp.depth, heads=hp.heads,
                                      mlp_ratio=hp.mlp_ratio, qk_norm=hp.qk_norm,
                                      position=hp.position, head=hp.head, dropout=hp.dropout,
                                      prefix_attention=hp.get("prefix_attention", True),
                                      head_kwargs=hp.get("head_kwargs"))
        if hp.get("init_weights"):
            from unigen.pipeline import load_transformer_weights

            load_transformer_weights(self.net, hp.init_weights)
        self.net.attention_backend = hp.get("attention", "sdpa")  # older checkpoints lack it
        self.net.activation_checkpointing = checkpointing
        compile_blocks(self.net.blocks, hp.compile)

    def data_modalities(self) -> dict[str, Modality]:
        """The modalities whose fields the data's loaders encode (:meth:`setup`)."""
        return getattr(self, "modalities", None) or {}

    def setup(self, stage: str) -> None:
        """Hand the data module the modalities' ``encode`` as a batch transform, so the loader
        workers make the codes: parsing a batch of layouts on the main process held every training
        step (benchmarks/modality_encode.py).  Data modules without the hook, and plain batches,
        are encoded in :meth:`task_inputs` as before, with the same codes.  ``predict_step`` uses
        no segment, so prediction is left alone."""
        super().setup(stage)
        modalities = self.data_modalities() if stage != "predict" else {}
        hand_off_batch_transform(self, ENCODE_TRANSFORM,
                                 EncodeModalities(modalities) if modalities else None)
        if stage != "predict" and self.hparams.val_sampling:
            # a metric's missing network (a classifier not trained yet) stops the run here, not
            # at the first validation thousands of steps in
            validation_metrics(self, self.hparams.val_sampling.get("metrics"),
                               self.hparams.val_sampling.get("metric_resources"))

    def teardown(self, stage: str) -> None:
        """Take the transform back: the data module may be reused with another model."""
        hand_off_batch_transform(self, ENCODE_TRANSFORM, None)
        super().teardown(stage)

    def check_state_shapes(self, state_dict) -> None:
        """One clear error when a checkpoint was trained with other tokenizers (torch would raise
        a page of size mismatches that names neither)."""
        own = self.state_dict()
        wrong = [k for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if not wrong:
            return
        vocab, hp = self.space.vocab, self.hparams
        rows = state_dict.get("net.token_emb.weight")
        if rows is not None and rows.shape[0] != vocab.total_size:
            extra = sum(vocab.extra.values())
            beside = f" and {extra} codes of further modalities" if extra else ""
            raise ValueError(f"codebook size mismatch: the checkpoint's token table has {rows.shape[0]} "
                             f"rows, i.e. {rows.shape[0] - vocab.text_size - extra} image codes with "
                             f"this text vocabulary of {vocab.text_size}{beside}, but the image "
                             f"tokenizer at {hp.image_tokenizer} has {vocab.image_size} codes (was it "
                             "trained with another image or text tokenizer, or other modalities?)")
        k = wrong[0]
        raise ValueError(f"checkpoint weights do not fit this model: {k} is "
                         f"{list(state_dict[k].shape)} in the checkpoint, {list(own[k].shape)} here "
                         f"({len(wrong)} tensors differ; other tokenizers, image size or model size?)")

    # -- data -> tasks -------------------------------------------------------------------------------
    def _generator(self, *salt: int) -> torch.Generator:
        """CPU generator seeded from the recipe seed, the global step and a salt, so every random
        choice in a step is reproducible and restored exactly on resume."""
        gen = torch.Generator()
        key = hash((self.hparams.seed, int(self.global_step), int(self.global_rank), *salt))
        return gen.manual_seed(key & 0x7FFF_FFFF_FFFF_FFFF)

    def _micro_batch(self, batch_idx: int) -> int:
        """Position of this batch in its gradient-accumulation window (:func:`micro_batch_index`)."""
        return micro_batch_index(self._trainer, batch_idx)

    def _step_generator(self, batch_idx: int) -> torch.Generator:
        """The training step's generator; each micro-batch of an accumulation window draws its own
        tasks, masks and condition dropout (they would all be the same with one seed per step).
        The first micro-batch keeps the seed a step without accumulation has always had, so runs
        without accumulation draw what they drew before."""
        micro = self._micro_batch(batch_idx)
        return self._generator(0, micro) if micro else self._generator(0)

    def _sample_generators(self, batch: dict[str, Any]) -> list[torch.Generator]:
        """One CPU generator per sample from (seed, global step, the sample's data-set index): a
        sample's noise does not depend on how the global batch is split (ranks, micro-batches)."""
        index = batch.get("index")
        if index is None:
            raise ValueError("per_sample_noise needs each sample's data-set 'index' in the batch")
        step = int(self.global_step)
        return [torch.Generator().manual_seed(step_seed(self.hparams.seed, step, int(i)))
                for i in index]

    def _build_tasks(self, inputs: TaskInputs, generator: Noise) -> tuple[TaskBatch, Tensor]:
        if isinstance(generator, torch.Generator):
            return self.mixture.build(inputs, self.space, generator)
        rows = [self.mixture.build(inputs.select([i]), self.space, g) for i, g in enumerate(generator)]
        tb = TaskBatch.concat_rows([([i], row) for i, (row, _) in enumerate(rows)], len(rows))
        return tb, torch.cat([assignment for _, assignment in rows])

    def _mask(self, target: Tensor, generator: Noise) -> tuple[Tensor, Tensor]:
        if isinstance(generator, torch.Generator):
            return self.noiser(target, generator)
        rows = [self.noiser(target[i:i + 1], g) for i, g in enumerate(generator)]
        return torch.cat([m for m, _ in rows]), torch.cat([t for _, t in rows])

    def _drop_condition(self, inputs: Tensor, cond: Tensor, generator: Noise) -> Tensor:
        p, mask_id = self.hparams.cond_dropout, self.space.mask_id
        if isinstance(generator, torch.Generator):
            return drop_condition(inputs, cond, p, mask_id, generator)[0]
        # complementary masking doubles the rows: row i and its copy B + i share generator i
        gens = list(generator) * (len(inputs) // len(generator))
        return torch.cat([drop_condition(inputs[i:i + 1], cond[i:i + 1], p, mask_id, g)[0]
                          for i, g in enumerate(gens)])

    def task_inputs(self, batch: dict[str, Any]) -> TaskInputs:
        if "codes" in batch:  # pretokenized shards: the image tokenizer never runs here
            codes = batch["codes"].long()
        else:
            # the data modules produce [0, 1] images; the tokenizer's range check reads the tensor on
            # the host, which would make every training step wait for the GPU
            codes = self.image_tokenizer.encode(batch["image"], check_values=False)
        segments = {}
        for name, modality in (getattr(self, "modalities", None) or {}).items():
            # made by the loader's workers when the data module took the transform (setup)
            seg = segment_codes(batch, name, modality)
            if seg is not None:  # a task that needs the segment names a missing field
                segments[name] = to_device(seg, codes.device)
        return TaskInputs(codes, batch.get("caption"), batch.get("question"), batch.get("answer"),
                          batch.get("description"), segments=segments or None)

    # -- loss ----------------------------------------------------------------------------------------
    def plan_masks(self, tb: TaskBatch, generator: Noise) -> MaskPlan:
        """The host side of a training step's loss: which targets are masked (the noise schedule;
        with complementary masking a second copy of every row masks the complement, LaViDa), each
        row's loss weight (MDLM's 1/t with ``loss: elbo``) and the masked positions as index lists.

        Every choice is made on the host (the task batch's masks live there) and copied to the
        device without waiting for it: picking the masked positions on the GPU (``nonzero``)
        would hold the host until the forward pass could start, every step (issue #8)."""
        hp = self.hparams
        masked, t = self._mask(tb.target, generator)
        schedule, targets = self.noiser.schedule, tb.target.sum(1).clamp_min(1)

        def weights(rows: Tensor) -> Tensor:  # MDLM's 1/t, over the share each row masks
            return schedule.share_weight(t, rows.sum(1) / targets) if hp.loss == "elbo" else torch.ones_like(t)

        weight = weights(masked)
        copies = 1
        if hp.complementary_masking:
            # the complement masks every target the first copy left visible, so each target token
            # is trained exactly once per pair
            comp = tb.target & ~masked
            comp_weight = weights(comp)
            masked = torch.cat((masked, comp))
            weight = torch.cat((weight, comp_weight.to(weight)))
            copies = 2
        rows, cols = masked.nonzero(as_tuple=True)
        return MaskPlan(masked, weight, rows, cols, copies)

    def diffusion_loss(self, tb: TaskBatch, generator: Noise, assignment: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
        """Mask (:meth:`plan_masks`), predict, score.  ``assignment`` [B] (each row's task index,
        on the CPU) turns on the ``tasks`` loss reduction when the recipe asks for it.  Returns
        (loss, per-row mean CE [B])."""
        hp, mask_id, device = self.hparams, self.space.mask_id, tb.tokens.device
        plan = self.plan_masks(tb, generator)
        tokens, target, cond, prefix = (torch.cat((x,) * plan.copies) if plan.copies > 1 else x
                                        for x in (tb.tokens, tb.target, tb.cond, tb.prefix))
        inputs = tokens.masked_fill(to_device(plan.masked, device), mask_id)
        if hp.cond_dropout > 0:
            inputs = self._drop_condition(inputs, cond, generator)
        hidden = self.net.hidden_states(inputs, prefix if hp.prefix_attention else None)
        rows, cols = to_device(plan.rows, device), to_device(plan.cols, device)
        logits = self.net.logits(hidden[rows, cols], self.net.modality[cols])
        row_task = task_weight = None
        if self.task_loss_weight is not None and assignment is not None:
            row_task = to_device(assignment.repeat(plan.copies), device)
            task_weight = self.task_loss_weight
        loss, per_row = masked_token_loss(logits, tokens[rows, cols], rows,
                                          to_device(plan.weight, device),
                                          to_device(target.sum(1), device), hp.loss, row_task,
                                          task_weight)
        if plan.copies > 1:  # a row's mean over its targets, each scored once by the pair
            counts = to_device(plan.masked.sum(1), device).to(per_row.dtype)
            half = per_row.shape[0] // 2
            per_row = ((per_row * counts).view(2, half).sum(0)
                       / counts.view(2, half).sum(0).clamp_min(1))
        return loss, per_row

    def _log_task_losses(self, stage: str, per_row: Tensor, assignment: Tensor) -> None:
        # assignment lives on the CPU, so choosing rows never waits for the GPU
        absent = []
        for i, name in enumerate(self.mixture.names):
            rows = (assignment == i).nonzero().squeeze(-1)
            if len(rows):
                self.log(f"{stage}/loss_{name}", per_row[to_device(rows, per_row.device)].mean(),
                         batch_size=len(rows))
            else:
                absent.append(f"{stage}/loss_{name}")
        forget_unlogged(self, absent)

    def _writes_step_logs(self) -> bool:
        """Whether Lightning writes step-level metrics after this step (every ``log_every_n_steps``).
        Values logged on other steps are dropped, yet each ``self.log`` call costs Python time (the
        per-task losses were 8% of a tiny CPU step, benchmarks/train_throughput.py), so they are
        logged only on these steps."""
        trainer = self._trainer
        return trainer is None or trainer._logger_connector.should_update_logs

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        mark_step_begin(self.hparams.get("compile"))  # FinetuneModule's hparams have no compile

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        gen = (self._sample_generators(batch) if self.hparams.get("per_sample_noise")
               else self._step_generator(batch_idx))
        tb, assignment = self._build_tasks(self.task_inputs(batch), gen)
        loss, per_row = self.diffusion_loss(tb, gen, assignment)
        if self._writes_step_logs():
            # only where the logger writes: the progress bar reads every value logged, and each read
            # makes the host wait for the GPU (the bar then refreshes its loss at these steps)
            self.log("train/loss", loss, prog_bar=True, batch_size=len(per_row))
            self._log_task_losses("train", per_row.detach(), assignment)
        return loss

    def _evaluation_step(self, stage: str, batch: dict[str, Any], batch_idx: int) -> None:
        # every task on every batch with a fixed generator: comparable across epochs
        inputs = self.task_inputs(batch)
        gen = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + batch_idx)
        losses = []
        for name, task in zip(self.mixture.names, self.mixture.tasks):
            tb = task.build(inputs, self.space, gen)
            loss, _ = self.diffusion_loss(tb, gen)
            self.log(f"{stage}/loss_{name}", loss, batch_size=len(tb.tokens), sync_dist=True)
            losses.append(loss)
        self.log(f"{stage}/loss", torch.stack(losses).mean(), prog_bar=True, sync_dist=True,
                 batch_size=len(inputs))
        if batch_idx == 0:
            self._sample_batch = batch

    def _log_samples(self, stage: str) -> None:
        """The sample grids and generation metrics of ``val_sampling`` on the stage's first batch."""
        batch = getattr(self, "_sample_batch", None)
        self._sample_batch = None
        if batch is None or not self.hparams.val_sampling:
            return
        if "image" not in batch:  # pretokenized shards: the grids and metrics need pixels
            batch = {**batch, "image": self.image_tokenizer.decode(batch["codes"].long())}
        log_validation_samples(self, batch, **self.hparams.val_sampling, stage=stage)

    # -- prediction ----------------------------------------------------------------------------------
    def predict_settings(self) -> dict[str, Any]:
        """How ``unigen predict`` decodes: ``val_sampling``'s decoding options over the defaults of
        :func:`~unigen.training.validation_sampling.log_validation_samples`."""
        settings = sampling_defaults(log_validation_samples)
        settings.update(self.hparams.get("val_sampling") or {})
        return {k: settings[k] for k in ("num_steps", "guidance_scale", "sampler", "text_steps",
                                         "seed")}

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
                     ) -> dict[str, Any]:
        """What the model makes of one batch of the data module's predict split: an image from
        each caption (tasks ``t2i``, ``joint`` or ``inpaint``), a caption of each image
        (``caption``) and an answer to each question (``vqa``).  Sample ``i`` of the data set
        uses seed ``seed + i``, so a sample's output does not depend on the batch.  Returns plain
        lists and uint8 CPU images, which :class:`~unigen.training.prediction.PredictionWriter`
        writes (the module installs it when predicting, :meth:`configure_callbacks`)."""
        from unigen.training.prediction import batch_indices, to_uint8

        s, tasks, pipe = self.predict_settings(), set(self.mixture.names), self.to_pipeline()
        index = batch_indices(batch, batch_idx)
        seeds = [s["seed"] + i for i in index]
        out: dict[str, Any] = {"index": index}
        captions = batch.get("caption")
        if tasks & {"t2i", "joint", "inpaint"} and captions and all(captions):
            images = pipe.text_to_image(list(captions), num_steps=s["num_steps"],
                                        guidance_scale=s["guidance_scale"], sampler=s["sampler"],
                                        seed=seeds, output="tensor")
            out.update(prompt=list(captions), generated=to_uint8(images))
        questions = batch.get("question")
        asks = bool("vqa" in tasks and questions and all(questions))
        if "caption" in tasks or asks:
            images_in = batch.get("image")
            if images_in is None:  # pretokenized shards
                images_in = self.image_tokenizer.decode(batch["codes"].long()).clamp(0, 1)
            out["input"] = to_uint8(images_in)
            if "caption" in tasks:
                out["caption"] = pipe.caption(images_in, num_steps=s["text_steps"], seed=seeds)
            if asks:
                out["question"] = list(questions)
                out["answer"] = pipe.answer(images_in, out["question"], num_steps=s["text_steps"],
                                            seed=seeds)
        return out

    # -- optimisation --------------------------------------------------------------------------------
    def configure_callbacks(self) -> list[L.Callback]:
        """The NaN guard comes with the module, whatever builds the Trainer (on a GPU it checks
        without a host read per step); a guard the Trainer has already (``unigen fit`` installs
        one, a recipe may configure its own) is kept."""
        trainer = self._trainer
        if trainer is not None and getattr(trainer, "predicting", False):
            # ``unigen predict`` writes what predict_step returns (a recipe's own writer is kept)
            from lightning.pytorch.callbacks import BasePredictionWriter

            from unigen.training.prediction import PredictionWriter

            return [] if any(isinstance(cb, BasePredictionWriter) for cb in trainer.callbacks) \
                else [PredictionWriter()]
        if trainer is not None and any(isinstance(cb, NonFiniteLossGuard) for cb in trainer.callbacks):
            return []
        return [NonFiniteLossGuard()]

    def configure_optimizers(self):
        hp = self.hparams
        # checkpoints and modules without the option (fine-tuning) train with AdamW
        strategy = self.trainer.strategy if self._trainer is not None else None
        opt = build_optimizer(hp.get("optimizer", "adamw"), self.net, hp.lr, hp.weight_decay,
                              tuple(hp.betas), hidden=self.net.blocks, strategy=strategy)
        total = self.trainer.estimated_stepping_batches if self.trainer else 10_000
        sched = warmup_cosine(opt, hp.warmup_steps, int(total), hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- export --------------------------------------------------------------------------------------
    def to_pipeline(self):
        """A :class:`unigen.pipeline.UnifiedPipeline` sharing this module's networks."""
        from unigen.pipeline import UnifiedPipeline

        self.configure_model()
        mixture = getattr(self, "mixture", None)
        return UnifiedPipeline(self.net, self.image_tokenizer, self.space.text_tokenizer,
                               getattr(self, "modalities", None),
                               None if mixture is None else list(mixture.names))

    def export(self, path: str | Path) -> None:
        self.to_pipeline().save_pretrained(path)


def activation_checkpointing_option(module: L.LightningModule) -> bool:
    """The module's ``activation_checkpointing`` (False where its hparams lack it: checkpoints saved
    before the option, modules that do not offer it), refused next to FSDP's own policy: Lightning's
    ``FSDPStrategy(activation_checkpointing_policy=...)`` already recomputes each wrapped block, and
    checkpointing the blocks inside it again would recompute them twice."""
    on = bool(module.hparams.get("activation_checkpointing", False))
    trainer = module._trainer  # None outside a Trainer (tests, export, checkpoint loading)
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    if on and strategy is not None:
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(strategy, FSDPStrategy) and getattr(strategy, "_activation_checkpointing_kwargs", None):
            raise ValueError(
                "model activation_checkpointing: true and the FSDP strategy's "
                "activation_checkpointing_policy both recompute the transformer blocks (twice over "
                "together): keep one, e.g. --model.init_args.activation_checkpointing false with "
                "recipes/presets/fsdp.yaml, or drop the strategy's activation_checkpointing_policy")
    return on


def forget_unlogged(module: L.LightningModule, names: list[str]) -> None:
    """Keep metrics ``names`` out of this step's logs.  Lightning's result collection re-emits the
    last value of an ``on_step`` key that was not logged in the current step (its cache is kept),
    so a task without rows in a step would show the loss of an earlier step.  Marking the entry as
    reset hides it until it is logged again; no tensor is read."""
    trainer = module._trainer
    results = getattr(trainer, "_results", None) if trainer is not None else None
    fx = getattr(module, "_current_fx_name", None)
    if results is None or fx is None:
        return
    for name in names:
        entry = results.get(f"{fx}.{name}")
        if entry is not None:
            entry.has_reset = True


def task_weight_vector(names: list[str], reduction: str, weights: dict[str, float] | None
                       ) -> Tensor | None:
    """The ``tasks`` reduction's weight per task, in the mixture's order (None: ``tokens``)."""
    if reduction == "tokens":
        if weights:
            raise ValueError("task_loss_weights needs loss_reduction: tasks (with tokens every masked "
                             "token counts once)")
        return None
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"task_loss_weights names tasks the recipe does not train: {unknown} "
                         f"(tasks: {names})")
    bad = {k: v for k, v in weights.items() if not v > 0}
    if bad:
        raise ValueError(f"task_loss_weights must be > 0 (leave a task out of tasks instead): {bad}")
    return torch.tensor([float(weights.get(n, 1.0)) for n in names])
