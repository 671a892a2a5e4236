"""Tasks as data + mask rules (Show-o, UniDisc, LaViDa).

A task turns raw samples (caption / question / answer strings and image codes) into a
:class:`TaskBatch`: the clean tokens, which positions are *targets* (masked and predicted), which are
the *condition* (dropped for classifier-free guidance) and which form the cacheable *prefix* (prefix
attention, see :mod:`unigen.modules.transformer`).  The model never knows which task it is running:
adding a task is one class registered in ``TASKS`` plus its ``<name>`` special token.

The tokens live where the inputs' image codes live (the training device); the three masks are
built on the host.  They follow from the layout and the text alone, so the training step can pick
its masked positions (``nonzero``) on the CPU and copy them over without waiting for the GPU
(issue #8); consumers move them with :func:`unigen.transfer.to_device` or ``.to``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from unigen.diffusion.token_space import TokenSpace
from unigen.registry import Registry
from unigen.transfer import to_device

TASKS: Registry[type["Task"]] = Registry("task")


@dataclass
class TaskInputs:
    """Raw inputs for one batch; ``image_codes`` are codebook indices [B, h, w] (None if absent).
    ``descriptions``: exhaustive scene descriptions (shapes world), an alternative caption text.
    ``regions``: bool [B, h, w], the image tokens to regenerate (inpainting at inference; None:
    the task draws its own).  ``segments``: codes of further modalities by segment name, each
    [B, *shape] (:mod:`unigen.modalities`)."""

    image_codes: Tensor | None
    captions: Sequence[str] | None = None
    questions: Sequence[str] | None = None
    answers: Sequence[str | None] | None = None  # None in a row: to be generated (inference)
    descriptions: Sequence[str] | None = None
    regions: Tensor | None = None
    segments: dict[str, Tensor] | None = None

    def select(self, rows: list[int]) -> "TaskInputs":
        pick = (lambda xs: None if xs is None else [xs[i] for i in rows])  # noqa: E731
        codes = None if self.image_codes is None else _pick_rows(self.image_codes, rows)
        regions = None if self.regions is None else _pick_rows(self.regions, rows)
        segments = None if self.segments is None else {
            name: _pick_rows(seg, rows) for name, seg in self.segments.items()}
        return TaskInputs(codes, pick(self.captions), pick(self.questions), pick(self.answers),
                          pick(self.descriptions), regions, segments)

    def __len__(self) -> int:
        for field in (self.image_codes, self.captions, self.questions,
                      *(self.segments or {}).values()):
            if field is not None:
                return len(field)
        return 0


def _pick_rows(x: Tensor, rows: list[int]) -> Tensor:
    return x.index_select(0, to_device(torch.tensor(rows, dtype=torch.long), x.device))


@dataclass
class TaskBatch:
    tokens: Tensor  # [B, S] clean tokens, on the inputs' device
    target: Tensor  # [B, S] positions to predict (host)
    cond: Tensor  # [B, S] condition positions, replaced by <mask> for unconditional guidance (host)
    prefix: Tensor  # [B, S] positions that attend only to each other, cacheable (host)

    @staticmethod
    def concat_rows(parts: list[tuple[list[int], "TaskBatch"]], batch_size: int) -> "TaskBatch":
        """Reassemble per-task sub-batches into the original row order."""
        first = parts[0][1]
        out = {k: getattr(first, k).new_empty((batch_size, *getattr(first, k).shape[1:]))
               for k in ("tokens", "target", "cond", "prefix")}
        for rows, part in parts:
            idx = torch.tensor(rows, dtype=torch.long)
            on_device = to_device(idx, first.tokens.device)
            for k, v in out.items():
                v[on_device if k == "tokens" else idx] = getattr(part, k)
        return TaskBatch(**out)


class Task(ABC):
    """One task.  ``name`` is the registry key and the ``<name>`` task token."""

    name: str = ""

    @property
    def task_tokens(self) -> tuple[str, ...]:
        """The task tokens its sequences start with (checked in the text tokenizer before
        training): its own ``<name>``, unless it speaks through tasks the model knows."""
        return (self.name,)

    @abstractmethod
    def build(self, inputs: TaskInputs, space: TokenSpace, generator: torch.Generator | None = None
              ) -> TaskBatch: ...

    def _masks(self, space: TokenSpace, b: int, target: Sequence[str], cond: Sequence[str],
               prefix: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """The (target, cond, prefix) masks of ``b`` rows, on the host."""
        seg = space.segment_mask
        return seg(b, *target), seg(b, *cond), seg(b, "structure", *prefix)


def _require(value, what: str, task: str):
    # data without the field (an image folder of captions, trained with the vqa task) must say
    # which task asked for it, not only that a string was empty
    texts = value if isinstance(value, (list, tuple)) else ()
    # (a batch of several samples all blank is data without the field; one blank text, such as a
    # user's empty prompt, is reported by the encoder as an empty text; a None item is a text to
    # generate, as in `UnifiedPipeline.answer`)
    if value is None or (len(texts) > 1 and all(isinstance(v, str) and not v.strip() for v in texts)):
        raise ValueError(f"task {task!r} needs {what} in every sample, and this batch has none "
                         f"(data without them: leave {task!r} out of the model's tasks)")
    return value


def _device(inputs: TaskInputs):
    for codes in (inputs.image_codes, *(inputs.segments or {}).values()):
        if codes is not None:
            return codes.device
    return None


CAPTION_TEXTS: dict[str, str] = {"captions": "a caption", "descriptions": "a description"}


class CaptionImageTask(Task):
    """A caption in the text segment and an image in the image segment; a subclass only names
    which segments are targets, which are the condition and which form the prefix.

    ``text``: which input fills the text segment, ``"captions"`` or ``"descriptions"`` (the
    exhaustive shapes-world descriptions: a captioner trained on the varied template captions
    cannot state every attribute, since most templates leave facts out)."""

    target_segments: tuple[str, ...] = ()
    cond_segments: tuple[str, ...] = ()
    prefix_segments: tuple[str, ...] = ()

    def __init__(self, text: str = "captions") -> None:
        if text not in CAPTION_TEXTS:
            raise ValueError(f"task {self.name!r}: unknown text {text!r}; expected one of "
                             f"{list(CAPTION_TEXTS)}")
        self.text = text

    def build(self, inputs, space, generator=None):
        codes = _require(inputs.image_codes, "an image", self.name)
        texts = _require(getattr(inputs, self.text), CAPTION_TEXTS[self.text], self.name)
        text = space.encode_captions(texts)
        tokens = space.assemble(self.name, to_device(text, codes.device), codes)
        masks = self._masks(space, len(tokens), self.target_segments, self.cond_segments,
                            self.prefix_segments)
        return TaskBatch(tokens, *masks)


@TASKS.register("t2i")
class TextToImage(CaptionImageTask):
    """Clean caption, masked image (MaskGIT / Show-o generation)."""

    name = "t2i"
    target_segments, cond_segments, prefix_segments = ("image",), ("text",), ("text",)


@TASKS.register("caption")
class Captioning(CaptionImageTask):
    """Clean image, masked caption (``caption <eos> <pad>...``: the length is generated too)."""

    name = "caption"
    target_segments, cond_segments, prefix_segments = ("text",), ("image",), ("image",)


@TASKS.register("vqa")
class VisualQuestionAnswering(Task):
    """Clean image and question, masked answer (everything after ``<sep>``).  With a question slot
    in the layout the question joins the image in the prefix: it attends only to the image and
    itself, so decoding caches both (LaViDa); without one only the image is the prefix, since the
    question's end differs from row to row."""

    name = "vqa"

    def build(self, inputs, space, generator=None):
        codes = _require(inputs.image_codes, "an image", self.name)
        text, starts = space.encode_questions(_require(inputs.questions, "a question", self.name),
                                              _require(inputs.answers, "an answer", self.name))
        tokens = space.assemble(self.name, to_device(text, codes.device), codes)
        b, seq = len(tokens), space.sequence
        target, cond, prefix = self._masks(space, b, [], ["image"], ["image", "question"])
        col = torch.arange(seq.max_text_len)[None]
        answer = col >= starts[:, None]
        if seq.answer_len:  # the positions after the answer region hold given <pad>
            answer &= col < (starts + seq.answer_len)[:, None]
        target[:, seq.text] = answer
        return TaskBatch(tokens, target, cond, prefix)


