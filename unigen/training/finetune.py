"""Fine-tuning a trained unified model on new data: all weights, a chosen part, or LoRA adapters.

:class:`FinetuneModule` starts from a pipeline directory (``--export_dir`` / ``save_pretrained``):
the transformer's architecture and weights and both tokenizers come from there, so a recipe names
only the training settings.  ``train_only`` picks what trains, by preset (:data:`TRAIN_PRESETS`,
e.g. ``[head]``, ``[image_head]``, ``[attention]``, ``[lora]``) or by ``fnmatch`` pattern over the
transformer's parameter names; everything else is frozen (``requires_grad=False``, left out of the
optimizer).  With ``lora:`` the targeted linear layers get LoRA adapters (Hu et al. 2021,
:mod:`unigen.modules.lora`) and by default only the adapters train (the parameter-efficient
fine-tuning of Show-o / MMaDA-style unified models on a new domain).

Outputs: ``export`` (``--export_dir``) writes a plain pipeline with the adapters merged, usable by
every other command; ``adapter_dir`` additionally receives the adapters alone (megabytes, not the
whole model), which ``unigen merge-lora`` merges into the base pipeline later.
"""

from __future__ import annotations

import copy
import inspect
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from torch import nn

from unigen.modules.lora import LoRAConfig, apply_lora, load_lora, merge_lora, read_lora_config, save_lora
from unigen.registry import Registry
from unigen.training.unified_module import UnifiedModule, activation_checkpointing_option

# preset name -> patterns over the parameter names of unigen.modules.transformer.UnifiedTransformer
TRAIN_PRESETS: Registry[tuple[str, ...]] = Registry("train_only preset")
TRAIN_PRESETS.register("all")(("*",))
LORA_SUFFIXES = (".lora_a", ".lora_b")  # unigen.modules.lora.LoRALinear's adapter parameters
TRAIN_PRESETS.register("lora")(tuple(f"*{s}" for s in LORA_SUFFIXES))
TRAIN_PRESETS.register("head")(("head.*",))
TRAIN_PRESETS.register("image_head")(("head.image.*",))  # head: separate (UniDisc-style) only
TRAIN_PRESETS.register("text_head")(("head.text.*",))
TRAIN_PRESETS.register("attention")(("blocks.*.attn.*",))
TRAIN_PRESETS.register("mlp")(("blocks.*.mlp.*",))
TRAIN_PRESETS.register("norms")(("*norm*",))
TRAIN_PRESETS.register("embeddings")(("token_emb.*", "modality_emb.*", "learned_pos.*"))


def trainable_patterns(train_only: list[str]) -> dict[str, tuple[str, ...]]:
    """Each ``train_only`` entry -> its patterns (a preset's, or the entry itself)."""
    if not train_only:
        raise ValueError(f"train_only must name at least one preset ({', '.join(TRAIN_PRESETS.names())}) "
                         "or parameter pattern")
    return {e: TRAIN_PRESETS.get(e) if e in TRAIN_PRESETS else (e,) for e in train_only}


def freeze(model: nn.Module, train_only: list[str]) -> list[str]:
    """Train exactly the parameters matched by ``train_only`` and freeze the rest; an entry that
    matches nothing is an error (a typo must not silently train nothing).  Returns the names."""
    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for entry, patterns in trainable_patterns(train_only).items():
        hits = {n for n in names if any(fnmatchcase(n, p) for p in patterns)}
        if not hits:
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise ValueError(f"train_only entry {entry!r} (patterns {list(patterns)}) matches no "
                             f"parameter of {type(model).__name__} (names look like: {shown}; "
                             f"image_head/text_head need head: separate, lora needs lora:)")
        chosen |= hits
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    return [n for n in names if n in chosen]


