"""Turning text and image codes into unified sequences and back.

:class:`TokenSpace` joins the text tokenizer, the vocabulary layout and the sequence layout so that
tasks, the training module and the pipeline all place tokens the same way.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from unigen.diffusion.vocab import SequenceLayout, VocabLayout
from unigen.transfer import to_device


class TokenSpace:
    def __init__(self, text_tokenizer: Any, vocab: VocabLayout, sequence: SequenceLayout) -> None:
        if list(vocab.extra) != list(sequence.extra):
            raise ValueError(f"the vocabulary's extra segments {list(vocab.extra)} differ from the "
                             f"sequence layout's {list(sequence.extra)}")
        self.text_tokenizer = text_tokenizer
        self.vocab = vocab
        self.sequence = sequence
        sp = vocab.specials
        self.pad_id, self.mask_id, self.eos_id, self.sep_id = (
            sp["<pad>"], sp["<mask>"], sp["<eos>"], sp["<sep>"])

    # -- text ----------------------------------------------------------------------------------------
    def _words(self, text: str, what: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"a {what} must be a str, got {type(text).__name__}: {text!r}")
        if not text.strip():
            raise ValueError(f"empty {what}: every sample needs a non-empty {what}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that were not UTF-8, kept by Python as lone surrogates
            raise ValueError(f"{what} {text!r} is not valid UTF-8 text") from None
        return list(self.text_tokenizer.encode(text))

    def _pad(self, ids: list[int], text: str) -> list[int]:
        limit = self.sequence.max_text_len
        if len(ids) > limit:
            raise ValueError(f"text too long: {len(ids)} tokens > max_text_len {limit}: {text[:80]!r}")
        return ids + [self.pad_id] * (limit - len(ids))

    def encode_captions(self, captions: Sequence[str]) -> Tensor:
        """``caption <eos> <pad>...`` rows [B, max_text_len]."""
        rows = [self._pad(self._words(c, "caption") + [self.eos_id], c) for c in captions]
        return torch.tensor(rows, dtype=torch.long)

    def encode_blanks(self, texts: Sequence[str], blank: str = "_") -> tuple[Tensor, Tensor]:
        """``caption <eos> <pad>...`` rows [B, max_text_len] where each standalone ``blank`` word
        is one ``<mask>`` token to fill in, and the bool [B, max_text_len] of those positions
        (text infilling: ``"a _ circle above a blue _"`` asks for two tokens).  The words between
        blanks are encoded as they stand in the whole text, so they keep the tokens they have there."""
        rows, blanks = [], []
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("empty text: every sample needs a non-empty text")
            ids: list[int] = []
            hidden: list[bool] = []
            piece: list[str] = []
            for word in [*text.split(), None]:  # None flushes the last piece
                if word == blank or word is None:
                    if piece:
                        # after a blank the words follow a space, as in the whole caption (byte-
                        # level BPE folds it into the next token: "Ġred", not "red")
                        given = self.text_tokenizer.encode((" " if ids else "") + " ".join(piece))
                        ids += given
                        hidden += [False] * len(given)
                        piece = []
                    if word is not None:
                        ids.append(self.mask_id)
                        hidden.append(True)
                else:
                    piece.append(word)
            ids.append(self.eos_id)
            hidden.append(False)
            rows.append(self._pad(ids, text))
            blanks.append(hidden + [False] * (self.sequence.max_text_len - len(hidden)))
        return torch.tensor(rows, dtype=torch.long), torch.tensor(blanks, dtype=torch.bool)

    def encode_questions(self, questions: Sequence[str], answers: Sequence[str] | None = None
                         ) -> tuple[Tensor, Tensor]:
        """``question <sep> answer <eos> <pad>...`` rows and the index where the answer starts.
        Without answers (or where an answer is None) the answer part is padding (to be masked and
        generated).  With a question slot the question is padded to the slot, so every answer
        starts at the slot's end; with ``answer_len`` an answer must fit in that many positions.
        A question that leaves fewer than two positions (a word and ``<eos>``) is refused: its
        answer could only come out empty or cut."""
        rows, starts = [], []
        slot, answer_len = self.sequence.question_slot, self.sequence.answer_len
        for i, q in enumerate(questions):
            ids = self._words(q, "question") + [self.sep_id]
            if slot:
                if len(ids) > slot:
                    raise ValueError(f"question too long: {len(ids) - 1} tokens + <sep> > "
                                     f"question_slot {slot}: {q[:80]!r}")
                ids += [self.pad_id] * (slot - len(ids))
            starts.append(len(ids))
            if answer_len and len(ids) + answer_len > self.sequence.max_text_len:
                raise ValueError(f"question too long: {len(ids) - 1} tokens + <sep> leave fewer than "
                                 f"answer_len {answer_len} of the {self.sequence.max_text_len} text "
                                 f"positions: {q[:80]!r}")
            room = self.sequence.max_text_len - len(ids)
            if room < 2:  # the shortest answer is one word and <eos>
                raise ValueError(f"question leaves no room for an answer: {len(ids) - 1} tokens + "
                                 f"<sep> leave {max(room, 0)} of the {self.sequence.max_text_len} "
                                 f"text positions, and an answer needs at least 2 (a word and "
                                 f"<eos>): {q[:80]!r}")
            if answers is not None and answers[i] is not None:
                answer = self._words(answers[i], "answer") + [self.eos_id]
                if answer_len and len(answer) > answer_len:
                    raise ValueError(f"answer too long: {len(answer) - 1} tokens + <eos> > answer_len "
                                     f"{answer_len}: {answers[i][:80]!r}")
                ids += answer
            rows.append(self._pad(ids, q))
        return torch.tensor(rows, dtype=torch.long), torch.tensor(starts, dtype=torch.long)

    def _decode_span(self, ids: list[int]) -> str:
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        ids = [i for i in ids if i not in (self.pad_id, self.mask_id)]
        return self.text_tokenizer.decode(ids)

    def decode_text(self, tokens: Tensor) -> list[str]:
        """The text segment of each row up to ``<eos>`` (captions)."""
        return [self._decode_span(row) for row in tokens[:, self.sequence.text].tolist()]

    def decode_answers(self, tokens: Tensor) -> list[str]:
        """The part after ``<sep>`` (after the question slot, if any) of each row's text segment, up
        to ``<eos>`` (VQA answers)."""
        out, slot = [], self.sequence.question_slot
        for row in tokens[:, self.sequence.text].tolist():
            start = slot or (row.index(self.sep_id) + 1 if self.sep_id in row else 0)
            out.append(self._decode_span(row[start:]))
        return out

    # -- sequences -----------------------------------------------------------------------------------
    def assemble(self, task: str, text_ids: Tensor | None, image_codes: Tensor | None,
                 batch_size: int | None = None, segments: dict[str, Tensor] | None = None) -> Tensor:
        """[B, S] tokens.  ``image_codes`` are codebook indices [B, h, w] or [B, N]; ``segments``
        maps extra segment names to their codes [B, *shape].  A missing text or image segment is
        filled with ``<mask>`` (it is then either generated or left unconditioned); a missing
        extra segment with ``<pad>``: tasks that know nothing of it leave it absent, not to be
        decoded."""
        seq, vocab = self.sequence, self.vocab
        segments = segments or {}
        present = [x for x in (text_ids, image_codes, *segments.values()) if x is not None]
        b = batch_size or (present[0].shape[0] if present else None)
        if b is None:
            raise ValueError("assemble needs a batch_size when no segment is given")
        device = present[0].device if present else None
        tokens = torch.full((b, seq.length), self.mask_id, dtype=torch.long, device=device)
        tokens[:, seq.task_pos] = self.task_token(task)
        tokens[:, seq.task_pos + 1] = vocab.special("<bos>")
        tokens[:, seq.soi_pos] = vocab.special("<soi>")
        tokens[:, seq.eoi_pos] = vocab.special("<eoi>")
        if seq.extra:
            tokens[:, seq.eoi_pos + 1:] = self.pad_id
        if text_ids is not None:
            tokens[:, seq.text] = to_device(text_ids, tokens.device)
        if image_codes is not None:
            codes = image_codes.reshape(b, -1)
            if codes.shape[1] != seq.num_image_tokens:
                raise ValueError(f"image has {codes.shape[1]} tokens but the model expects "
                                 f"{seq.num_image_tokens} ({seq.grid[0]}x{seq.grid[1]})")
            tokens[:, seq.image] = vocab.image_to_vocab(to_device(codes, tokens.device))
        for name, codes in segments.items():
            if codes is None:
                continue
            positions = seq.extra_segment(name)  # an unknown name is one error
            shape = seq.extra[name]
            if tuple(codes.shape) != (b, *shape):
                raise ValueError(f"{name} codes must be [{b}, {', '.join(map(str, shape))}], got "
                                 f"{list(codes.shape)}")
            tokens[:, positions] = vocab.codes_to_vocab(
                name, to_device(codes.reshape(b, -1), tokens.device))
        return tokens

    def task_token(self, task: str) -> int:
        """The vocabulary id of ``<task>``; a task the text tokenizer has no token for is one clear
        error (a new task adds its token with ``TextTokenizer.add_task_tokens``)."""
        token = f"<{task}>"
        if token not in self.vocab.specials:
            raise ValueError(f"task {task!r} has no {token} token in the text tokenizer: add it with "
                             "TextTokenizer.add_task_tokens or `unigen text-tokenizer ... "
                             f"--task-token {task}` (docs/extending.md, \"A task\")")
        return self.vocab.specials[token]

    def image_codes(self, tokens: Tensor) -> Tensor:
        """[B, S] -> codebook indices [B, h, w]."""
        h, w = self.sequence.grid
        return self.vocab.vocab_to_image(tokens[:, self.sequence.image]).reshape(-1, h, w)

    def segment_codes(self, tokens: Tensor, name: str) -> Tensor:
        """[B, S] -> an extra segment's codebook indices [B, *shape] (``image``: [B, h, w])."""
        if name == "image":
            return self.image_codes(tokens)
        seq = self.sequence
        return self.vocab.vocab_to_codes(name, tokens[:, seq.extra_segment(name)]).reshape(
            -1, *seq.extra[name])

    def segment_mask(self, batch_size: int, *segments: str, device: torch.device | None = None) -> Tensor:
        """[B, S] bool covering the named segments (``text``, ``image``, ``structure``,
        ``question``: the question slot, empty without one; or an extra segment's name)."""
        seq = self.sequence
        mask = torch.zeros(seq.length, dtype=torch.bool)  # built on the host, copied once
        for name in segments:
            if name == "structure":
                mask[[seq.task_pos, seq.task_pos + 1, seq.soi_pos, seq.eoi_pos]] = True
            elif name in ("text", "image", "question") or name in seq.extra:
                mask[seq.segment(name)] = True
            else:
                raise ValueError(f"unknown segment {name!r} (have text, image, question, structure"
                                 f"{''.join(', ' + n for n in seq.extra)})")
        return to_device(mask, device).expand(batch_size, -1).clone()
