"""A word-level text tokenizer for small CLIPs, saved in a form ``CLIPProcessor`` loads.

unigen's data speaks a small closed vocabulary (template captions), so a word-level vocabulary built
from the data is enough and keeps the CLIP text tower tiny. It is a Hugging Face ``tokenizers``
WordLevel model wrapped as ``PreTrainedTokenizerFast``; ``save_pretrained`` writes
``tokenizer.json`` + ``tokenizer_config.json``, which ``CLIPProcessor.from_pretrained`` (and so
CLIPScore) reads back with no unigen code.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
# EOS must not get id 2: CLIPTextModel treats eos_token_id == 2 as a pre-2023 config and pools the
# highest token id instead of the EOS position
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # words (\w+) and runs of punctuation, the split unigen's captions are written in
    return pre_tokenizers.Whitespace()


def words(text: str) -> list[str]:
    """The words the tokenizer sees in ``text`` (normalised, pre-tokenised)."""
    normalized = _normalizer().normalize_str(text)
    return [w for w, _ in _pre_tokenizer().pre_tokenize_str(normalized)]


def build_vocabulary(texts: Iterable[str]) -> list[str]:
    """Sorted distinct words of ``texts`` (sorted so the ids never depend on data order)."""
    vocab = {w for text in texts for w in words(text)}
    clash = vocab & set(SPECIAL_TOKENS)
    if clash:
        raise ValueError(f"texts contain the special tokens {sorted(clash)}")
    if not vocab:
        raise ValueError("no words found to build a vocabulary from")
    return sorted(vocab)


def build_word_tokenizer(vocabulary: Sequence[str], max_length: int) -> PreTrainedTokenizerFast:
    """``<bos> words <eos>`` encoder; unknown words map to ``<unk>``; truncation keeps ``<eos>``."""
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError("vocabulary has duplicate words")
    bad = [w for w in vocabulary if w in SPECIAL_TOKENS or words(w) != [w]]
    if bad:
        raise ValueError(f"vocabulary entries {bad[:5]} are not single normalised words")
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *vocabulary])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK,
                                   bos_token=BOS, eos_token=EOS, model_max_length=max_length)
