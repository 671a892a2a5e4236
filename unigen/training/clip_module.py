"""``ClipModule``: trains a small CLIP (Radford et al., 2021) on a data set's image-caption pairs so
CLIPScore means something on unigen's own domains, where OpenAI's CLIP has never seen the images.

The network is a ``transformers`` ``CLIPModel`` with a tiny ``CLIPConfig``; the text side uses a
word-level tokenizer built from the training texts (:mod:`unigen.metrics.clip_tokenizer`).
Validation logs the contrastive loss and duplicate-aware retrieval accuracy (image->text and
text->image top-1/top-5 over the whole validation set), the number that says whether the model's
CLIPScore can be trusted. ``export(dir)`` writes ``CLIPModel`` + ``CLIPProcessor`` directories that
:class:`unigen.metrics.CLIPScore` (or any transformers code) loads offline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import Subset
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from unigen import io
from unigen.metrics.clip_score import ClipEncoder
from unigen.metrics.clip_tokenizer import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID,
                                           build_vocabulary, build_word_tokenizer, words)
from unigen.metrics.retrieval import retrieval_accuracy
from unigen.training.optim import FusedOptimizerClipping, build_adamw, warmup_cosine

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the learned temperature at 100
VOCAB_KEY = "clip_vocabulary"
INFO_NAME = "unigen_clip.json"


class ClipModule(FusedOptimizerClipping, L.LightningModule):
    """Symmetric InfoNCE over image-caption batches (``batch["image"]`` [B, 3, H, W] in [0, 1],
    ``batch["caption"]`` list of str).

    Args:
        image_size: input size (linked from the data module by the CLI); patch_size divides it.
        vision_width, vision_layers, vision_heads: the ViT image tower.
        text_width, text_layers, text_heads, max_text_length: the causal text tower.
        projection_dim: size of the shared embedding space.
        vocab_size: rows of the text embedding table (>= 4 special tokens + the vocabulary).
        vocabulary: the words; ``None`` builds it at fit time from ``texts()`` of the training
            data set (the tokenizer corpus every unigen data set provides).
        lr, weight_decay, warmup_steps, min_lr_ratio: AdamW with warm-up + cosine decay.
        retrieval_ks: the k of the top-k retrieval accuracies logged at validation.
    """

    def __init__(self, image_size: int = 64, patch_size: int = 8, vision_width: int = 128,
                 vision_layers: int = 3, vision_heads: int = 4, text_width: int = 128,
                 text_layers: int = 3, text_heads: int = 4, max_text_length: int = 32,
                 projection_dim: int = 128, vocab_size: int = 256,
                 vocabulary: list[str] | None = None, lr: float = 5e-4, weight_decay: float = 0.1,
                 warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 retrieval_ks: Sequence[int] = (1, 5)) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
        self.save_hyperparameters()
        config = CLIPConfig(
            text_config={"vocab_size": vocab_size, "hidden_size": text_width,
                         "intermediate_size": 4 * text_width, "num_hidden_layers": text_layers,
                         "num_attention_heads": text_heads,
                         "max_position_embeddings": max_text_length,
                         "pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
                         "projection_dim": projection_dim},
            vision_config={"hidden_size": vision_width, "intermediate_size": 4 * vision_width,
                           "num_hidden_layers": vision_layers, "num_attention_heads": vision_heads,
                           "image_size": image_size, "patch_size": patch_size,
                           "projection_dim": projection_dim},
            projection_dim=projection_dim)
        # the processor (tokenizer) is attached once the vocabulary is known
        self.clip = ClipEncoder(CLIPModel(config), processor=None)
        self.vocabulary: list[str] | None = None
        self.retrieval: dict[str, float] = {}
        self._val_rows: list[tuple[Tensor, Tensor, list[str]]] = []
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    # -- text side ---------------------------------------------------------------------------------
    def set_vocabulary(self, vocabulary: Sequence[str]) -> None:
        hp = self.hparams
        if len(SPECIAL_TOKENS) + len(vocabulary) > hp.vocab_size:
            raise ValueError(f"{len(vocabulary)} words + {len(SPECIAL_TOKENS)} special tokens "
                             f"exceed vocab_size={hp.vocab_size}; raise model.init_args.vocab_size")
        tokenizer = build_word_tokenizer(vocabulary, hp.max_text_length)
        size = hp.image_size
        image_processor = CLIPImageProcessor(size={"shortest_edge": size},
                                             crop_size={"height": size, "width": size})
        self.clip.processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        self.vocabulary = list(vocabulary)

    def _training_texts(self) -> list[str]:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None:
            raise ValueError("ClipModule without `vocabulary` needs a datamodule to read texts "
                             "from")
        dataset = datamodule.train_dataloader().dataset
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        if not callable(getattr(dataset, "texts", None)):
            raise ValueError(f"the training data set {type(dataset).__name__} has no texts() "
                             "method; set model.init_args.vocabulary to the list of caption words")
        return list(dataset.texts())

    def setup(self, stage: str) -> None:
        if self.vocabulary is None:
            self.set_vocabulary(build_vocabulary(self._training_texts()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[VOCAB_KEY] = self.vocabulary

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get(VOCAB_KEY) is not None:
            self.set_vocabulary(checkpoint[VOCAB_KEY])

    # -- training ----------------------------------------------------------------------------------
    def _forward(self, batch: Mapping[str, Any]):
        if self.clip.processor is None:
            raise RuntimeError("ClipModule has no vocabulary yet (pass `vocabulary` or fit with a "
                               "datamodule)")
        text = self.clip.text_inputs(batch["caption"])
        if (text["input_ids"] == UNK_ID).any():
            # training on <unk> would quietly teach the model that different words mean the same
            known = set(self.vocabulary or [])
            unknown = sorted({w for c in batch["caption"] for w in words(c) if w not in known})
            raise ValueError(f"captions contain words outside the CLIP vocabulary: {unknown[:10]}; "
                             "add them to model.init_args.vocabulary")
        return self.clip.model(pixel_values=self.clip.pixel_values(batch["image"]), **text,
                               return_loss=True)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        out = self._forward(batch)
        n = len(batch["caption"])
        self.log("train/loss", out.loss, prog_bar=True, batch_size=n)
        self.log("train/logit_scale", self.clip.model.logit_scale.detach(), batch_size=n)
        return out.loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # right after the update, not in on_train_batch_end: ModelCheckpoint (a callback) runs
        # before the module's on_train_batch_end and would save the unclamped value
        with torch.no_grad():
            self.clip.model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def on_validation_epoch_start(self) -> None:
        self._val_rows = []

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        out = self._forward(batch)
        self.log("val/loss", out.loss, prog_bar=True, batch_size=len(batch["caption"]))
        self._val_rows.append((out.image_embeds.detach().cpu(), out.text_embeds.detach().cpu(),
                               list(batch["caption"])))

    def on_validation_epoch_end(self) -> None:
        images = torch.cat([r[0] for r in self._val_rows])
        texts = torch.cat([r[1] for r in self._val_rows])
        captions = [c for r in self._val_rows for c in r[2]]
        self._val_rows = []
        self.retrieval = retrieval_accuracy(images, texts, captions, self.hparams.retrieval_ks)
        for name, value in self.retrieval.items():
            self.log(f"val/{name}", value, prog_bar=name == "i2t_top1")

    def configure_optimizers(self):
        hp = self.hparams
        opt = build_adamw(self.clip.model, hp.lr, hp.weight_decay, (0.9, 0.98))
        total = self.trainer.estimated_stepping_batches if self.trainer else 10_000
        sched = warmup_cosine(opt, hp.warmup_steps, int(total), hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- export ------------------------------------------------------------------------------------
    def export(self, path: str | Path) -> None:
        """Write the CLIP (``save_pretrained`` of model and processor) plus ``unigen_clip.json``
        with the last validation retrieval accuracies."""
        if self.clip.processor is None:
            raise RuntimeError("cannot export a ClipModule without a vocabulary")
        with io.atomic_directory(path, marker=INFO_NAME) as tmp:
            self.clip.model.save_pretrained(tmp)
            self.clip.processor.save_pretrained(tmp)
            io.write_json(tmp / INFO_NAME, {"retrieval": self.retrieval,
                                            "vocabulary_size": len(self.vocabulary or [])})
