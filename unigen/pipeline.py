"""``UnifiedPipeline``: the trained unified model, its image tokenizer and its text tokenizer in one
object, with text-to-image, captioning, VQA and inpainting (diffusers-pipeline style).

A pipeline directory (``save_pretrained``) holds::

    pipeline.json            format version and what the parts are (and, for an output head
                             from a plugin, its module: only named in errors, never imported)
    transformer/             config.json + model.safetensors
    image_tokenizer/         config.json + model.safetensors
    text_tokenizer/          tokenizer.json + text_tokenizer_config.json

Randomness: every call takes ``seed`` (sample ``i`` uses ``seed + i``) or explicit ``generator``\\s;
with one generator per sample, a sample's output does not depend on the rest of its batch, up to
floating-point differences between batched matrix kernels: on the CPU the sampled codes are
identical and the decoded pixels agree to about 1e-6 (the decoder's batched convolutions).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor

from unigen import io
from unigen.diffusion.token_space import TokenSpace
from unigen.diffusion.tasks import TASKS, TaskInputs
from unigen.modules.transformer import PrefixCache, UnifiedTransformer
from unigen.modules.heads import HEADS
from unigen.sampling import SAMPLERS, ClassifierFreeGuidance, build_sampler, decode
from unigen.sampling.base import SPECIAL_IDS
from unigen.sampling.graphed import GraphedModelFn, autocast_state, check_cuda_graphs
from unigen.tokenizers.base import ImageTokenizer, pil_to_tensor, tensor_to_pil
from unigen.tokenizers.text import TextTokenizer
from unigen.verification import best_of, caption_elbo

FORMAT_VERSION = 1
KIND = "masked"  # pipeline.json "kind": which pipeline class reads the directory
IMAGE_OUTPUTS = ("pil", "tensor", "codes")

# Reading an image is a prediction, not a draw: captions and answers decode greedily, revealing
# every token the model is sure of at once (Dimple, Yu et al. 2025; Fast-dLLM, Wu et al. 2025;
# LaViDa decodes understanding greedily too).  MaskGIT's sampled tokens and choice noise are an
# image-generation default: on the Fashion-MNIST CPU model they cost 7 points of VQA and leave
# 15 % of captions malformed (docs/samplers.md, "Decoding text").
TEXT_SAMPLER = "confident"
ANSWER_STEPS = 4  # the step budget of an answer (a few words); confident decoding stops earlier


@dataclass
class SamplingConfig:
    """How to decode one segment: sampler name + options, steps, guidance."""

    sampler: str = "maskgit"
    num_steps: int = 16
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    guidance_scale: float = 1.0
    guidance_kwargs: dict[str, Any] = field(default_factory=dict)
    use_cache: bool = True  # prefix KV cache: the condition is encoded once
    cache_unchanged: bool = False  # skip the network when its input did not change (MDLM cache)
    cuda_graphs: bool = False  # replay each step's network call as a CUDA graph (GPU only)


class PrefixCachedModel:
    """``model_fn`` for :func:`unigen.sampling.decode` that encodes the prefix (the condition) once
    and recomputes only the other positions at each step (LaViDa prefix cache).  A cache is kept per
    batch shape (guidance may switch between B and 2B rows) and refreshed if the prefix changes.
    With ``cuda_graphs`` the cached step is replayed as a CUDA graph, and a changed prefix is
    written into the captured cache in place."""

    def __init__(self, net: UnifiedTransformer, prefix: Tensor, positions: Tensor | None = None,
                 vocab_limit: int | None = None, cuda_graphs: bool = False) -> None:
        self.net = net
        self.prefix = prefix  # [S] bool, shared by every row
        self.positions = positions  # logits only for these positions (see decode(positions=))
        self.vocab_limit = vocab_limit  # logits only for the first ids (text decoding)
        self._caches: dict[int, tuple[Tensor, PrefixCache]] = {}
        self.cuda_graphs = cuda_graphs
        self._step = GraphedModelFn(self._cached_step) if cuda_graphs else self._cached_step

    def _cached_step(self, tokens: Tensor) -> Tensor:
        cache = self._caches[tokens.shape[0]][1]
        return self.net.forward_cached(tokens, cache, self.positions, self.vocab_limit)

    def __call__(self, tokens: Tensor) -> Tensor:
        key = tokens[:, self.prefix]
        hit = self._caches.get(tokens.shape[0])
        if hit is None or not torch.equal(hit[0], key):
            cache = self.net.prefill(tokens, self.prefix)
            if hit is not None and self.cuda_graphs:
                cache = hit[1].copy_(cache)  # the graph reads the captured tensors
            self._caches[tokens.shape[0]] = (key.clone(), cache)
        return self._step(tokens)


class UnifiedPipeline:
    KIND = KIND

    def __init__(self, transformer: UnifiedTransformer, image_tokenizer: ImageTokenizer,
                 text_tokenizer: TextTokenizer) -> None:
        self.transformer = transformer
        self.image_tokenizer = image_tokenizer
        self.text_tokenizer = text_tokenizer
        self.space = TokenSpace(text_tokenizer, transformer.vocab, transformer.sequence)
        self._graphed: dict[tuple, Any] = {}  # CUDA-graphed model_fns (SamplingConfig.cuda_graphs)
        if transformer.vocab.image_size != image_tokenizer.codebook_size:
            raise ValueError(f"codebook size mismatch: the transformer expects "
                             f"{transformer.vocab.image_size} image codes, the image tokenizer has "
                             f"{image_tokenizer.codebook_size}")
        if transformer.vocab.text_size != text_tokenizer.vocab_size:
            raise ValueError(f"text vocabulary mismatch: the transformer expects "
                             f"{transformer.vocab.text_size} ids, the text tokenizer has "
                             f"{text_tokenizer.vocab_size}")

    # -- persistence ---------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Write the three parts; the directory is complete or absent.  ``dtype`` (e.g.
        ``torch.bfloat16``) stores the transformer's floating-point weights in that type: half the
        bytes, to move a model through a size-limited channel; loading casts them back to the
        network's type."""
        state = self.transformer.state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        meta = {"format_version": FORMAT_VERSION, "kind": self.KIND, "image_size": self.image_size,
                "parts": ["transformer", "image_tokenizer", "text_tokenizer"]}
        modules = self.plugin_modules()
        if modules:
            meta["modules"] = modules
        with io.atomic_directory(path) as tmp:
            io.write_json(tmp / "pipeline.json", meta)
            io.write_json(tmp / "transformer" / "config.json", self.transformer.config)
            io.save_safetensors(state, tmp / "transformer" / "model.safetensors")
            self.image_tokenizer.save_pretrained(tmp / "image_tokenizer")
            self.text_tokenizer.save_pretrained(tmp / "text_tokenizer")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu"
                        ) -> "UnifiedPipeline":
        """Load from a local directory written by :meth:`save_pretrained` (never from a hub)."""
        path, meta = io.read_model_dir(path, "pipeline", "train with `unigen fit ... --export_dir "
                                       "DIR` or `unigen export`", "pipeline.json")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path / 'pipeline.json'} has format version "
                             f"{meta.get('format_version')!r}; this unigen reads {FORMAT_VERSION}")
        kind = meta.get("kind", KIND)
        if kind != cls.KIND:
            raise ValueError(f"{path} holds a {kind!r} pipeline; load it with the matching class "
                             f"(this is {cls.__name__}, which reads {cls.KIND!r})")
        config = io.read_json(path / "transformer" / "config.json", "transformer config")
        cls.check_components(path, meta, config)
        net = io.load_weights(UnifiedTransformer.from_config(config),
                              path / "transformer" / "model.safetensors")
        pipe = cls(net.eval(), ImageTokenizer.from_pretrained(path / "image_tokenizer"),
                   TextTokenizer.from_pretrained(path / "text_tokenizer"))
        return pipe.to(device)

    def plugin_modules(self) -> dict[str, str]:
        """The modules defining this pipeline's components that come from outside unigen
        (``{"head": "my_head"}``): ``pipeline.json`` records them so that loading without the
        plugin names it.  (The image tokenizer's config records its own.)"""
        head = self.transformer.config.get("head")
        module = HEADS.module_of(head) if isinstance(head, str) and head in HEADS else None
        return {"head": module} if module else {}

    @staticmethod
    def check_components(path, meta: dict[str, Any], config: dict[str, Any]) -> None:
        """Before building anything: the saved output head must be registered (plugins are loaded
        on a miss); else one error naming the module that saved it."""
        modules = meta.get("modules") if isinstance(meta.get("modules"), dict) else {}
        head = config.get("head", "shared")
        if isinstance(head, str) and head not in HEADS:
            raise KeyError(f"{HEADS.unknown(head, modules.get('head'))}, named in "
                           f"{path / 'transformer' / 'config.json'}")
        # an unknown image tokenizer type: ImageTokenizer.from_pretrained names it, the module its
        # config recorded and the file, the same way

    def to(self, device: str | torch.device) -> "UnifiedPipeline":
        self.transformer.to(device)
        self.image_tokenizer.to(device)
        self.free_cuda_graphs()  # captured on the old device's tensors
        return self

    def free_cuda_graphs(self) -> None:
        """Drop the captured CUDA graphs (``cuda_graphs=True``) and the prefix caches and memory
        pools they hold; the next graphed call captures again."""
        self._graphed.clear()

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def image_size(self) -> int:
        return self.transformer.sequence.grid[0] * self.image_tokenizer.downsample_factor

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def generators(n: int, seed: int | Sequence[int] = 0, generator=None) -> list[torch.Generator]:
        """One CPU generator per sample (``seed + i``, or the given seeds), for batch invariance."""
        if generator is not None:
            return generator
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed) + i for i in range(n)]
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} samples")
        return [torch.Generator().manual_seed(s) for s in seeds]

    def images_to_tensor(self, images: Tensor | Image.Image | Sequence[Image.Image]) -> Tensor:
        x = images if torch.is_tensor(images) else pil_to_tensor(images)
        if x.ndim == 3:
            x = x[None]
        size = self.image_size
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"images must be {size}x{size} (the model's image size), got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        return x.to(self.device)

    def decode_positions(self, target: Tensor) -> Tensor:
        """The segments (question slot, rest of the text, image) holding any target: the sampler's
        compact view.  Whole segments, never per-batch unions, so a sample's random draws do not
        depend on its batch."""
        seq = self.space.sequence
        keep = torch.zeros(seq.length, dtype=torch.bool, device=target.device)
        for segment in (seq.question, seq.after_question, seq.image):
            if bool(target[:, segment].any()):
                keep[segment] = True
        if bool((target & ~keep).any()):
            raise ValueError("targets outside the text and image segments cannot be decoded")
        return keep.nonzero().squeeze(-1)

    def vocab_limit(self, target: Tensor) -> int | None:
        """The text vocabulary's size when only text is decoded, else None (the whole vocabulary).
        Image codes are illegal at text positions, so the heads and samplers skip them: captioning
        and VQA score ~100 ids instead of the codebook's thousands.  A property of the task's
        segments, like :meth:`decode_positions`, never of the batch."""
        if bool(target[:, self.space.sequence.image].any()):
            return None
        return self.transformer.vocab.text_size

    def model_fn(self, prefix: Tensor, positions: Tensor | None, use_cache: bool = True,
                 vocab_limit: int | None = None, cuda_graphs: bool = False):
        """The ``model_fn`` that :func:`unigen.sampling.decode` calls: prefix attention, logits for
        ``positions`` (and the first ``vocab_limit`` ids) only, the prefix KV cache when
        ``use_cache``, each call a CUDA-graph replay when ``cuda_graphs``."""
        net = self.transformer
        if not bool((prefix == prefix[:1]).all()):
            raise ValueError("the task gives the rows of a batch different prefix positions; decoding "
                             "needs one prefix pattern per batch (see docs/extending.md, 'A task')")
        cached = use_cache and bool(prefix.any())
        if cuda_graphs:  # captured once per task pattern and batch shape, replayed by later calls
            check_cuda_graphs(self.device)
            # per autocast state too: a prefix cache holds the keys in the precision it was made
            key = (cached, tuple(prefix[0].tolist()), vocab_limit,
                   None if positions is None else tuple(positions.tolist()), *autocast_state())
            if key not in self._graphed:
                self._graphed[key] = self._model_fn(net, prefix, positions, cached, vocab_limit, True)
            return self._graphed[key]
        return self._model_fn(net, prefix, positions, cached, vocab_limit, False)

    @staticmethod
    def _model_fn(net: UnifiedTransformer, prefix: Tensor, positions: Tensor | None, cached: bool,
                  vocab_limit: int | None, cuda_graphs: bool):
        if cached:
            return PrefixCachedModel(net, prefix[0], positions, vocab_limit, cuda_graphs)

        def full(x: Tensor) -> Tensor:
            return net(x, prefix[:1].expand(x.shape[0], -1), positions=positions,
                       vocab_limit=vocab_limit)

        return GraphedModelFn(full) if cuda_graphs else full

    def sampler_kwargs(self, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` plus the special ids the sampler declares it needs
        (``Sampler.needs_special_ids``, e.g. ``semi_ar``'s ``eos_id`` and ``pad_id``), from this
        pipeline's vocabulary unless given."""
        out = dict(kwargs)
        for key in getattr(SAMPLERS.get(name), "needs_special_ids", ()):
            if key not in SPECIAL_IDS:
                raise ValueError(f"sampler {name!r} asks for the special id {key!r}; the pipeline "
                                 f"has {', '.join(SPECIAL_IDS)}")
            out.setdefault(key, getattr(self.space, key))
        return out

    def _decode(self, task: str, inputs: TaskInputs, cfg: SamplingConfig, generator,
                progress: bool, region: Tensor | None = None) -> tuple[Tensor, list[int]]:
        """Decode the task's targets; returns the tokens and each sample's network calls."""
        tb = TASKS.get(task)().build(inputs, self.space)
        tokens, target, cond, prefix = (x.to(self.device) for x in (tb.tokens, tb.target, tb.cond, tb.prefix))
        if region is not None:
            target = torch.zeros_like(target)
            target[:, self.space.sequence.image] = region.flatten(1).to(self.device)
        sampler = build_sampler(cfg.sampler, mask_id=self.space.mask_id,
                                **self.sampler_kwargs(cfg.sampler, cfg.sampler_kwargs))
        guidance = None
        if cfg.guidance_scale != 1.0 or cfg.guidance_kwargs:
            guidance = ClassifierFreeGuidance(cfg.guidance_scale, **cfg.guidance_kwargs)
        positions = self.decode_positions(target)
        model_fn = self.model_fn(prefix, positions, cfg.use_cache, self.vocab_limit(target),
                                 cfg.cuda_graphs)
        with torch.inference_mode():
            result = decode(model_fn, tokens, target, sampler, num_steps=cfg.num_steps,
                            guidance=guidance, cond_mask=cond & ~target if guidance else None,
                            generator=generator, progress=progress, positions=positions,
                            cache_unchanged=cfg.cache_unchanged)
        return result.tokens, result.calls_per_row.tolist()

    @staticmethod
    def _with_calls(output: Any, calls: list[int], return_calls: bool) -> Any:
        """``(output, calls)`` when the caller asked for each sample's network calls."""
        return (output, calls) if return_calls else output

    def _image_output(self, tokens: Tensor, output: str, calls: list[int], return_calls: bool) -> Any:
        """The image segment of ``tokens`` as ``output`` says: ``pil`` images, a pixel ``tensor``
        [B, 3, H, W] in [0, 1], or the image tokenizer's ``codes`` [B, h, w] (no decoding), plus
        ``calls``."""
        if output not in IMAGE_OUTPUTS:
            raise ValueError(f"output must be one of {IMAGE_OUTPUTS}, got {output!r}")
        codes = self.space.image_codes(tokens)
        if output == "codes":
            return self._with_calls(codes, calls, return_calls)
        images = self.image_tokenizer.decode(codes)
        return self._with_calls(tensor_to_pil(images) if output == "pil" else images, calls,
                                return_calls)

    # -- tasks ---------------------------------------------------------------------------------------
    def text_to_image(self, prompts: str | Sequence[str], num_steps: int = 16,
                      guidance_scale: float = 1.0, sampler: str = "maskgit",
                      seed: int | Sequence[int] = 0, generator=None, output: str = "pil",
                      progress: bool = False, return_calls: bool = False, candidates: int = 1,
                      verify_masks: int = 4, **options: Any
                      ) -> list[Image.Image] | Tensor | tuple[list[Image.Image] | Tensor, list[int]]:
        """Generate one image per prompt.  ``options`` go to :class:`SamplingConfig`.

        ``candidates=K`` draws K images per prompt and keeps the one the model itself reads the
        prompt from best: the highest ELBO of the prompt as the image's caption, estimated with
        ``verify_masks`` masks (:mod:`unigen.verification`).  Candidate 0 is the image a plain call
        draws; later ones continue each sample's generator, so a sample's result still does not
        depend on its batch.  ``return_calls=True`` returns ``(images, calls)``: each sample's
        network calls (what it would cost decoded alone; adaptive samplers finish easy samples
        early; with candidates, every candidate's decoding plus ``1 + verify_masks`` calls to read
        each one)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        cfg = SamplingConfig(sampler, num_steps, guidance_scale=guidance_scale, **options)
        grid = self.space.sequence.grid
        codes = torch.zeros(len(prompts), *grid, dtype=torch.long, device=self.device)
        generators = self.generators(len(prompts), seed, generator)
        drawn = [self._decode("t2i", TaskInputs(codes, captions=prompts), cfg, generators, progress)
                 for _ in range(candidates)]
        tokens, calls = drawn[0]
        if candidates > 1:
            # the masks are drawn after every candidate, so candidate 0 is the plain call's image;
            # fresh generators from each row's stream give every candidate the same masks
            rows = generators if isinstance(generators, (list, tuple)) else [generators] * len(prompts)
            mask_seeds = [int(torch.randint(2**62, (1,), generator=g, device=g.device)) for g in rows]
            scores = torch.stack([caption_elbo(self.transformer, self.space,
                                               self.space.image_codes(t), prompts,
                                               self.generators(len(prompts), mask_seeds),
                                               verify_masks) for t, _ in drawn])
            best = best_of(scores)
            tokens = torch.stack([t for t, _ in drawn])[best, torch.arange(len(prompts))]
            calls = [sum(c[i] for _, c in drawn) + candidates * (1 + verify_masks)
                     for i in range(len(prompts))]
        return self._image_output(tokens, output, calls, return_calls)

    def caption(self, images, num_steps: int | None = None, sampler: str = TEXT_SAMPLER,
                seed: int | Sequence[int] = 0, generator=None, progress: bool = False,
                return_calls: bool = False, **options: Any) -> list[str] | tuple[list[str], list[int]]:
        """One caption per image (``return_calls``: see :meth:`text_to_image`).  ``num_steps``
        defaults to the text length: at most one network call per token."""
        x = self.images_to_tensor(images)
        cfg = SamplingConfig(sampler, num_steps or self.space.sequence.max_text_len, **options)
        codes = self.image_tokenizer.encode(x)
        placeholder = ["<mask>"] * len(x)  # replaced: the text segment is the target
        tokens, calls = self._decode("caption", TaskInputs(codes, captions=placeholder), cfg,
                                     self.generators(len(x), seed, generator), progress)
        return self._with_calls(self.space.decode_text(tokens), calls, return_calls)

    def answer(self, images, questions: str | Sequence[str], num_steps: int | None = None,
               sampler: str = TEXT_SAMPLER, seed: int | Sequence[int] = 0, generator=None,
               progress: bool = False, return_calls: bool = False, **options: Any
               ) -> list[str] | tuple[list[str], list[int]]:
        """One answer per image and question (``return_calls``: see :meth:`text_to_image`)."""
        x = self.images_to_tensor(images)
        questions = [questions] * len(x) if isinstance(questions, str) else list(questions)
        if len(questions) != len(x):
            raise ValueError(f"got {len(questions)} questions for {len(x)} images")
        cfg = SamplingConfig(sampler, num_steps or ANSWER_STEPS, **options)
        codes = self.image_tokenizer.encode(x)
        tokens, calls = self._decode("vqa", TaskInputs(codes, questions=questions,
                                                       answers=[None] * len(x)), cfg,
                                     self.generators(len(x), seed, generator), progress)
        return self._with_calls(self.space.decode_answers(tokens), calls, return_calls)

    def inpaint(self, image, mask: Tensor, prompt: str, num_steps: int = 16,
                guidance_scale: float = 1.0, sampler: str = "maskgit", seed: int = 0,
                generator=None, output: str = "pil", return_calls: bool = False, **options: Any):
        """Regenerate the image tokens under ``mask`` ([H, W] or [h, w] bool, True = regenerate;
        pixel masks are reduced to the token grid: a token is regenerated if any of its pixels is).
        ``return_calls``: see :meth:`text_to_image`."""
        x = self.images_to_tensor(image)
        grid = self.space.sequence.grid
        region = torch.as_tensor(mask, dtype=torch.bool)
        if tuple(region.shape) != grid:
            f = self.image_tokenizer.downsample_factor
            if tuple(region.shape) != (grid[0] * f, grid[1] * f):
                raise ValueError(f"inpainting mask must be {grid[0] * f}x{grid[1] * f} pixels or "
                                 f"{grid[0]}x{grid[1]} tokens, got {tuple(region.shape)}")
            region = region.reshape(grid[0], f, grid[1], f).any(dim=3).any(dim=1)
        codes = self.image_tokenizer.encode(x)
        cfg = SamplingConfig(sampler, num_steps, guidance_scale=guidance_scale, **options)
        tokens, calls = self._decode("inpaint", TaskInputs(codes, captions=[prompt] * len(x)), cfg,
                                     self.generators(len(x), seed, generator), False,
                                     region=region[None].expand(len(x), -1, -1))
        return self._image_output(tokens, output, calls, return_calls)


def load_transformer_weights(net: UnifiedTransformer, path: str | os.PathLike) -> UnifiedTransformer:
    """Copy the transformer weights of the pipeline saved at ``path`` into ``net`` (continuing a
    run with a fresh optimizer, e.g. across lent GPU sessions).  The saved architecture must be
    ``net``'s: any difference is one error naming the keys.  ``answer_len`` may differ: it decides
    which positions VQA trains and decodes, not the weights."""
    path, _ = io.read_model_dir(path, "pipeline", "train with `unigen fit ... --export_dir DIR`",
                                "pipeline.json")
    saved = io.read_json(path / "transformer" / "config.json", "transformer config")
    ours = json.loads(json.dumps(net.config))  # tuples -> lists, as the saved JSON holds them
    for cfg in (saved, ours):  # a training/decoding choice that no weight depends on
        cfg.get("sequence", {}).pop("answer_len", None)
    diff = io.config_diff(saved, ours)
    if diff:
        raise ValueError(f"the transformer at {path} has another architecture; (saved, recipe): {diff}")
    return io.load_weights(net, path / "transformer" / "model.safetensors")

