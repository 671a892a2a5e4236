"""Text tokenizer for the unified model, built on Hugging Face ``tokenizers``.

One discrete-diffusion transformer reads and writes text and image tokens in one sequence (Show-o,
MMaDA, UniDisc), so the text vocabulary starts with the control tokens that sequence needs, at fixed
ids that never depend on the training data:

====  ============  ===========================================================================
 id   token         role
====  ============  ===========================================================================
  0   ``<pad>``     padding (ignored by the loss)
  1   ``<unk>``     a word (word-level) the vocabulary lacks
  2   ``<mask>``    the absorbing state of masked discrete diffusion (MDLM, MaskGIT)
  3   ``<bos>``     start of text
  4   ``<eos>``     end of text
  5   ``<soi>``     start of image tokens
  6   ``<eoi>``     end of image tokens
  7   ``<sep>``     separates question and answer, prompt and response
  8   ``<t2i>``     task: text -> image
  9   ``<caption>`` task: image -> caption
 10   ``<vqa>``     task: image + question -> answer
 11   ``<joint>``   task: joint text + image generation (UniDisc)
 12   ``<text>``    task: text-only modelling
 13   ``<inpaint>`` task: image inpainting
====  ============  ===========================================================================

Two kinds of model (registered in :data:`TEXT_TOKENIZER_KINDS`, so adding one needs no other edit):

* ``"wordlevel"``: NFKC + lowercase, then words (``\\w+`` with inner ``-`` or apostrophes, so
  "t-shirt" and "don't" stay whole) and single punctuation characters.  Right for the small closed
  vocabulary of template captions.  A word outside the vocabulary becomes ``<unk>``; decoding renders
  ``<unk>`` literally (even with ``skip_special=True``) so lost words stay visible.  Decoding gives the
  *normalized* text: lowercase words joined by single spaces, ``.,!?;:)]}%`` attached to the word
  before them and ``([{`` to the word after; :meth:`TextTokenizer.normalize` gives that form.
* ``"bpe"``: byte-level BPE (GPT-2) with NFC normalization.  Every string is encodable (the 256 byte
  symbols are always in the vocabulary, so ``<unk>`` never appears) and decoding returns the NFC text.

Control tokens typed inside a text ("<mask>") are encoded as ordinary text, never as control ids: the
data must not be able to inject a mask or a task switch.

A task beyond the six above gets its ``<name>`` token from :meth:`TextTokenizer.add_task_tokens`
(or ``train(..., task_tokens=[...])``, ``unigen text-tokenizer --task-token NAME``): it is appended
after the learned vocabulary, so no existing id moves and a tokenizer keeps fitting the models
trained with it.  The extra task names are saved in ``text_tokenizer_config.json``.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        trainers)

from unigen import io
from unigen.registry import Registry

SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>", "<unk>", "<mask>", "<bos>", "<eos>", "<soi>", "<eoi>", "<sep>",
    "<t2i>", "<caption>", "<vqa>", "<joint>", "<text>", "<inpaint>",
)
TASKS: tuple[str, ...] = ("t2i", "caption", "vqa", "joint", "text", "inpaint")
UNK_TOKEN = "<unk>"
_TASK_NAME = r"[a-z][a-z0-9_]*"  # a task token is "<name>": no brackets or spaces inside

FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "text_tokenizer_config.json"

TEXT_TOKENIZER_KINDS: Registry[type["TextTokenizerKind"]] = Registry("text tokenizer kind")


def _check_config_describes(config: dict, config_file: Path, loaded: "TextTokenizer",
                            file: Path) -> None:
    """The config's record of the vocabulary (size, special tokens) must match ``tokenizer.json``:
    a model's embedding rows are laid out by those ids, so a vocabulary file replaced or edited
    since the save would shift every id without a shape error."""
    recorded = config.get("vocab_size")
    if recorded is not None and recorded != loaded.vocab_size:
        raise ValueError(f"{config_file} records a vocabulary of {recorded} tokens, but {file} "
                         f"holds {loaded.vocab_size}: one of the two was edited or replaced since "
                         "the tokenizer was saved")
    specials = config.get("special_tokens")
    if specials is not None and list(specials) != list(SPECIAL_TOKENS):
        raise ValueError(f"{config_file} records the special tokens {specials}, but this unigen "
                         f"lays them out as {list(SPECIAL_TOKENS)}")


class TextTokenizerKind(ABC):
    """How one kind of tokenizer model is built, trained and turned back into text."""

    name: str = ""
    model_type: str = ""  # the "model.type" written in tokenizer.json, used to recognise a file

    @abstractmethod
    def build(self) -> Tokenizer:
        """An untrained tokenizer with its normalizer, pre-tokenizer and decoder set."""

    @abstractmethod
    def trainer(self, vocab_size: int, min_frequency: int) -> trainers.Trainer: ...

    @abstractmethod
    def detokenize(self, tok: Tokenizer, ids: list[int]) -> str:
        """Ids (control tokens already filtered) -> text."""

    def min_vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + 1


def register_kind(name: str):
    def wrap(cls: type[TextTokenizerKind]) -> type[TextTokenizerKind]:
        cls.name = name
        return TEXT_TOKENIZER_KINDS.register(name)(cls)

    return wrap


# Closing punctuation sticks to the word before it, opening brackets to the word after.
_ATTACH_LEFT = frozenset(".,!?;:)]}%")
_ATTACH_RIGHT = frozenset("([{")


def join_words(tokens: Sequence[str]) -> str:
    """Word-level tokens -> canonical text (the spacing rules of the module docstring)."""
    out: list[str] = []
    for token in tokens:
        if out and token not in _ATTACH_LEFT and out[-1] not in _ATTACH_RIGHT:
            out.append(" ")
        out.append(token)
    return "".join(out)


@register_kind("wordlevel")
class WordLevelKind(TextTokenizerKind):
    model_type = "WordLevel"
    # a word may hold inner hyphens/apostrophes ("t-shirt", "don't"); any other symbol stands alone
    pattern = r"\w+(?:[-'’]\w+)*|[^\w\s]"

    def build(self) -> Tokenizer:
        tok = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(self.pattern), behavior="removed", invert=True)
        return tok

    def trainer(self, vocab_size: int, min_frequency: int) -> trainers.Trainer:
        return trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                         special_tokens=list(SPECIAL_TOKENS), show_progress=False)

    def detokenize(self, tok: Tokenizer, ids: list[int]) -> str:
        return join_words([tok.id_to_token(i) for i in ids])


@register_kind("bpe")
class ByteLevelBPEKind(TextTokenizerKind):
    """Byte-level BPE as in GPT-2: no unknown symbols, exact round trip of (NFC) text."""

    model_type = "BPE"

    def build(self) -> Tokenizer:
        tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        return tok

    def trainer(self, vocab_size: int, min_frequency: int) -> trainers.Trainer:
        return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                   special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def detokenize(self, tok: Tokenizer, ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False)

    def min_vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())


def _kind_for_model_type(model_type: str, source: Path) -> str:
    for name in TEXT_TOKENIZER_KINDS.names():
        if TEXT_TOKENIZER_KINDS.get(name).model_type == model_type:
            return name
    raise ValueError(f"{source} holds a {model_type!r} tokenizer model; unigen reads "
                     f"{', '.join(TEXT_TOKENIZER_KINDS.names())}")


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class TextTokenizer:
    """Text <-> token ids with the unified model's control tokens at fixed ids (module docstring)."""

    def __init__(self, tokenizer: Tokenizer, kind: str, task_tokens: Sequence[str] = ()) -> None:
        self.kind = kind
        self._kind = TEXT_TOKENIZER_KINDS.get(kind)()
        self._tok = tokenizer
        # control tokens written in the data stay text; only code can emit control ids
        self._tok.encode_special_tokens = True
        for offset, token in enumerate(SPECIAL_TOKENS):
            found = tokenizer.token_to_id(token)
            if found != offset:
                raise ValueError(f"tokenizer has {token!r} at id {found}, unigen needs it at {offset} "
                                 "(train it with TextTokenizer.train)")
        self.special_ids: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        self.extra_tasks: tuple[str, ...] = tuple(task_tokens)
        for name in self.extra_tasks:
            found = tokenizer.token_to_id(f"<{name}>")
            if found is None or found < len(SPECIAL_TOKENS):
                raise ValueError(f"tokenizer lacks the task token '<{name}>' its config lists "
                                 "(add it with TextTokenizer.add_task_tokens)")
            self.special_ids[f"<{name}>"] = found
        self.pad_id, self.unk_id, self.mask_id = 0, 1, 2
        self.bos_id, self.eos_id, self.soi_id, self.eoi_id, self.sep_id = 3, 4, 5, 6, 7
        self._control_ids = frozenset(self.special_ids.values()) - {self.unk_id}

    # -- training and persistence ----------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, kind: str = "wordlevel",
              min_frequency: int = 1, task_tokens: Sequence[str] = ()) -> "TextTokenizer":
        """Learn a vocabulary from ``texts``; ``vocab_size`` counts the control tokens.

        A word-level vocabulary keeps the ``vocab_size`` most frequent words (ties: any), so it may
        come out smaller when the data has fewer distinct words.  ``task_tokens``: names of tasks
        beyond :data:`TASKS`, whose ``<name>`` tokens go after the learned vocabulary
        (:meth:`add_task_tokens`)."""
        builder = TEXT_TOKENIZER_KINDS.get(kind)()
        if vocab_size < builder.min_vocab_size():
            raise ValueError(f"vocab_size {vocab_size} is too small for a {kind!r} tokenizer "
                             f"(at least {builder.min_vocab_size()})")
        corpus = [t for t in texts if t.strip()]
        if not corpus:
            raise ValueError("cannot train a text tokenizer on no text (all texts are empty)")
        tok = builder.build()
        tok.train_from_iterator(corpus, trainer=builder.trainer(vocab_size, min_frequency),
                                length=len(corpus))
        trained = cls(tok, kind)
        return trained.add_task_tokens(task_tokens) if task_tokens else trained

    def add_task_tokens(self, names: Sequence[str]) -> "TextTokenizer":
        """A copy with a ``<name>`` control token for each new task name (a task registered in
        :data:`unigen.diffusion.tasks.TASKS` beyond the built-in ones).  The tokens are appended
        after the current vocabulary, so every existing id keeps its meaning."""
        if isinstance(names, str):
            raise TypeError("add_task_tokens takes a list of task names, got one str")
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {list(names)}")
        known = set(TASKS) | set(self.extra_tasks)
        for name in names:
            if not isinstance(name, str) or not re.fullmatch(_TASK_NAME, name):
                raise ValueError(f"task name {name!r} must match {_TASK_NAME} (lowercase letters, "
                                 "digits, underscores; the token is '<name>')")
            if name in known:
                raise ValueError(f"the tokenizer already has the task token '<{name}>'")
            if self._tok.token_to_id(f"<{name}>") is not None:
                raise ValueError(f"'<{name}>' is already an ordinary token of this vocabulary")
        tok = Tokenizer.from_str(self._tok.to_str())
        tok.add_special_tokens([AddedToken(f"<{n}>", special=True, normalized=False) for n in names])
        return type(self)(tok, self.kind, (*self.extra_tasks, *names))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``text_tokenizer_config.json``; complete or absent."""
        with io.atomic_directory(path, marker=CONFIG_FILE) as tmp:
            io.write_text(tmp / TOKENIZER_FILE, self._tok.to_str(pretty=True))
            io.write_json(tmp / CONFIG_FILE, {"format_version": FORMAT_VERSION, "kind": self.kind,
                                              "vocab_size": self.vocab_size,
                                              "special_tokens": list(SPECIAL_TOKENS),
                                              "task_tokens": list(self.extra_tasks)})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "TextTokenizer":
        """Load a directory written by :meth:`save_pretrained`, or a bare ``tokenizer.json`` (local
        files only, never a hub)."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            # only the path is known here, not the data the caller trains on: DATA stays a blank
            out = path.parent if path.suffix == ".json" else path
            raise FileNotFoundError(f"text tokenizer file not found: {file} (make it with `unigen "
                                    f"text-tokenizer --data DATA --out {out}`; DATA: the training "
                                    f"data source, e.g. shapes)")
        try:
            raw = file.read_text()
            tok = Tokenizer.from_str(raw)
            model_type = json.loads(raw)["model"]["type"]
        except Exception as err:  # tokenizers raises bare Exceptions with Rust messages
            raise ValueError(f"{file} is not a valid tokenizer.json: {err}") from None
        kind = _kind_for_model_type(model_type, file)
        config_file = path / CONFIG_FILE if path.is_dir() else None
        extra: list[str] = []
        if config_file is not None:
            config = io.read_json(config_file, "text tokenizer config")
            if config.get("format_version") != FORMAT_VERSION or config.get("kind") != kind:
                raise ValueError(f"{config_file} does not describe {file}: expected format_version "
                                 f"{FORMAT_VERSION} and kind {kind!r}, found "
                                 f"{config.get('format_version')!r} and {config.get('kind')!r}")
            extra = config.get("task_tokens", [])  # absent in configs written before extra tasks
            if not isinstance(extra, list) or not all(isinstance(n, str) for n in extra):
                raise ValueError(f"{config_file}: task_tokens must be a list of task names, got {extra!r}")
        try:
            loaded = cls(tok, kind, extra)
        except ValueError as err:
            raise ValueError(f"{file}: {err}") from None
        if config_file is not None:
            _check_config_describes(config, config_file, loaded, file)
        return loaded

    # -- vocabulary ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task this tokenizer has a token for: the built-in :data:`TASKS`, then the added."""
        return (*TASKS, *self.extra_tasks)

    def task_id(self, name: str) -> int:
        """Id of a task token, by task name ("vqa") or token ("<vqa>")."""
        token = name if name.startswith("<") else f"<{name}>"
        if token[1:-1] not in self.tasks:
            raise KeyError(f"the text tokenizer has no task token {token!r} (it has "
                           f"{', '.join(self.tasks)}); add one with TextTokenizer.add_task_tokens "
                           "or `unigen text-tokenizer ... --task-token NAME`")
        return self.special_ids[token]

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, index: int) -> str:
        self._check_ids([index])
        return self._tok.id_to_token(index)

    # -- text -> ids -----------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """The canonical form that ``decode(encode(text))`` returns when every word is known."""
        normalizer = self._tok.normalizer
        normalized = normalizer.normalize_str(text) if normalizer is not None else text
        if self.kind != "wordlevel":
            return normalized
        return join_words([w for w, _ in self._tok.pre_tokenizer.pre_tokenize_str(normalized)])

    def encode(self, text: str, max_length: int | None = None, add_eos: bool = False,
               add_bos: bool = False, truncation: bool = False, allow_empty: bool = False
               ) -> list[int]:
        """Token ids of ``text``, optionally framed by ``<bos>``/``<eos>``.

        A result longer than ``max_length`` is an error unless ``truncation=True``, which cuts the
        text (``<bos>``/``<eos>`` are kept).  Empty text is an error unless ``allow_empty``."""
        return self._frame(self._text_ids(text, allow_empty), text, max_length, add_eos, add_bos,
                           truncation)

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None, pad: bool = True,
                     add_eos: bool = False, add_bos: bool = False, truncation: bool = False,
                     allow_empty: bool = False) -> torch.Tensor:
        """LongTensor ``[B, L]`` padded with ``pad_id`` at the end.

        ``L`` is ``max_length`` when ``pad`` and ``max_length`` are set (fixed-shape batches),
        otherwise the longest row of the batch."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a sequence of texts, got one str (use encode)")
        if not texts:
            raise ValueError("encode_batch got no texts")
        for text in texts:
            self._check_text(text, allow_empty)
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        rows = [self._frame(e.ids, text, max_length, add_eos, add_bos, truncation)
                for e, text in zip(encodings, texts)]
        width = max_length if (pad and max_length is not None) else max(len(r) for r in rows)
        out = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for row, ids in zip(out, rows):
            row[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def _check_text(self, text: str, allow_empty: bool) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not allow_empty and not text.strip():
            raise ValueError(f"empty text {text!r} (pass allow_empty=True if that is intended)")

    def _text_ids(self, text: str, allow_empty: bool) -> list[int]:
        self._check_text(text, allow_empty)
        return self._tok.encode(text, add_special_tokens=False).ids

    def _frame(self, ids: list[int], text: str, max_length: int | None, add_eos: bool,
               add_bos: bool, truncation: bool) -> list[int]:
        head = [self.bos_id] if add_bos else []
        tail = [self.eos_id] if add_eos else []
        if max_length is not None:
            room = max_length - len(head) - len(tail)
            if room < 0:
                raise ValueError(f"max_length {max_length} cannot even hold <bos>/<eos>")
            if len(ids) > room:
                if not truncation:
                    raise ValueError(f"text {_preview(text)} has {len(ids) + len(head) + len(tail)} "
                                     f"tokens, more than max_length={max_length} "
                                     "(pass truncation=True to cut it)")
                ids = ids[:room]
        return head + list(ids) + tail

    # -- ids -> text -----------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Text of ``ids``; ``skip_special`` drops control tokens (padding, ``<eos>``, task tokens
        ...), while ``<unk>`` is always rendered."""
        if torch.is_tensor(ids):
            if ids.ndim != 1:
                raise ValueError(f"decode takes one row of ids, got shape {tuple(ids.shape)} "
                                 "(use decode_batch)")
            if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
                # a float id would be truncated (3.7 -> 3) into some other word
                raise ValueError(f"token ids must have an integer dtype (e.g. torch.long), got {ids.dtype}")
            ids = ids.tolist()
        ids = [_as_id(i) for i in ids]
        self._check_ids(ids)
        if skip_special:
            ids = [i for i in ids if i not in self._control_ids]
        return self._kind.detokenize(self._tok, ids)

    def decode_batch(self, ids: Sequence[Sequence[int]] | torch.Tensor, skip_special: bool = True
                     ) -> list[str]:
        if torch.is_tensor(ids) and ids.ndim != 2:
            raise ValueError(f"decode_batch takes [B, L] ids, got shape {tuple(ids.shape)}")
        return [self.decode(row, skip_special=skip_special) for row in ids]

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")

    def __repr__(self) -> str:
        return f"TextTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _as_id(value: Any) -> int:
    """An integer id (Python or NumPy); floats and booleans are refused, not truncated."""
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError):
            return operator.index(value)
    raise ValueError(f"token ids must be integers, got {value!r}")


__all__ = ["SPECIAL_TOKENS", "TASKS", "TEXT_TOKENIZER_KINDS", "TextTokenizer", "TextTokenizerKind",
           "join_words", "register_kind"]
