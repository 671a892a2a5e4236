"""Text normalisation shared by the captioning and VQA metrics.

Captions follow the coco-caption PTB tokenisation closely enough for unigen's data: lowercase, split
punctuation off words and drop it (coco-caption removes punctuation tokens before BLEU/CIDEr).
Answers follow the VQA evaluation script (Antol et al., 2015): lowercase, drop punctuation and
articles, map number words to digits.
"""

from __future__ import annotations

import re

_PUNCT = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")
_ARTICLES = frozenset({"a", "an", "the"})
# the VQA script maps spelled-out small numbers to digits so "two" and "2" agree
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    return text


def caption_tokens(text: str) -> list[str]:
    """Lowercased word tokens of a caption with punctuation removed."""
    text = _check_text(text, "caption").lower()
    return _PUNCT.sub(" ", text).split()


def normalize_caption(text: str) -> str:
    """``caption_tokens`` joined by single spaces (the form BLEU/CIDEr see)."""
    return " ".join(caption_tokens(text))


def normalize_answer(text: str) -> str:
    """VQA-style answer normalisation: "The Two red circles." -> "2 red circles"."""
    text = _check_text(text, "answer").lower()
    words = _PUNCT.sub(" ", text).split()
    words = [_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES]
    return _SPACES.sub(" ", " ".join(words)).strip()