@TASKS.register("joint")
class JointGeneration(CaptionImageTask):
    """Both caption and image masked: joint generation (UniDisc)."""

    name = "joint"
    target_segments = ("text", "image")


@TASKS.register("text")
class TextOnly(Task):
    """Text alone (the image segment stays ``<mask>`` and is not predicted)."""

    name = "text"

    def build(self, inputs, space, generator=None):
        text = space.encode_captions(_require(inputs.captions, "a caption", self.name))
        tokens = space.assemble(self.name, to_device(text, _device(inputs)), None)
        target, cond, prefix = self._masks(space, len(tokens), ["text"], [], ["image"])
        return TaskBatch(tokens, target, cond, prefix)


@TASKS.register("inpaint")
class Inpainting(CaptionImageTask):
    """Clean caption and the image outside a region; the region is predicted.  The region is the
    inputs' ``regions`` when given (inference: the caller's mask), else a random rectangle drawn
    from ``generator`` (training)."""

    name = "inpaint"
    cond_segments, prefix_segments = ("text",), ("text",)

    def __init__(self, min_frac: float = 0.2, max_frac: float = 0.7, text: str = "captions"
                 ) -> None:
        super().__init__(text)
        if not 0 < min_frac <= max_frac <= 1:
            raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
        self.min_frac, self.max_frac = min_frac, max_frac

    def region(self, b: int, grid: tuple[int, int], generator: torch.Generator | None) -> Tensor:
        """[B, h, w] bool random rectangles covering ``min_frac..max_frac`` of each side (host)."""
        h, w = grid
        u = torch.rand(b, 4, generator=generator)
        hh = (self.min_frac + (self.max_frac - self.min_frac) * u[:, 0]).mul(h).ceil().long().clamp(1, h)
        ww = (self.min_frac + (self.max_frac - self.min_frac) * u[:, 1]).mul(w).ceil().long().clamp(1, w)
        top = (u[:, 2] * (h - hh + 1)).long()
        left = (u[:, 3] * (w - ww + 1)).long()
        rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
        inside = ((rows >= top[:, None, None]) & (rows < (top + hh)[:, None, None])
                  & (cols >= left[:, None, None]) & (cols < (left + ww)[:, None, None]))
        return inside

    def build(self, inputs, space, generator=None):
        tb = super().build(inputs, space, generator)
        b, grid = len(tb.tokens), space.sequence.grid
        if inputs.regions is None:
            region = self.region(b, grid, generator)
        else:
            # the caller's region: no draw, so inference never touches a random stream
            region = torch.as_tensor(inputs.regions).cpu()
            if region.dtype != torch.bool or tuple(region.shape) != (b, *grid):
                raise ValueError(f"task 'inpaint': regions must be a bool tensor [{b}, {grid[0]}, "
                                 f"{grid[1]}] (one token mask per image), got {region.dtype} "
                                 f"{tuple(region.shape)}")
        tb.target[:, space.sequence.image] = region.flatten(1)
        return tb


