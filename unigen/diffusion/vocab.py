"""The unified token space: one vocabulary for text ids, image codes and special tokens, and the
fixed sequence layout every task shares.

Vocabulary (Show-o / UniDisc): ``[0, text_size)`` are the text tokenizer's ids, specials included
(pad, mask, bos, eos, soi, eoi, sep, task tokens); image code ``c`` is id ``text_size + c``.

Sequence (one layout for every task, so any batch mixes tasks freely)::

    [task] [bos] text (max_text_len) [soi] image (h * w) [eoi]

The text segment holds ``caption <eos> <pad>...`` or ``question <sep> answer <eos> <pad>...``.
With a *question slot* of ``q`` positions (``question_slot=q``) a question always fills the first
``q`` text positions (``question <sep> <pad>...``) and its answer starts at text position ``q``, so
every VQA row shares one prefix pattern (image + question) that can be KV-cached while the answer
is decoded (LaViDa's prefix-DLM); captions still use the whole text segment.
Tasks differ only in which positions are given and which are predicted (``unigen.diffusion.tasks``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

# modality ids used for per-position heads and legal-logit masks
STRUCTURE, TEXT, IMAGE = 0, 1, 2

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

    REQUIRED = ("<pad>", "<mask>", "<bos>", "<eos>", "<soi>", "<eoi>", "<sep>")

    def __post_init__(self) -> None:
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
        return self.text_size + self.image_size

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
        if modality == IMAGE:
            return slice(self.image_offset, self.total_size)
        raise ValueError(f"modality {modality} has no output range")

    def image_to_vocab(self, codes: Tensor) -> Tensor:
        return codes.long() + self.image_offset

    def vocab_to_image(self, ids: Tensor) -> Tensor:
        codes = ids.long() - self.image_offset
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.image_size):
            raise ValueError("ids outside the image code range cannot be decoded to an image")
        return codes

    def legal_bias(self) -> Tensor:
        """[3, V] additive logit bias: 0 where a modality may emit a token, -inf elsewhere."""
        bias = torch.full((3, self.total_size), float("-inf"))
        bias[STRUCTURE] = 0.0  # structure positions are never predicted; keep them finite
        bias[TEXT, self.legal_range(TEXT)] = 0.0
        for name in _NON_OUTPUT_SPECIALS:
            if name in self.specials:
                bias[TEXT, self.specials[name]] = float("-inf")
        for name, idx in self.specials.items():
            if name.startswith("<") and name not in self.REQUIRED and name != "<unk>":
                bias[TEXT, idx] = float("-inf")  # task tokens
        bias[IMAGE, self.legal_range(IMAGE)] = 0.0
        return bias

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_tokenizers(cls, text_tokenizer: Any, image_codebook_size: int) -> "VocabLayout":
        return cls(text_size=text_tokenizer.vocab_size, image_size=image_codebook_size,
                   specials=dict(text_tokenizer.special_ids))


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
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
    def length(self) -> int:
        return self.image.stop + 1

    def modality(self) -> Tensor:
        """[S] long: STRUCTURE / TEXT / IMAGE for each position."""
        mod = torch.full((self.length,), STRUCTURE, dtype=torch.long)
        mod[self.text] = TEXT
        mod[self.image] = IMAGE
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
        axes[self.image.stop:] = max(h, w) + start + torch.arange(self.length - self.image.stop)[:, None]
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
        return out
