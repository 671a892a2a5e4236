"""The pipeline's editing methods, which decode again only part of what they are given: a region
of the images (:meth:`EditingMixin.inpaint`), a random share of their tokens (``image_to_image``),
or the blanks of a text read with the images, a region too if asked, in one decode (``infill``).

:class:`EditingMixin` is mixed into :class:`~unigen.pipeline.UnifiedPipeline`: its methods decode
through the pipeline's own (``_decode``, ``images_to_tensor``, ``generators``, ``_image_output``,
``_negative_prompts``, ``space``, ``image_tokenizer``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from unigen.diffusion.tasks import BLANK, TaskInputs
from unigen.sampling import Sampler, check_num_steps
from unigen.sampling_config import TEXT_SAMPLER, SamplingConfig


@dataclass
class InfillOutput:
    """What :meth:`UnifiedPipeline.infill` returns: the filled texts and the images."""

    texts: list[str]
    images: Any  # as ``output`` says: PIL images, a [B, 3, H, W] tensor or codes [B, h, w]


class EditingMixin:
    """``inpaint``, ``image_to_image`` and ``infill`` of :class:`~unigen.pipeline.UnifiedPipeline`,
    with the regions they redraw (``inpaint_regions``, ``random_regions``)."""

    def inpaint(self, image, mask: Any, prompt: str | Sequence[str], num_steps: int = 16,
                guidance_scale: float = 1.0, sampler: str | Sampler = "maskgit",
                seed: int | Sequence[int] = 0, generator=None, output: str = "pil",
                progress: bool = False, return_calls: bool = False,
                negative_prompt: str | Sequence[str] | None = None, **options: Any):
        """Regenerate the image tokens under ``mask`` (True = regenerate), guided by ``prompt`` (one
        for every image, or one per image) and away from ``negative_prompt`` (as in
        :meth:`text_to_image`).  ``mask``: a bool (or 0/1) tensor or array, ``[H, W]``
        for every image or ``[B, H, W]`` (also ``[B, 1, H, W]``) one per image, in pixels or in
        tokens (``[h, w]``); or a PIL image (or a list, one per image) whose white pixels (>= 128
        in grayscale) are regenerated, as in diffusers.  Pixel masks are reduced to the token
        grid: a token is regenerated if any of its pixels is.  ``return_calls``: see
        :meth:`text_to_image`."""
        cfg = SamplingConfig.from_options(sampler, num_steps, guidance_scale=guidance_scale,
                                          **options)
        x = self.images_to_tensor(image)
        prompts = self._prompt_per_image(prompt, len(x))
        regions = self.inpaint_regions(mask, len(x))
        tokens, calls = self._redraw(x, regions, prompts, cfg, self.generators(len(x), seed, generator),
                                     progress, negative_prompt)
        return self._image_output(tokens, output, calls, return_calls)

    def image_to_image(self, image, prompt: str | Sequence[str], strength: float = 0.6,
                       num_steps: int = 16, guidance_scale: float = 1.0,
                       sampler: str | Sampler = "maskgit", seed: int | Sequence[int] = 0,
                       generator=None, output: str = "pil", progress: bool = False,
                       return_calls: bool = False,
                       negative_prompt: str | Sequence[str] | None = None, **options: Any):
        """A variation of each image steered by ``prompt``: ``strength`` (0 < s <= 1) of its image
        tokens, chosen at random, are masked again and redrawn; the rest is kept (diffusers'
        ``strength`` of img2img, as aMUSEd's image-to-image re-masks a share of the tokens instead
        of adding noise).  The decode runs ``ceil(strength * num_steps)`` steps, so a step
        reveals about as many tokens as in a full decode; ``strength=1`` redraws every token.
        The tokens redrawn come from each sample's generator before it decodes, so a sample's
        result does not depend on its batch; with ``seed``, they are
        ``random_regions(len(images), strength, generators(len(images), seed))``.  Other
        arguments as :meth:`inpaint`."""
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) \
                or not 0.0 < float(strength) <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        num_steps = check_num_steps(num_steps)
        cfg = SamplingConfig.from_options(sampler, max(1, math.ceil(float(strength) * num_steps)),
                                          guidance_scale=guidance_scale, **options)
        x = self.images_to_tensor(image)
        prompts = self._prompt_per_image(prompt, len(x))
        generators = self.generators(len(x), seed, generator)
        regions = self.random_regions(len(x), float(strength), generators)
        tokens, calls = self._redraw(x, regions, prompts, cfg, generators, progress, negative_prompt)
        return self._image_output(tokens, output, calls, return_calls)

    def infill(self, image, text: str | Sequence[str], mask: Any = None,
               num_steps: int | None = None, sampler: str | Sampler | None = None,
               seed: int | Sequence[int] = 0, generator=None, output: str = "pil",
               progress: bool = False, return_calls: bool = False,
               **options: Any) -> InfillOutput | tuple[InfillOutput, list[int]]:
        """Fill the blanks of ``text`` (one for every image, or one per image; each standalone
        ``_`` word is one token to generate: ``"a _ circle above a blue square"``) with the
        image as context, and with ``mask`` (as :meth:`inpaint` takes it) also redraw that part
        of the image, both in one decode: UniDisc's joint infilling (the ``infill`` task).
        Returns :class:`InfillOutput`: the filled texts (blanks replaced, up to ``<eos>``) and
        the images (``output`` as :meth:`text_to_image`; the inputs' reconstructions where
        nothing was redrawn).  A sample whose mask redraws part of its image decodes with
        ``maskgit`` in 16 steps by default, one with blanks alone as :meth:`caption` does
        (``confident``, a budget of the text length; it stops once the blanks are filled).
        Samples of different kinds (blanks, a mask, both) decode apart, so a sample's result
        does not depend on its batch."""
        x = self.images_to_tensor(image)
        texts = self._prompt_per_image(text, len(x), "text")
        regions = None if mask is None else self.inpaint_regions(mask, len(x))
        redraws = [False] * len(x) if regions is None else regions.flatten(1).any(1).tolist()
        for text_i, redraw in zip(texts, redraws):
            if BLANK not in text_i.split() and not redraw:
                raise ValueError(f"nothing to fill in {text_i!r}: write each token to generate as a "
                                 f"standalone {BLANK!r} (e.g. 'a {BLANK} circle'), or give a mask")
        codes = self.image_tokenizer.encode(x)
        inputs = TaskInputs(codes, captions=texts, regions=regions)
        generators = self.generators(len(x), seed, generator)
        # a blank is a word: not the end of the text, padding or a task token
        specials = self.space.vocab.specials
        banned = [i for name, i in specials.items() if name != "<unk>"]
        tokens = torch.empty(len(x), self.space.sequence.length, dtype=torch.long, device=self.device)
        calls = [0] * len(x)
        kinds = [(BLANK in t.split(), redraw) for t, redraw in zip(texts, redraws)]
        for kind in dict.fromkeys(kinds):  # a decode covers one pattern of segments (decode_positions)
            rows = [i for i, k in enumerate(kinds) if k == kind]
            redraw = kind[1]
            steps = num_steps if num_steps is not None else (16 if redraw else self.space.sequence.max_text_len)
            cfg = SamplingConfig.from_options(sampler or ("maskgit" if redraw else TEXT_SAMPLER), steps, **options)
            gens = [generators[i] for i in rows] if isinstance(generators, (list, tuple)) else generators
            part, part_calls = self._decode("infill", inputs.select(rows), cfg, gens, progress, banned=banned)
            tokens[rows] = part
            for i, c in zip(rows, part_calls):
                calls[i] = c
        filled = InfillOutput(self.space.decode_text(tokens),
                              self._image_output(tokens, output, calls, False))
        return self._with_calls(filled, calls, return_calls)

    def random_regions(self, batch_size: int, share: float, generators) -> Tensor:
        """``[B, h, w]`` bool on the host: ``round(share * h * w)`` tokens (at least one) of each
        image, drawn with its own generator (one per sample, or one for the batch)."""
        h, w = self.space.sequence.grid
        count = max(1, round(share * h * w))
        rows = generators if isinstance(generators, (list, tuple)) else [generators] * batch_size
        regions = torch.zeros(batch_size, h * w, dtype=torch.bool)
        for region, gen in zip(regions, rows):
            region[torch.randperm(h * w, generator=gen, device=gen.device)[:count].cpu()] = True
        return regions.reshape(batch_size, h, w)

    @staticmethod
    def _prompt_per_image(prompt: str | Sequence[str], count: int, what: str = "prompt"
                          ) -> list[str]:
        prompts = [prompt] * count if isinstance(prompt, str) else list(prompt)
        if len(prompts) != count:
            raise ValueError(f"got {len(prompts)} {what}s for {count} images (give one {what}, "
                             "or one per image)")
        return prompts

    def _redraw(self, x: Tensor, regions: Tensor, prompts: list[str], cfg: SamplingConfig,
                generators, progress: bool, negative_prompt: str | Sequence[str] | None
                ) -> tuple[Tensor, list[int]]:
        """Decode the tokens of images ``x`` under ``regions`` again (the inpaint task), guided
        by ``prompts`` and away from ``negative_prompt``."""
        codes = self.image_tokenizer.encode(x)
        negatives = self._negative_prompts(negative_prompt, len(x))
        negative = (None if negatives is None
                    else TaskInputs(codes, captions=negatives, regions=regions))
        return self._decode("inpaint", TaskInputs(codes, captions=prompts, regions=regions), cfg,
                            generators, progress, negative)

    def inpaint_regions(self, mask: Any, batch_size: int) -> Tensor:
        """``mask`` (see :meth:`inpaint`) as the token regions ``[B, h, w]`` bool, on the host."""
        grid = self.space.sequence.grid
        f = self.image_tokenizer.downsample_factor
        pixels = (grid[0] * f, grid[1] * f)
        region = _mask_tensor(mask)
        if region.ndim == 4 and region.shape[1] == 1:  # [B, 1, H, W], as diffusers' masks come
            region = region[:, 0]
        if region.ndim == 2:
            region = region[None]
        shape_ok = region.ndim == 3 and region.shape[0] in (1, batch_size)
        if not shape_ok or tuple(region.shape[1:]) not in (grid, pixels):
            raise ValueError(f"inpainting mask must be {pixels[0]}x{pixels[1]} pixels or "
                             f"{grid[0]}x{grid[1]} tokens, as [H, W] for every image or [B, H, W] "
                             f"with B = {batch_size} images; got {tuple(_mask_tensor(mask).shape)}")
        region = region.expand(batch_size, -1, -1)
        if tuple(region.shape[1:]) != grid:
            region = region.reshape(batch_size, grid[0], f, grid[1], f).any(dim=4).any(dim=2)
        return region.cpu().contiguous()


def _mask_tensor(mask: Any) -> Tensor:
    """An inpainting mask as a bool tensor of its own shape (True = regenerate)."""
    if isinstance(mask, Image.Image):
        # binarised at half intensity, as diffusers' mask processor does
        return torch.from_numpy(np.asarray(mask.convert("L")) >= 128)
    if isinstance(mask, (list, tuple)) and mask and all(isinstance(m, Image.Image) for m in mask):
        return torch.stack([_mask_tensor(m) for m in mask])
    try:
        region = torch.as_tensor(mask)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"inpainting mask must be a bool tensor or array, or a PIL image; got "
                        f"{type(mask).__name__}") from None
    if region.dtype == torch.bool:
        return region
    if region.is_complex() or region.numel() and not bool(((region == 0) | (region == 1)).all()):
        raise ValueError("inpainting mask must be bool or hold only 0 and 1 (1 = regenerate); got "
                         f"other values ({region.dtype}); binarise a soft mask first")
    return region != 0