BLANK = "_"  # a word of an infill text that stands for one token to generate


@TASKS.register("infill")
class Infilling(Task):
    """Blanks of a caption filled in with the image as context, and with ``regions`` also part of
    the image: the joint infilling of UniDisc (Swerdlow et al. 2025) that a masked model does
    without a new head.  The text is given with each standalone :data:`BLANK` word standing for
    one token to generate (``"a _ circle above a blue square"``, :meth:`TokenSpace.encode_blanks`);
    the rest of the caption, and the image outside ``regions``, are given.

    It speaks through a task token the model knows: ``<caption>`` for text blanks alone (a
    caption partly masked is what captioning trains on), ``<joint>`` when an image region is
    redrawn too (both segments partly masked: the joint task).  In training, where no blanks are
    written, each caption gets a random span of ``min_frac..max_frac`` of its tokens masked."""

    name = "infill"
    task_tokens = ("caption", "joint")

    def __init__(self, min_frac: float = 0.2, max_frac: float = 0.5) -> None:
        if not 0 < min_frac <= max_frac <= 1:
            raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
        self.min_frac, self.max_frac = min_frac, max_frac

    def spans(self, rows: Tensor, eos_id: int, generator: torch.Generator | None) -> Tensor:
        """[B, L] bool: a random contiguous span of each row's tokens before ``<eos>`` (training)."""
        b, width = rows.shape
        lengths = (rows == eos_id).long().argmax(-1)  # every caption row ends with <eos>
        u = torch.rand(b, 2, generator=generator)
        frac = self.min_frac + (self.max_frac - self.min_frac) * u[:, 0]
        size = (frac * lengths).ceil().long().clamp(min=1)
        start = (u[:, 1] * (lengths - size + 1)).long()
        col = torch.arange(width)[None]
        return (col >= start[:, None]) & (col < (start + size)[:, None])

    def build(self, inputs, space, generator=None):
        codes = _require(inputs.image_codes, "an image", self.name)
        rows, blanks = space.encode_blanks(_require(inputs.captions, "a caption", self.name),
                                           BLANK)
        if bool(blanks.any()) and generator is not None:
            raise ValueError(f"task 'infill': a training caption holds {BLANK!r} blanks, "
                             "which have no true token to learn (blanks are for inference; "
                             "training masks random spans itself)")
        unset = ~blanks.any(-1)
        if bool(unset.any()) and inputs.regions is None:
            blanks[unset] = self.spans(rows[unset], space.eos_id, generator)
        tokens = space.assemble("caption" if inputs.regions is None else "joint",
                                to_device(rows, codes.device), codes)
        b, seq = len(tokens), space.sequence
        target = torch.zeros(b, seq.length, dtype=torch.bool)
        target[:, seq.text] = blanks
        if inputs.regions is not None:
            region = torch.as_tensor(inputs.regions).cpu()
            if region.dtype != torch.bool or tuple(region.shape) != (b, *seq.grid):
                raise ValueError(f"task 'infill': regions must be a bool tensor [{b}, "
                                 f"{seq.grid[0]}, {seq.grid[1]}], got {region.dtype} "
                                 f"{tuple(region.shape)}")
            target[:, seq.image] = region.flatten(1)
        cond = space.segment_mask(b, "text", "image") & ~target
        # the image is a cacheable prefix only while none of it is redrawn
        prefix = space.segment_mask(b, "structure", *(() if inputs.regions is not None
                                                      else ("image",)))
        return TaskBatch(tokens, target, cond, prefix)


