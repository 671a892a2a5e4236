"""The unified token space: one vocabulary for text ids, image codes and special tokens, and the
fixed sequence layout every task shares.

Vocabulary (Show-o / UniDisc): ``[0, text_size)`` are the text tokenizer's ids, specials included
(pad, mask, bos, eos, soi, eoi, sep, task tokens); image code ``c`` is id ``text_size + c``.

Sequence (one layout for every task, so any batch mixes tasks freely)::

    [task] [bos] text (max_text_len) [soi] image (h * w) [eoi] extra_1 extra_2 ...

Extra segments hold further modalities (:mod:`unigen.modalities`: a scene layout, audio codes...),
one per entry of ``SequenceLayout.extra`` (name -> token grid shape), their codes appended to the
vocabulary after the image codes in the same order (``VocabLayout.extra``: name -> codebook
size), as in UniDisc's and MMaDA's multimodal layouts.  They carry no bracket tokens: a segment is
told by its modality embedding and position, and its place in the layout is fixed.

The text segment holds ``caption <eos> <pad>...`` or ``question <sep> answer <eos> <pad>...``.
With a *question slot* of ``q`` positions (``question_slot=q``) a question always fills the first
``q`` text positions (``question <sep> <pad>...``) and its answer starts at text position ``q``, so
every VQA row shares one prefix pattern (image + question) that can be KV-cached while the answer
is decoded (LaViDa's prefix-DLM); captions still use the whole text segment.
Tasks differ only in which positions are given and which are predicted (``unigen.diffusion.tasks``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

# modality ids used for per-position heads and legal-logit masks; extra segments follow (3, 4, ...)
STRUCTURE, TEXT, IMAGE = 0, 1, 2
BUILTIN_SEGMENTS = ("text", "image", "question", "structure")

# specials the text segment may never *predict* (they are placed by the layout, not generated);
# <unk> stays predictable: a caption word missing from the vocabulary is a legal <unk> target
_NON_OUTPUT_SPECIALS = ("<mask>", "<bos>", "<soi>", "<eoi>", "<sep>")


@dataclass(frozen=True)
class VocabLayout:
    """Maps text ids, image codes and specials into one id space.

    ``specials`` maps special-token strings (``"<mask>"``, ``"<pad>"``, ...) to their text ids; it
    must contain at least ``<pad>``, ``<mask>``, ``<bos>``, ``<eos>``, ``<soi>``, ``<eoi>``, ``<sep>``.
    """

    text_size: int
    image_size: int
    specials: dict[str, int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)  # extra segment name -> codebook size

    REQUIRED = ("<pad>", "<mask>", "<bos>", "<eos>", "<soi>", "<eoi>", "<sep>")

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", dict(self.extra))
        check_extra_names(self.extra, "vocabulary layout")
        small = {k: v for k, v in self.extra.items() if not isinstance(v, int) or v <= 0}
        if small:
            raise ValueError(f"extra segment codebook sizes must be positive integers, got {small}")
        missing = [s for s in self.REQUIRED if s not in self.specials]
        if missing:
            raise ValueError(f"vocabulary layout is missing special tokens {missing}")
        bad = {k: v for k, v in self.specials.items() if not 0 <= v < self.text_size}
        if bad:
            raise ValueError(f"special token ids {bad} lie outside the text vocabulary [0, {self.text_size})")
        if self.image_size <= 0:
            raise ValueError(f"image codebook size must be > 0, got {self.image_size}")

    @property
    def total_size(self) -> int:
        return self.text_size + self.image_size + sum(self.extra.values())

    @property
    def num_modalities(self) -> int:
        """Rows of :meth:`legal_bias`: structure, text, image and one per extra segment."""
        return 3 + len(self.extra)

    def modality_id(self, name: str) -> int:
        """The modality id of a segment: ``text``, ``image`` or an extra segment's name."""
        if name == "text":
            return TEXT
        if name == "image":
            return IMAGE
        if name in self.extra:
            return 3 + list(self.extra).index(name)
        raise ValueError(f"no segment {name!r} in the vocabulary (have text, image"
                         f"{''.join(', ' + n for n in self.extra)})")

    def offset(self, name: str) -> int:
        """The first vocabulary id of a segment's codes (``image`` or an extra segment)."""
        if name == "image":
            return self.image_offset
        start = self.image_offset + self.image_size
        for other, size in self.extra.items():
            if other == name:
                return start
            start += size
        raise ValueError(f"no code segment {name!r} in the vocabulary (have image"
                         f"{''.join(', ' + n for n in self.extra)})")

    def codebook_size(self, name: str) -> int:
        """The number of codes of a segment (``image`` or an extra segment)."""
        if name == "image":
            return self.image_size
        if name not in self.extra:
            self.offset(name)  # raises the unknown-segment error
        return self.extra[name]

    @property
    def image_offset(self) -> int:
        return self.text_size

    @property
    def mask_id(self) -> int:
        return self.specials["<mask>"]

    @property
    def pad_id(self) -> int:
        return self.specials["<pad>"]

    def special(self, name: str) -> int:
        try:
            return self.specials[name]
        except KeyError:
            raise KeyError(f"special token {name!r} is not in the vocabulary "
                           f"(have {sorted(self.specials)})") from None

    def legal_range(self, modality: int) -> slice:
        if modality == TEXT:
            return slice(0, self.text_size)
        names = ("image", *self.extra)
        if IMAGE <= modality < IMAGE + len(names):
            name = names[modality - IMAGE]
            start = self.offset(name)
            return slice(start, start + self.codebook_size(name))
        raise ValueError(f"modality {modality} has no output range")

    def image_to_vocab(self, codes: Tensor) -> Tensor:
        return self.codes_to_vocab("image", codes)

    def vocab_to_image(self, ids: Tensor) -> Tensor:
        return self.vocab_to_codes("image", ids)

    def codes_to_vocab(self, name: str, codes: Tensor) -> Tensor:
        """A segment's codebook indices -> vocabulary ids."""
        size = self.codebook_size(name)
        codes = codes.long()
        if name != "image" and codes.numel() and (codes.min() < 0 or codes.max() >= size):
            # (image codes come from the image tokenizer, which checks its own range)
            raise ValueError(f"{name} codes must lie in [0, {size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return codes + self.offset(name)

    def vocab_to_codes(self, name: str, ids: Tensor) -> Tensor:
        """Vocabulary ids -> a segment's codebook indices; ids outside its range are refused."""
        size = self.codebook_size(name)
        codes = ids.long() - self.offset(name)
        if codes.numel() and (codes.min() < 0 or codes.max() >= size):
            what = "an image" if name == "image" else f"{name} codes"
            raise ValueError(f"ids outside the {name} code range cannot be decoded to {what}")
        return codes

    def legal_bias(self) -> Tensor:
        """[M, V] additive logit bias (M: :attr:`num_modalities`): 0 where a modality may emit a
        token, -inf elsewhere."""
        bias = torch.full((self.num_modalities, self.total_size), float("-inf"))
        bias[STRUCTURE] = 0.0  # structure positions are never predicted; keep them finite
        bias[TEXT, self.legal_range(TEXT)] = 0.0
        for name in _NON_OUTPUT_SPECIALS:
            if name in self.specials:
                bias[TEXT, self.specials[name]] = float("-inf")
        for name, idx in self.specials.items():
            if name.startswith("<") and name not in self.REQUIRED and name != "<unk>":
                bias[TEXT, idx] = float("-inf")  # task tokens
        for modality in range(IMAGE, self.num_modalities):
            bias[modality, self.legal_range(modality)] = 0.0
        return bias

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.extra:  # absent when empty: configs saved before extra segments stay equal
            del out["extra"]
        return out

    @classmethod
    def from_tokenizers(cls, text_tokenizer: Any, image_codebook_size: int,
                        extra: dict[str, int] | None = None) -> "VocabLayout":
        return cls(text_size=text_tokenizer.vocab_size, image_size=image_codebook_size,
                   specials=dict(text_tokenizer.special_ids), extra=dict(extra or {}))


def check_extra_names(names, where: str) -> None:
    """Extra segment names are identifiers that no built-in segment uses."""
    bad = [n for n in names if not isinstance(n, str) or not n.isidentifier()
           or n in BUILTIN_SEGMENTS]
    if bad:
        raise ValueError(f"{where}: extra segment names must be identifiers other than "
                         f"{list(BUILTIN_SEGMENTS)}, got {bad}")


@dataclass(frozen=True)
class SequenceLayout:
    """Positions of each segment in the shared sequence.  ``question_slot``: 0 (questions and
    answers share the text segment freely) or the fixed number of text positions a question (with
    its ``<sep>``) occupies, the rest holding the answer (see the module docstring).
    ``answer_len``: 0 (a VQA answer is decoded in every text position after its question) or the
    number of positions it is decoded in (answer + ``<eos>`` + padding); the positions after them
    hold given ``<pad>`` tokens, so short answers are not outweighed by predicting padding."""

    max_text_len: int
    grid: tuple[int, int]
    question_slot: int = 0
    answer_len: int = 0
    extra: dict[str, tuple[int, ...]] = field(default_factory=dict)  # name -> (n,) or (h, w)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        check_extra_names(self.extra, "sequence layout")
        shapes = {}
        for name, shape in dict(self.extra).items():
            dims = (shape,) if isinstance(shape, int) else tuple(shape)
            if not 1 <= len(dims) <= 2 or not all(isinstance(d, int) and d > 0 for d in dims):
                raise ValueError(f"extra segment {name!r}: shape must be (n,) or (h, w) of positive "
                                 f"integers, got {shape!r}")
            shapes[name] = dims
        object.__setattr__(self, "extra", shapes)
        if self.max_text_len < 2:
            raise ValueError(f"max_text_len must be >= 2, got {self.max_text_len}")
        if self.question_slot and not 2 <= self.question_slot <= self.max_text_len - 2:
            raise ValueError(f"question_slot must be 0 or in [2, max_text_len - 2] (a question word "
                             f"+ <sep>, and room for an answer + <eos>), got {self.question_slot} "
                             f"with max_text_len {self.max_text_len}")
        if self.answer_len and not 2 <= self.answer_len <= self.max_text_len - 2 - self.question_slot:
            raise ValueError(f"answer_len must be 0 or in [2, max_text_len - 2 - question_slot] (an "
                             f"answer word + <eos>, after at least a question word + <sep>), got "
                             f"{self.answer_len} with max_text_len {self.max_text_len} and "
                             f"question_slot {self.question_slot}")

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def task_pos(self) -> int:
        return 0

    @property
    def text(self) -> slice:
        return slice(2, 2 + self.max_text_len)

    @property
    def question(self) -> slice:
        """The question slot (empty without one)."""
        return slice(2, 2 + self.question_slot)

    @property
    def after_question(self) -> slice:
        """The text positions after the question slot (the whole text segment without one)."""
        return slice(2 + self.question_slot, 2 + self.max_text_len)

    @property
    def soi_pos(self) -> int:
        return 2 + self.max_text_len

    @property
    def image(self) -> slice:
        start = self.soi_pos + 1
        return slice(start, start + self.num_image_tokens)

    @property
    def eoi_pos(self) -> int:
        return self.image.stop

    def extra_segment(self, name: str) -> slice:
        """The positions of an extra segment (in the order of ``extra``, after ``<eoi>``)."""
        start = self.eoi_pos + 1
        for other, shape in self.extra.items():
            n = math.prod(shape)
            if other == name:
                return slice(start, start + n)
            start += n
        raise ValueError(f"no extra segment {name!r} in the sequence layout (have {list(self.extra)})")

    def segment(self, name: str) -> slice:
        """The positions of ``text``, ``image``, ``question`` or an extra segment."""
        if name in ("text", "image", "question"):
            return getattr(self, name)
        return self.extra_segment(name)

    @property
    def length(self) -> int:
        return self.eoi_pos + 1 + sum(math.prod(s) for s in self.extra.values())

    def modality(self) -> Tensor:
        """[S] long: STRUCTURE / TEXT / IMAGE (then 3, 4, ... for the extra segments) per position."""
        mod = torch.full((self.length,), STRUCTURE, dtype=torch.long)
        mod[self.text] = TEXT
        mod[self.image] = IMAGE
        for i, name in enumerate(self.extra):
            mod[self.extra_segment(name)] = IMAGE + 1 + i
        return mod

    def axes(self) -> Tensor:
        """[S, 2] (row, col) per position for M-RoPE: text and structure tokens use (i, i); image
        tokens use (start + row, start + col) where ``start`` is the soi position + 1."""
        idx = torch.arange(self.length)
        axes = torch.stack((idx, idx), dim=-1)
        h, w = self.grid
        start = self.image.start
        rows = torch.arange(h).repeat_interleave(w)
        cols = torch.arange(w).repeat(h)
        axes[self.image] = torch.stack((start + rows, start + cols), dim=-1)
        after = max(h, w) + start  # <eoi>
        axes[self.eoi_pos] = after
        cursor = after + 1
        for name, shape in self.extra.items():
            # a 1-D segment continues the text's diagonal; a 2-D one is a grid like the image's
            seg = self.extra_segment(name)
            if len(shape) == 1:
                axes[seg] = cursor + torch.arange(shape[0])[:, None]
                cursor += shape[0]
            else:
                gh, gw = shape
                axes[seg] = cursor + torch.stack((torch.arange(gh).repeat_interleave(gw),
                                                  torch.arange(gw).repeat(gh)), dim=-1)
                cursor += max(gh, gw)
        return axes

    def grid_axes(self) -> Tensor:
        """[S, 2] grid cell per position (image positions only; zeros elsewhere) for learned 2-D tables."""
        axes = torch.zeros(self.length, 2, dtype=torch.long)
        h, w = self.grid
        axes[self.image, 0] = torch.arange(h).repeat_interleave(w)
        axes[self.image, 1] = torch.arange(w).repeat(h)
        return axes

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_text_len": self.max_text_len, "grid": list(self.grid)}
        if self.question_slot:  # absent when 0: configs saved before the slot existed stay equal
            out["question_slot"] = self.question_slot
        if self.answer_len:  # likewise
            out["answer_len"] = self.answer_len
        if self.extra:  # likewise
            out["extra"] = {name: list(shape) for name, shape in self.extra.items()}
        return out
