"""``UnifiedPipeline``: the trained unified model, its image tokenizer and its text tokenizer in one
object, with text-to-image, captioning, VQA and inpainting (diffusers-pipeline style).

A pipeline directory (``save_pretrained``) holds::

    pipeline.json            format version and what the parts are (and, for an output head
                             from a plugin, its module: only named in errors, never imported;
                             the further modalities, :mod:`unigen.modalities`, if any; and the
                             ``trained_tasks`` the weights learned, when recorded)
    transformer/             config.json + model.safetensors
    image_tokenizer/         config.json + model.safetensors
    text_tokenizer/          tokenizer.json + text_tokenizer_config.json

Randomness: every call takes ``seed`` (sample ``i`` uses ``seed + i``; or one integer per sample:
a list, ``range``, array or tensor) or explicit ``generator``\\s; the global RNG is never touched;
with one generator per sample, a sample's output does not depend on the rest of its batch, up to
floating-point differences between batched matrix kernels: on the CPU the sampled codes are
identical and the decoded pixels agree to about 1e-6 (the decoder's batched convolutions).

The class is built from modules of one job each; every name they took from here is still
importable from here:

- :mod:`unigen.pipeline_loading`: reading pipeline directories, :func:`load_pipeline`, the
  transformer's saved weights, devices and dtypes;
- :mod:`unigen.sampling_config`: :class:`SamplingConfig` and the text decoding defaults;
- :mod:`unigen.model_fns`: what the decoding loop calls (:class:`PrefixCachedModel`);
- :mod:`unigen.seeds`: the per-sample seeds of a call (:func:`seed_list`);
- :mod:`unigen.pipeline_editing`: ``inpaint``, ``image_to_image`` and ``infill``
  (:class:`~unigen.pipeline_editing.EditingMixin`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Sequence

import torch
from einops import repeat
from PIL import Image
from torch import Tensor

from unigen import io
from unigen.diffusion.token_space import TokenSpace
from unigen.diffusion.tasks import TASKS, SegmentTask, TaskInputs
from unigen.modalities import Modality, build_modalities, modality_spec
from unigen.model_fns import PrefixCachedModel, _banning, network_fn
from unigen.modules.transformer import UnifiedTransformer
from unigen.modules.heads import HEADS
from unigen.pipeline_editing import EditingMixin, InfillOutput, _mask_tensor
from unigen.pipeline_loading import (DTYPES, FORMAT_VERSION, KIND, PIPELINE_CLASSES,
                                     check_pipeline_device, load_pipeline, load_saved_transformer,
                                     load_transformer_weights, pipeline_kind, read_pipeline_meta,
                                     resolve_dtype)
from unigen.sampling import Sampler, build_guidance, decode
from unigen.sampling.base import SamplerOutput, make_sampler
from unigen.sampling.decode import StepCallback
from unigen.sampling.graphed import autocast_state, check_cuda_graphs
from unigen.sampling_config import ANSWER_STEPS, TEXT_SAMPLER, SamplingConfig
from unigen.seeds import SEED_RANGE, _integer, _integers, seed_list
from unigen.tokenizers.base import ImageTokenizer, pil_to_tensor, tensor_to_pil
from unigen.tokenizers.text import TextTokenizer
from unigen.verification import best_of, caption_elbo

IMAGE_OUTPUTS = ("pil", "tensor", "codes")


class UnifiedPipeline(EditingMixin):
    """One object for the unified model and its two tokenizers (see the module docstring)."""

    KIND = KIND

    def __init__(self, transformer: UnifiedTransformer, image_tokenizer: ImageTokenizer,
                 text_tokenizer: TextTokenizer, modalities: dict[str, Modality] | None = None,
                 trained_tasks: Sequence[str] | None = None) -> None:
        self.transformer = transformer
        # the training tasks the weights learned (pipeline.json); None: not recorded
        self.trained_tasks = None if trained_tasks is None else sorted(set(trained_tasks))
        self.image_tokenizer = image_tokenizer
        self.text_tokenizer = text_tokenizer
        self.modalities: dict[str, Modality] = dict(modalities or {})
        self.space = TokenSpace(text_tokenizer, transformer.vocab, transformer.sequence)
        check_modalities(self.modalities, transformer)
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
        if self.modalities:
            meta["modalities"] = modality_spec(self.modalities)
        if self.trained_tasks is not None:
            meta["trained_tasks"] = self.trained_tasks
        # replaces only an earlier pipeline save (one holding pipeline.json), never other files
        with io.atomic_directory(path, marker="pipeline.json") as tmp:
            io.write_json(tmp / "pipeline.json", meta)
            io.write_json(tmp / "transformer" / "config.json", self.transformer.config)
            io.save_safetensors(state, tmp / "transformer" / "model.safetensors",
                                config=self.transformer.config)
            self.image_tokenizer.save_pretrained(tmp / "image_tokenizer")
            self.text_tokenizer.save_pretrained(tmp / "text_tokenizer")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None) -> "UnifiedPipeline":
        """Load from a local directory written by :meth:`save_pretrained` (never from a hub).
        ``dtype`` (``float32``, ``bfloat16``, ``float16``; None keeps float32) casts the
        transformer and the image tokenizer alike; images are then encoded in it and come out
        as float32.  A device this machine lacks is one error, before anything is read."""
        device = check_pipeline_device(device)
        dtype = resolve_dtype(dtype)
        path, meta = read_pipeline_meta(path)
        kind = meta.get("kind", KIND)
        if kind != cls.KIND:
            reader = PIPELINE_CLASSES.get(kind)
            how = (f"load it with {reader[1]} ({reader[0]}) or unigen.pipeline.load_pipeline"
                   if reader else f"this unigen reads {', '.join(PIPELINE_CLASSES)}")
            raise ValueError(f"{path} holds a {kind!r} pipeline; {how} (this is "
                             f"{cls.__name__}, which reads {cls.KIND!r})")
        config_file = path / "transformer" / "config.json"
        config = io.read_json_object(config_file, "transformer config")
        cls.check_components(path, meta, config)
        try:
            built = UnifiedTransformer.from_config(config)
        except (TypeError, KeyError, AttributeError) as err:  # a key too many or missing, a wrong type
            raise ValueError(f"{config_file}: not a transformer config this unigen builds ({err})") from None
        net = load_saved_transformer(built, path, config)
        try:
            modalities = build_modalities(meta.get("modalities"))
        except (KeyError, ValueError, TypeError) as err:
            raise type(err)(f"{err.args[0] if err.args else err} (named in {path / 'pipeline.json'})"
                            ) from None
        trained = meta.get("trained_tasks")
        if trained is not None and not (isinstance(trained, list) and all(isinstance(t, str) for t in trained)):
            raise ValueError(f"trained_tasks in {path / 'pipeline.json'} must be a list of task names, "
                             f"got {trained!r}")
        pipe = cls(net.eval(), ImageTokenizer.from_pretrained(path / "image_tokenizer"),
                   TextTokenizer.from_pretrained(path / "text_tokenizer"), modalities, trained)
        if "image_size" in meta and meta["image_size"] != pipe.image_size:
            raise ValueError(f"{path / 'pipeline.json'} says image_size {meta['image_size']!r}, but its "
                             f"transformer and image tokenizer make {pipe.image_size}x{pipe.image_size} images")
        return pipe.to(device, dtype)

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

    def to(self, device: str | torch.device | None = None,
           dtype: str | torch.dtype | None = None) -> "UnifiedPipeline":
        """Move the transformer and the image tokenizer together: to ``device`` and/or to the
        floating-point ``dtype`` (``float32``, ``bfloat16``, ``float16``)."""
        dtype = resolve_dtype(dtype)
        for part in (self.transformer, self.image_tokenizer):
            if device is not None:
                part.to(device)
            if dtype is not None:
                part.to(dtype)
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
    def dtype(self) -> torch.dtype:
        """The transformer's floating-point type (:meth:`to` keeps the image tokenizer's the same)."""
        return next(self.transformer.parameters()).dtype

    @property
    def image_size(self) -> int:
        return self.transformer.sequence.grid[0] * self.image_tokenizer.downsample_factor

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def generators(n: int, seed: int | Sequence[int] = 0, generator=None) -> list[torch.Generator]:
        """One CPU generator per sample (``seed + i``, or the given seeds: any sequence of
        integers, a ``range``, an integer array or tensor), for batch invariance."""
        if generator is not None:
            return generator
        return [torch.Generator().manual_seed(s) for s in seed_list(n, seed)]

    def images_to_tensor(self, images: Tensor | Image.Image | Sequence[Image.Image]) -> Tensor:
        """``[B, 3, H, W]`` on the pipeline's device, float images in the image tokenizer's dtype;
        an empty sequence is an empty batch."""
        size = self.image_size
        if not torch.is_tensor(images) and isinstance(images, (list, tuple)) and not images:
            return torch.empty(0, 3, size, size, device=self.device, dtype=self.image_tokenizer.dtype)
        x = images if torch.is_tensor(images) else pil_to_tensor(images)
        if x.ndim == 3:
            x = x[None]
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"images must be {size}x{size} (the model's image size), got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        if x.is_floating_point():  # integer pixels stay as they are: the tokenizer names them
            return x.to(self.device, self.image_tokenizer.dtype)
        return x.to(self.device)

    def decode_positions(self, target: Tensor) -> Tensor:
        """The segments (question slot, rest of the text, image) holding any target: the sampler's
        compact view.  Whole segments, never the positions of a batch's targets; a task's rows
        share one pattern of segments (``infill``, whose rows may not, decodes each kind apart),
        so a sample's random draws do not depend on its batch."""
        seq = self.space.sequence
        keep = torch.zeros(seq.length, dtype=torch.bool, device=target.device)
        extra = [seq.extra_segment(name) for name in seq.extra]
        for segment in (seq.question, seq.after_question, seq.image, *extra):
            if bool(target[:, segment].any()):
                keep[segment] = True
        if bool((target & ~keep).any()):
            raise ValueError("targets outside the text, image and extra segments cannot be decoded")
        return keep.nonzero().squeeze(-1)

    def view_grid(self, positions: Tensor) -> tuple[int, int]:
        """``(height, width)`` of the view at ``positions`` (:meth:`decode_positions`), for samplers
        whose order is spatial (``Sampler.needs_grid``): the token grid when the view is exactly
        the image segment, else ``(1, length)``, a line (text, or several segments), so a text
        view whose length happens to be a square is never read as an image."""
        seq = self.space.sequence
        image = torch.arange(seq.image.start, seq.image.stop, device=positions.device)
        if torch.equal(positions, image):
            return seq.grid
        return (1, len(positions))

    def vocab_limit(self, target: Tensor) -> int | None:
        """The text vocabulary's size when only text is decoded, else None (the whole vocabulary).
        Image codes are illegal at text positions, so the heads and samplers skip them: captioning
        and VQA score ~100 ids instead of the codebook's thousands.  A property of the task's
        segments, like :meth:`decode_positions`, never of the batch."""
        beyond_text = target.clone()
        beyond_text[:, self.space.sequence.text] = False
        if bool(beyond_text.any()):
            return None
        return self.transformer.vocab.text_size

    def model_fn(self, prefix: Tensor, positions: Tensor | None, use_cache: bool = True,
                 vocab_limit: int | None = None, cuda_graphs: bool = False):
        """The ``model_fn`` that :func:`unigen.sampling.decode` calls: prefix attention (full
        attention for a transformer trained without it, and then no cache), logits for
        ``positions`` (and the first ``vocab_limit`` ids) only, the prefix KV cache when
        ``use_cache``, each call a CUDA-graph replay when ``cuda_graphs``."""
        net = self.transformer
        if not getattr(net, "prefix_attention", True):  # trained with full attention: decode so
            prefix = torch.zeros_like(prefix)
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
                self._graphed[key] = network_fn(net, prefix, positions, cached, vocab_limit, True)
            return self._graphed[key]
        return network_fn(net, prefix, positions, cached, vocab_limit, False)

    @property
    def special_ids(self) -> dict[str, int]:
        """The vocabulary's ids a sampler may declare it needs (``Sampler.needs_special_ids``)."""
        return {"eos_id": self.space.eos_id, "pad_id": self.space.pad_id, "sep_id": self.space.sep_id}

    def make_sampler(self, sampler: str | Sampler, options: dict[str, Any] | None = None,
                     option: str = "sampler_kwargs") -> Sampler:
        """The sampler a task decodes with: a registered name built with ``options`` (named
        ``option`` in errors), or a :class:`Sampler` object (copied), with this vocabulary's
        ``mask_id`` and the special ids it declares (:func:`unigen.sampling.make_sampler`, which
        the command line's ``--sampler-arg`` check uses too)."""
        return make_sampler(sampler, options, mask_id=self.space.mask_id,
                            special_ids=self.special_ids, option=option)

    def _decode(self, task: str, inputs: TaskInputs, cfg: SamplingConfig, generator,
                progress: bool, negative: TaskInputs | None = None,
                banned: Sequence[int] = ()) -> tuple[Tensor, list[int]]:
        """Decode the task's targets; returns the tokens and each sample's network calls.
        ``banned``: ids no target may take (infill's blanks: no ``<eos>`` or ``<pad>``).
        ``negative``: the same task's inputs with the negative prompts, whose condition the
        guided unconditional pass holds instead of ``<mask>``."""
        sampler = self.make_sampler(cfg.sampler, cfg.sampler_kwargs)
        guidance = build_guidance(cfg.guidance_scale, cfg.guidance_kwargs)
        if negative is not None and guidance is None:
            raise ValueError("negative_prompt acts through classifier-free guidance; set "
                             "guidance_scale to a value other than 1")
        if len(inputs) == 0:  # nothing to decode; the tasks cannot build an empty batch
            return torch.empty(0, self.space.sequence.length, dtype=torch.long, device=self.device), []
        tb = TASKS.get(task)().build(inputs, self.space)
        tokens, target, cond, prefix = (x.to(self.device) for x in (tb.tokens, tb.target, tb.cond, tb.prefix))
        positions = self.decode_positions(target)
        if sampler.needs_grid and getattr(sampler, "grid", None) is None:  # a given grid stands
            sampler.grid = self.view_grid(positions)
        uncond_tokens = None
        if negative is not None:
            nb = TASKS.get(task)().build(negative, self.space)
            if not torch.equal(nb.cond, tb.cond):
                raise ValueError(f"the negative prompts of task {task!r} give other condition "
                                 "positions than its prompts")
            uncond_tokens = nb.tokens.to(self.device)
        model_fn = self.model_fn(prefix, positions, cfg.use_cache, self.vocab_limit(target),
                                 cfg.cuda_graphs)
        if banned:
            model_fn = _banning(model_fn, banned)
        with torch.inference_mode():
            result = decode(model_fn, tokens, target, sampler, num_steps=cfg.num_steps,
                            guidance=guidance, cond_mask=cond & ~target if guidance else None,
                            generator=generator, progress=progress, positions=positions,
                            cache_unchanged=cfg.cache_unchanged, uncond_tokens=uncond_tokens,
                            callback=self._step_callback(cfg.callback, tokens, target, positions))
        return result.tokens, result.calls_per_row.tolist()

    def _step_callback(self, callback: Callable[[int, Tensor, Tensor], None] | None, tokens: Tensor,
                       target: Tensor, positions: Tensor) -> StepCallback | None:
        """``decode``'s per-step callback (the sampler's compact view at ``positions``) as the
        caller's, which sees whole sequences: positions outside the view never change, so the
        view is written into one running copy."""
        if callback is None:
            return None
        state = tokens.masked_fill(target, self.space.mask_id)
        masked = target.clone()

        def on_step(step_index: int, out: SamplerOutput) -> None:
            state[:, positions] = out.tokens
            masked[:, positions] = out.is_masked
            callback(step_index, state.clone(), masked.clone())

        return on_step

    def partial_images(self, tokens: Tensor, is_masked: Tensor, fill: float = 0.5) -> Tensor:
        """The image segment of a decode in progress (``callback``'s ``tokens`` and
        ``is_masked``) as pixels ``[B, 3, H, W]`` in [0, 1]: the revealed codes decoded, every
        still-masked token's patch painted ``fill`` (gray).  Masked codes are decoded as code 0
        before painting, so near them the decoder's receptive field blurs the revealed patches
        a little: a picture of the order and the content, not the final image."""
        seq = self.space.sequence
        image_masked = is_masked[:, seq.image]
        filler = self.space.vocab.image_to_vocab(torch.zeros((), dtype=torch.long))
        codes = self.space.image_codes(tokens.masked_fill(is_masked, int(filler)))
        images = self.decode_images(codes.to(self.device)).cpu()
        f = self.image_tokenizer.downsample_factor
        pixels = repeat(image_masked.cpu(), "b (h w) -> b 1 (h fh) (w fw)", h=seq.grid[0], fh=f, fw=f)
        return images.masked_fill(pixels, float(fill))

    def partial_text(self, tokens: Tensor, is_masked: Tensor, placeholder: str = "_") -> list[str]:
        """The text segment of a decode in progress (``callback``'s ``tokens`` and ``is_masked``),
        one string per row: revealed words decoded, each still-masked token shown as
        ``placeholder``, up to a revealed ``<eos>``; control tokens are left out, as in
        :meth:`caption`'s output."""
        text, eos = self.space.sequence.text, self.space.eos_id
        rows = []
        for ids, masked in zip(tokens[:, text].tolist(), is_masked[:, text].tolist()):
            words: list[str] = []
            run: list[int] = []  # revealed ids since the last mask, decoded together
            for token, hidden in zip(ids, masked):
                if not hidden and token == eos:
                    break
                if hidden:
                    words += [self.space.text_tokenizer.decode(run), placeholder]
                    run = []
                else:
                    run.append(token)
            words.append(self.space.text_tokenizer.decode(run))
            rows.append(" ".join(w for w in words if w))
        return rows

    @staticmethod
    def _per_image(prompts: list[str], num_images_per_prompt: int) -> list[str]:
        """Each prompt ``num_images_per_prompt`` times in a row (diffusers' order)."""
        n = num_images_per_prompt
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1 (an integer), got {n!r}")
        return [p for p in prompts for _ in range(n)]

    @staticmethod
    def _negative_prompts(negative: str | Sequence[str] | None, count: int) -> list[str] | None:
        """``negative_prompt`` as one string per sample (None: none given)."""
        if negative is None:
            return None
        negatives = [negative] * count if isinstance(negative, str) else list(negative)
        if len(negatives) != count:
            raise ValueError(f"got {len(negatives)} negative prompts for {count} samples (give "
                             "one, or one per sample)")
        return negatives

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
        images = self.decode_images(codes)
        if output == "pil":
            return self._with_calls(tensor_to_pil(images) if len(images) else [], calls, return_calls)
        return self._with_calls(images, calls, return_calls)

    def decode_images(self, codes: Tensor) -> Tensor:
        """Codes ``[B, h, w]`` -> float32 images ``[B, 3, H, W]`` in [0, 1], whatever the image
        tokenizer's dtype (under :meth:`to`'s ``dtype`` its decoder runs in that type)."""
        with self._autocast():
            return self.image_tokenizer.decode(codes).float()

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        """Autocast to the image tokenizer's dtype when it is not float32: its decoder builds
        float32 latents from integer codes, which a bf16/fp16 convolution refuses to mix."""
        dtype = self.image_tokenizer.dtype
        if dtype == torch.float32:
            yield
            return
        with torch.autocast(self.image_tokenizer.device.type, dtype=dtype):
            yield

    # -- tasks ---------------------------------------------------------------------------------------
    def text_to_image(self, prompts: str | Sequence[str], num_steps: int = 16,
                      guidance_scale: float = 1.0, sampler: str | Sampler = "maskgit",
                      seed: int | Sequence[int] = 0, generator=None, output: str = "pil",
                      progress: bool = False, return_calls: bool = False, candidates: int = 1,
                      verify_masks: int = 4, negative_prompt: str | Sequence[str] | None = None,
                      num_images_per_prompt: int = 1, **options: Any
                      ) -> list[Image.Image] | Tensor | tuple[list[Image.Image] | Tensor, list[int]]:
        """Generate one image per prompt.  ``options`` go to :class:`SamplingConfig`.  ``sampler``
        is a registered name (options in ``sampler_kwargs``) or a :class:`Sampler` object, as a
        diffusers pipeline takes a scheduler (:meth:`make_sampler`).  An empty ``prompts`` gives
        an empty result (``[]``, or tensors with 0 rows).

        ``candidates=K`` draws K images per prompt and keeps the one the model itself reads the
        prompt from best: the highest ELBO of the prompt as the image's caption, estimated with
        ``verify_masks`` masks (:mod:`unigen.verification`).  Candidate 0 is the image a plain call
        draws; later ones continue each sample's generator, so a sample's result still does not
        depend on its batch.  ``return_calls=True`` returns ``(images, calls)``: each sample's
        network calls (what it would cost decoded alone; adaptive samplers finish easy samples
        early; with candidates, every candidate's decoding plus ``1 + verify_masks`` calls to read
        each one).

        ``negative_prompt`` (one for every prompt, or one per prompt): what guidance steers away
        from; the unconditional pass reads it instead of a masked prompt (diffusers'
        ``negative_prompt``).  It needs ``guidance_scale`` other than 1.

        ``num_images_per_prompt=N`` (diffusers' name): N images of each prompt, prompt by prompt
        (the images of prompt 0 first); the same as passing each prompt (and its negative prompt)
        N times, so a ``seed`` list counts images, and image ``i`` is the one a plain call's
        sample ``i`` would be."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negatives = self._negative_prompts(negative_prompt, len(prompts))
        prompts = self._per_image(prompts, num_images_per_prompt)
        negatives = None if negatives is None else self._per_image(negatives, num_images_per_prompt)
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be >= 1 (an integer), got {candidates!r}")
        cfg = SamplingConfig.from_options(sampler, num_steps, guidance_scale=guidance_scale,
                                          **options)
        grid = self.space.sequence.grid
        codes = torch.zeros(len(prompts), *grid, dtype=torch.long, device=self.device)
        generators = self.generators(len(prompts), seed, generator)
        negative = None if negatives is None else TaskInputs(codes, captions=negatives)
        drawn = [self._decode("t2i", TaskInputs(codes, captions=prompts), cfg, generators, progress,
                              negative) for _ in range(candidates)]
        tokens, calls = drawn[0]
        if candidates > 1 and prompts:
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

    def caption(self, images, num_steps: int | None = None, sampler: str | Sampler = TEXT_SAMPLER,
                seed: int | Sequence[int] = 0, generator=None, progress: bool = False,
                return_calls: bool = False, **options: Any) -> list[str] | tuple[list[str], list[int]]:
        """One caption per image (``return_calls``: see :meth:`text_to_image`).  ``num_steps``
        defaults to the text length: at most one network call per token."""
        steps = self.space.sequence.max_text_len if num_steps is None else num_steps
        cfg = SamplingConfig.from_options(sampler, steps, **options)
        x = self.images_to_tensor(images)
        codes = self.image_tokenizer.encode(x)
        placeholder = ["<mask>"] * len(x)  # replaced: the text segment is the target
        tokens, calls = self._decode("caption", TaskInputs(codes, captions=placeholder), cfg,
                                     self.generators(len(x), seed, generator), progress)
        return self._with_calls(self.space.decode_text(tokens), calls, return_calls)

    def answer(self, images, questions: str | Sequence[str], num_steps: int | None = None,
               sampler: str | Sampler = TEXT_SAMPLER, seed: int | Sequence[int] = 0, generator=None,
               progress: bool = False, return_calls: bool = False, **options: Any
               ) -> list[str] | tuple[list[str], list[int]]:
        """One answer per image and question (``return_calls``: see :meth:`text_to_image`).
        ``num_steps`` defaults to ``ANSWER_STEPS``."""
        cfg = SamplingConfig.from_options(sampler, ANSWER_STEPS if num_steps is None else num_steps,
                                          **options)
        x = self.images_to_tensor(images)
        questions = [questions] * len(x) if isinstance(questions, str) else list(questions)
        if len(questions) != len(x):
            raise ValueError(f"got {len(questions)} questions for {len(x)} images")
        codes = self.image_tokenizer.encode(x)
        tokens, calls = self._decode("vqa", TaskInputs(codes, questions=questions,
                                                       answers=[None] * len(x)), cfg,
                                     self.generators(len(x), seed, generator), progress)
        return self._with_calls(self.space.decode_answers(tokens), calls, return_calls)

    def run_task(self, task: str, inputs: dict[str, Any], num_steps: int = 16,
                 sampler: str | Sampler | None = None, guidance_scale: float = 1.0,
                 seed: int | Sequence[int] = 0, generator=None, output: str = "pil",
                 progress: bool = False, return_calls: bool = False, **options: Any
                 ) -> dict[str, Any] | tuple[dict[str, Any], list[int]]:
        """Run a task stated by its segments (:class:`~unigen.diffusion.tasks.SegmentTask`, e.g. a
        further modality's ``layout2i`` / ``i2layout``).  ``inputs`` maps each segment the task is
        given to a batch of raw items: ``text`` a list of strings, ``image`` images (as
        :meth:`caption` takes them), a modality's segment what its ``encode`` takes.  Returns
        ``{segment: outputs}`` for each predicted segment: ``text`` strings, ``image`` as
        ``output`` says (see :meth:`text_to_image`), a modality's segment its ``decode``'s items
        (``"<name>_codes"`` holds the codes too).  ``sampler``: None takes the task's own
        (``SegmentTask.sampler``, e.g. ``confident`` for image to layout), else MaskGIT.  Other
        options as :meth:`text_to_image`."""
        cls = TASKS.get(task)
        if not (isinstance(cls, type) and issubclass(cls, SegmentTask)):
            raise ValueError(f"run_task runs tasks stated by their segments (SegmentTask); "
                             f"{task!r} has its own method (text_to_image, caption, answer, inpaint)")
        if output not in IMAGE_OUTPUTS:
            raise ValueError(f"output must be one of {IMAGE_OUTPUTS}, got {output!r}")
        given, predicted = tuple(cls.given), tuple(cls.predicted)
        if sampler is None:
            sampler = cls.sampler or "maskgit"
        wrong = sorted(set(inputs) - set(given))
        missing = [g for g in given if g not in inputs]
        if wrong or missing:
            raise ValueError(f"task {task!r} takes inputs {list(given)} (got {sorted(inputs)})")
        unknown = [n for n in (*given, *predicted) if n not in ("text", "image") and n not in self.modalities]
        if unknown:
            raise ValueError(f"task {task!r} needs the segments {unknown}, which this model lacks "
                             f"(its modalities: {list(self.modalities) or 'none'})")
        cfg = SamplingConfig.from_options(sampler, num_steps, guidance_scale=guidance_scale,
                                          **options)
        raw = {k: [v] if isinstance(v, str) else v for k, v in inputs.items()}
        codes, captions, segments = None, None, {}
        if "image" in given:
            codes = self.image_tokenizer.encode(self.images_to_tensor(raw["image"]))
        for name in given:
            if name not in ("text", "image"):
                segments[name] = self.modalities[name].encode(raw[name]).to(self.device)
        sizes = {len(codes) if k == "image" else len(segments[k]) if k in segments else len(raw[k])
                 for k in given}
        if len(sizes) > 1:
            raise ValueError(f"task {task!r}: the inputs hold different numbers of items {sizes}")
        n = sizes.pop() if sizes else 0
        if "text" in given:
            captions = list(raw["text"])
        elif "text" in predicted:
            captions = ["<mask>"] * n  # replaced: the text segment is the target
        if "image" in predicted:
            grid = self.space.sequence.grid
            codes = torch.zeros(n, *grid, dtype=torch.long, device=self.device)
        for name in predicted:
            if name not in ("text", "image"):
                shape = self.space.sequence.extra[name]
                segments[name] = torch.zeros(n, *shape, dtype=torch.long, device=self.device)
        tokens, calls = self._decode(task, TaskInputs(codes, captions=captions,
                                                      segments=segments or None),
                                     cfg, self.generators(n, seed, generator), progress)
        result: dict[str, Any] = {}
        for name in predicted:
            if name == "text":
                result["text"] = self.space.decode_text(tokens)
            elif name == "image":
                result["image"] = self._image_output(tokens, output, calls, False)
            else:
                seg_codes = self.space.segment_codes(tokens, name)
                result[f"{name}_codes"] = seg_codes
                result[name] = self.modalities[name].decode(seg_codes.cpu()) if n else []
        return self._with_calls(result, calls, return_calls)


def check_modalities(modalities: dict[str, Modality], transformer: UnifiedTransformer) -> None:
    """The modalities must be the transformer's extra segments, in order, with their sizes."""
    vocab, seq = transformer.vocab, transformer.sequence
    if list(modalities) != list(vocab.extra):
        raise ValueError(f"the transformer has the extra segments {list(vocab.extra)}, the "
                         f"pipeline was given the modalities {list(modalities)}")
    for name, modality in modalities.items():
        if (modality.codebook_size, tuple(modality.shape)) != (vocab.extra[name], seq.extra[name]):
            raise ValueError(f"modality {name!r} has {modality.codebook_size} codes in "
                             f"{tuple(modality.shape)}, the transformer's segment "
                             f"{vocab.extra[name]} codes in {seq.extra[name]}")


__all__ = [
    "IMAGE_OUTPUTS", "UnifiedPipeline", "check_modalities",
    # moved to the modules named in the module docstring, still importable from here (private
    # ones included)
    "ANSWER_STEPS", "DTYPES", "EditingMixin", "FORMAT_VERSION", "InfillOutput", "KIND",
    "PIPELINE_CLASSES", "PrefixCachedModel", "SEED_RANGE", "SamplingConfig", "TEXT_SAMPLER",
    "_banning", "_integer", "_integers", "_mask_tensor", "check_pipeline_device", "load_pipeline",
    "load_saved_transformer", "load_transformer_weights", "network_fn", "pipeline_kind",
    "read_pipeline_meta", "resolve_dtype", "seed_list",
]