class SegmentTask(Task):
    """A task stated by its segments: ``given`` (clean, the condition and the cacheable prefix) and
    ``predicted`` (masked targets); every other segment holds ``<pad>``: absent, neither given
    nor predicted (``<mask>`` there would read as tokens still to be decoded).
    Segments are ``text`` (the inputs' captions), ``image`` (the image codes) or extra segments
    (the inputs' ``segments``, :mod:`unigen.modalities`).  A modality's tasks subclass it:

    >>> @TASKS.register("layout2i")
    ... class LayoutToImage(SegmentTask):
    ...     name, given, predicted = "layout2i", ("layout",), ("image",)
    """

    given: tuple[str, ...] = ()
    predicted: tuple[str, ...] = ()
    # the sampler that decodes the task when the caller names none: None (the caller's default,
    # MaskGIT) or e.g. "confident" for a reading (image to layout): greedy confident decoding of a
    # sparse output that is *drawn* (caption to layout) commits every slot to its likeliest value,
    # an empty cell, and plans empty scenes (benchmarks/layout_quality.py)
    sampler: str | None = None

    def build(self, inputs, space, generator=None):
        used = (*self.given, *self.predicted)
        device = _device(inputs)
        text = image = None
        if "text" in used:
            text = space.encode_captions(_require(inputs.captions, "a caption", self.name))
        if "image" in used:
            image = _require(inputs.image_codes, "an image", self.name)
        segments = {}
        for name in used:
            if name in ("text", "image"):
                continue
            codes = (inputs.segments or {}).get(name)
            segments[name] = _require(codes, f"{name} codes", self.name)
        tokens = space.assemble(self.name, None if text is None else to_device(text, device), image,
                                batch_size=len(inputs), segments=segments)
        unused = [n for n in ("text", "image", *space.sequence.extra) if n not in used]
        if unused:
            absent = to_device(space.segment_mask(len(tokens), *unused), tokens.device)
            tokens = tokens.masked_fill(absent, space.pad_id)
        masks = self._masks(space, len(tokens), self.predicted, self.given, self.given)
        return TaskBatch(tokens, *masks)