class FinetuneModule(UnifiedModule):
    """:class:`UnifiedModule` initialised from a trained pipeline, with freezing and LoRA.

    Args:
        init_from: pipeline directory (``save_pretrained`` / ``--export_dir``); the architecture,
            weights and tokenizers come from there (it must exist when training starts and when a
            checkpoint of this module is reloaded).
        image_size: linked from the data module; must be the pipeline's image size.
        lora: LoRA options (:class:`~unigen.modules.lora.LoRAConfig`: ``rank``, ``alpha``,
            ``dropout``, ``targets``, ``seed``) or ``None`` for no adapters.
        train_only: what trains (:data:`TRAIN_PRESETS` names or parameter patterns); default
            ``[lora]`` with adapters, else ``[all]``.
        adapter_dir: where the adapters alone are written at the end of ``fit`` (LoRA only, and
            ``train_only`` must train nothing but the adapters).
        activation_checkpointing: recompute each block in backward (see :class:`UnifiedModule`):
            a large pipeline's fine-tune fits in less memory; the adapters see the same gradients.
        The other arguments are :class:`UnifiedModule`'s training settings.
    """

    def __init__(self, init_from: str, image_size: int = 64, lora: dict[str, Any] | None = None,
                 train_only: list[str] | None = None, adapter_dir: str | None = None,
                 tasks: dict[str, float] | None = None, task_kwargs: dict[str, dict] | None = None,
                 schedule: str = "cosine", schedule_kwargs: dict[str, float] | None = None,
                 loss: str = "ce", complementary_masking: bool = False, cond_dropout: float = 0.1,
                 prefix_attention: bool = True, lr: float = 1e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 0,
                 min_lr_ratio: float = 0.1, seed: int = 0,
                 val_sampling: dict[str, Any] | None = None, per_sample_noise: bool = False,
                 activation_checkpointing: bool = False) -> None:
        root = Path(init_from)
        super().__init__(str(root / "image_tokenizer"), str(root / "text_tokenizer"), image_size,
                         tasks=tasks, task_kwargs=task_kwargs, schedule=schedule,
                         schedule_kwargs=schedule_kwargs, loss=loss,
                         complementary_masking=complementary_masking, cond_dropout=cond_dropout,
                         prefix_attention=prefix_attention, lr=lr, weight_decay=weight_decay,
                         betas=betas, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
                         seed=seed, val_sampling=val_sampling, per_sample_noise=per_sample_noise,
                         activation_checkpointing=activation_checkpointing)
        self.lora_config = LoRAConfig(**lora) if lora is not None else None  # checked now
        if adapter_dir is not None and lora is None:
            raise ValueError("adapter_dir needs lora: (there are no adapters to save)")
        self.train_only = list(train_only) if train_only else (["lora"] if lora is not None else ["all"])
        patterns = trainable_patterns(self.train_only)
        # the adapter file holds LoRA weights and the fingerprint of the frozen base: any other part
        # trained here would be lost from it, and merge-lora would refuse it as made for other weights
        others = [e for e, ps in patterns.items() if not all(p.endswith(LORA_SUFFIXES) for p in ps)]
        if adapter_dir is not None and others:
            raise ValueError(f"adapter_dir holds LoRA weights only, but train_only also trains "
                             f"{others}: train only [lora] (add head to lora.targets to adapt the "
                             f"head), or drop adapter_dir and export the whole model with --export_dir")
        # UnifiedModule's save_hyperparameters also recorded its architecture arguments, which come
        # from init_from here; a checkpoint must rebuild this class from its own arguments only
        own = own_init_args(type(self))
        self.remove_ignored_hparams([k for k in list(self.hparams) if k not in own])
        self._hparams_initial = copy.deepcopy(self._hparams)

    def check_state_shapes(self, state_dict) -> None:
        own = self.state_dict()
        wrong = [k for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise ValueError(f"checkpoint weights do not fit the model fine-tuned from "
                             f"{self.hparams.init_from}: {k} is {list(state_dict[k].shape)} in the "
                             f"checkpoint, {list(own[k].shape)} here (another pipeline or LoRA rank?)")

    def data_modalities(self) -> dict:
        """The pipeline's modalities, for the loaders' workers: ``setup`` runs before
        ``configure_model`` loads the pipeline, so they come from its ``pipeline.json``; if that
        cannot be read, none (the step encodes them, and ``configure_model`` names the error)."""
        if self.net is not None:
            return self.modalities
        from unigen.modalities import build_modalities
        from unigen.pipeline import read_pipeline_meta

        try:
            return build_modalities(read_pipeline_meta(self.hparams.init_from)[1].get("modalities"))
        except (OSError, KeyError, ValueError, TypeError):
            return {}

    def configure_model(self) -> None:
        checkpointing = activation_checkpointing_option(self)  # before the return, as UnifiedModule
        if self.net is not None:
            return
        from unigen.pipeline import UnifiedPipeline

        pipe = UnifiedPipeline.from_pretrained(self.hparams.init_from)
        if pipe.image_size != self.hparams.image_size:
            raise ValueError(f"the model at {self.hparams.init_from} works on {pipe.image_size}px "
                             f"images, the data gives {self.hparams.image_size}px (set "
                             f"data.init_args.image_size: {pipe.image_size})")
        trained_with = getattr(pipe.transformer, "prefix_attention", True)
        if trained_with != self.hparams.prefix_attention:  # the sampler decodes as the pipeline says
            raise ValueError(f"the model at {self.hparams.init_from} was trained "
                             f"{'with' if trained_with else 'without'} prefix attention; set "
                             f"model.init_args.prefix_attention: {str(trained_with).lower()}")
        self.net = pipe.transformer.train()
        self.net.activation_checkpointing = checkpointing
        self.image_tokenizer = pipe.image_tokenizer.requires_grad_(False).eval()
        self.space = pipe.space
        self.modalities = pipe.modalities
        self.mixture.check_segments(("text", "image", *self.modalities), self.hparams.init_from)
        if self.lora_config is not None:
            apply_lora(self.net, self.lora_config)
        self.trainable = freeze(self.net, self.train_only)

    # -- outputs ---------------------------------------------------------------------------------
    def merged_network(self) -> nn.Module:
        """A copy of the transformer with the adapters merged (the network itself if none)."""
        self.configure_model()
        if self.lora_config is None:
            return self.net
        net = copy.deepcopy(self.net)
        merge_lora(net)
        return net.requires_grad_(False)

    def to_pipeline(self):
        """A plain pipeline (adapters merged into a copy of the weights)."""
        from unigen.pipeline import UnifiedPipeline, read_pipeline_meta

        # what the starting pipeline learned, and this run's tasks (unknown if it recorded none)
        before = read_pipeline_meta(self.hparams.init_from)[1].get("trained_tasks")
        trained = None if before is None else [*before, *self.mixture.names]
        return UnifiedPipeline(self.merged_network(), self.image_tokenizer, self.space.text_tokenizer,
                               self.modalities, trained)

    def save_adapter(self, path: str | Path) -> None:
        if self.lora_config is None:
            raise ValueError("this fine-tune has no LoRA adapters to save")
        save_lora(self.net, self.lora_config, path, list(self.mixture.names))

    def on_fit_end(self) -> None:
        if self.hparams.adapter_dir and self.trainer.is_global_zero:
            self.save_adapter(self.hparams.adapter_dir)


def own_init_args(cls: type) -> frozenset[str]:
    """The constructor arguments of ``cls`` and of its bases down to :class:`FinetuneModule`: the
    settings a fine-tune's checkpoint keeps (a subclass's own options, and the base's settings it
    fixes, such as reward fine-tuning's ``tasks``; loading passes each class its own)."""
    names: set[str] = set()
    for c in cls.__mro__:
        if isinstance(c, type) and issubclass(c, FinetuneModule):
            names |= set(inspect.signature(c.__init__).parameters)
    return frozenset(names - {"self"})


def merge_adapter_into_pipeline(model: str | Path, adapter: str | Path, out: str | Path,
                                check_base: bool = True) -> list[str]:
    """Load a pipeline, add the adapter saved at ``adapter``, merge it and save the result to
    ``out`` (a plain pipeline).  Returns the merged layer names."""
    from unigen.pipeline import UnifiedPipeline

    pipe = UnifiedPipeline.from_pretrained(model)
    load_lora(pipe.transformer, adapter, check_base=check_base)
    merged = merge_lora(pipe.transformer)
    learned = read_lora_config(adapter).get("trained_tasks")
    if pipe.trained_tasks is not None and learned is not None:  # as --export_dir records them
        pipe.trained_tasks = sorted({*pipe.trained_tasks, *learned})
    pipe.save_pretrained(out)
    return merged


__all__ = ["FinetuneModule", "TRAIN_PRESETS", "freeze", "merge_adapter_into_pipeline",
           "trainable_patterns"]