class TaskMixture:
    """Assigns each sample a task by ratio (reproducibly, from a generator) and builds the batch."""

    def __init__(self, ratios: dict[str, float], task_kwargs: dict[str, dict] | None = None) -> None:
        if not ratios:
            raise ValueError("a task mixture needs at least one task")
        bad = {k: v for k, v in ratios.items() if v < 0}
        if bad or sum(ratios.values()) <= 0:
            raise ValueError(f"task ratios must be >= 0 and not all 0, got {ratios}")
        kwargs = task_kwargs or {}
        self.names = list(ratios)
        self.tasks = [TASKS.get(n)(**kwargs.get(n, {})) for n in self.names]
        total = sum(ratios.values())
        self.probs = torch.tensor([ratios[n] / total for n in self.names])

    def check_segments(self, segments: Sequence[str], model: str = "") -> None:
        """One line when a task of the mixture uses a segment the model lacks (e.g. ``t2layout``
        on a model whose layout modality is named ``scene``): before training, not at the first
        step of that task.  ``model``: the pipeline a fine-tune starts from (else the recipe's
        modalities are at fault)."""
        for name, task in zip(self.names, self.tasks):
            used = (*getattr(task, "given", ()), *getattr(task, "predicted", ()))
            missing = [s for s in used if s not in segments]
            if missing:
                extra = [s for s in segments if s not in ("text", "image")]
                fix = (f"the pipeline at {model} was trained without it" if model else
                       f"name a modality {missing[0]!r} in model.init_args.modalities")
                raise ValueError(f"task {name!r} uses the segment {missing[0]!r}, which this model "
                                 f"lacks ({fix}; its further segments: {extra or 'none'})")

    def assign(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        return torch.multinomial(self.probs, batch_size, replacement=True, generator=generator)

    def build(self, inputs: TaskInputs, space: TokenSpace, generator: torch.Generator | None = None
              ) -> tuple[TaskBatch, Tensor]:
        b = len(inputs)
        assignment = self.assign(b, generator)
        parts = []
        for i, task in enumerate(self.tasks):
            rows = (assignment == i).nonzero().squeeze(-1).tolist()
            if rows:
                parts.append((rows, task.build(inputs.select(rows), space, generator)))
        return TaskBatch.concat_rows(parts, b), assignment
