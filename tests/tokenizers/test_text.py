import json
import re
import unicodedata

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from unigen.tokenizers.text import SPECIAL_TOKENS, TASKS, TextTokenizer, join_words

SHAPES_CORPUS = [
    "two red circles above a blue square",
    "a green triangle left of a yellow star",
    "what color is the star?",
    "how many circles are there?",
    "three purple squares, one small red circle.",
    "is the triangle (small) below the square?",
    "yes", "no", "red", "two",
]
WORDS = sorted({w for s in SHAPES_CORPUS for w in s.replace("?", " ").replace(",", " ")
                .replace(".", " ").replace("(", " ").replace(")", " ").split()})

PROSE = [
    "The quick brown fox jumps over the lazy dog. It's 12:30, isn't it?",
    "Ünïcödé text: café, naïve, 東京, emoji 🙂 and tabs\tand\nnewlines.",
    "Discrete diffusion masks tokens and learns to unmask them in parallel.",
] * 4


@pytest.fixture(scope="module")
def word() -> TextTokenizer:
    return TextTokenizer.train(SHAPES_CORPUS, vocab_size=200, kind="wordlevel")


@pytest.fixture(scope="module")
def bpe() -> TextTokenizer:
    return TextTokenizer.train(PROSE, vocab_size=400, kind="bpe")


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_special_tokens_have_fixed_ids(kind, request):
    tok = request.getfixturevalue(kind)
    assert tok.special_ids == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert (tok.pad_id, tok.unk_id, tok.mask_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3, 4)
    assert (tok.soi_id, tok.eoi_id, tok.sep_id) == (5, 6, 7)
    assert [tok.task_id(t) for t in TASKS] == list(range(8, 14))
    assert tok.task_id("<vqa>") == tok.task_id("vqa") == 10
    with pytest.raises(KeyError, match="has no task token '<mask>'"):
        tok.task_id("mask")
    assert all(tok.id_to_token(i) == t for i, t in enumerate(SPECIAL_TOKENS))


def test_wordlevel_vocab_is_the_corpus_words(word):
    assert word.vocab_size == len(SPECIAL_TOKENS) + len(WORDS) + len("?,.()")
    assert all(word.token_to_id(w) is not None for w in WORDS)


def test_vocab_size_counts_control_tokens_and_keeps_frequent_words():
    tok = TextTokenizer.train(["a a a b b c d e f g"], vocab_size=len(SPECIAL_TOKENS) + 2)
    assert tok.vocab_size == len(SPECIAL_TOKENS) + 2
    assert tok.encode("a b c") == [len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + 1, tok.unk_id]


@pytest.mark.parametrize("text", ["two red circles above a blue square", "what color is the star?",
                                  "is the triangle (small) below the square?",
                                  "three purple squares, one small red circle."])
def test_wordlevel_round_trip_is_exact(word, text):
    ids = word.encode(text)
    assert word.unk_id not in ids
    assert word.decode(ids) == text


def test_wordlevel_normalizes_case_and_spacing(word):
    ids = word.encode("  What   COLOR is the Star ? ")
    assert ids == word.encode("what color is the star?")
    assert word.decode(ids) == "what color is the star?"


def test_unknown_words_become_unk_and_decode_visibly(word):
    ids = word.encode("two orange circles 🙂")
    assert ids[1] == word.unk_id and ids[3] == word.unk_id
    assert word.decode(ids) == "two <unk> circles <unk>"


def test_control_tokens_written_in_text_stay_text(word, bpe):
    assert word.mask_id not in word.encode("a <mask> star")
    ids = bpe.encode("a <mask> star <eos>")
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)))
    assert bpe.decode(ids) == "a <mask> star <eos>"


def test_encode_frames_and_limits(word):
    plain = word.encode("two red circles")
    assert word.encode("two red circles", add_bos=True, add_eos=True) == [word.bos_id, *plain,
                                                                           word.eos_id]
    with pytest.raises(ValueError, match=r"'two red circles' has 4 tokens, more than max_length=3"):
        word.encode("two red circles", max_length=3, add_eos=True)
    cut = word.encode("two red circles", max_length=3, add_eos=True, truncation=True)
    assert cut == [*plain[:2], word.eos_id]


def test_empty_text_is_refused_unless_allowed(word):
    with pytest.raises(ValueError, match="empty text"):
        word.encode("   ")
    with pytest.raises(ValueError, match="empty text"):
        word.encode_batch(["red", ""])
    assert word.encode("", add_eos=True, allow_empty=True) == [word.eos_id]


def test_encode_batch_pads_and_decodes(word):
    texts = ["red", "two red circles above a blue square"]
    fixed = word.encode_batch(texts, max_length=12, add_eos=True)
    assert fixed.shape == (2, 12) and fixed.dtype == torch.long
    assert fixed[0, :2].tolist() == [word.encode("red")[0], word.eos_id]
    assert (fixed[0, 2:] == word.pad_id).all()
    assert fixed[1, 7] == word.eos_id
    longest = word.encode_batch(texts, max_length=12, pad=False)
    assert longest.shape == (2, 7)
    assert word.decode_batch(fixed) == texts
    assert word.decode_batch(fixed, skip_special=False)[0] == "red <eos>" + " <pad>" * 10
    with pytest.raises(ValueError, match="more than max_length=4"):
        word.encode_batch(texts, max_length=4)


def test_decode_checks_ids(word):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        word.decode([3, word.vocab_size])
    with pytest.raises(ValueError, match="use decode_batch"):
        word.decode(torch.zeros(2, 3, dtype=torch.long))
    ids = word.encode("a red circle")
    for dtype in (torch.float32, torch.bool):
        with pytest.raises(ValueError, match=f"integer dtype \\(e.g. torch.long\\), got {dtype}"):
            word.decode(torch.tensor(ids).to(dtype))
    for bad in (ids[0] + 0.7, True):
        with pytest.raises(ValueError, match=f"token ids must be integers, got {bad!r}"):
            word.decode([bad] + ids)
    assert word.decode(np.array(ids)) == word.decode(torch.tensor(ids, dtype=torch.int32))


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_save_and_load_round_trip(kind, request, tmp_path):
    tok = request.getfixturevalue(kind)
    tok.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["text_tokenizer_config.json",
                                                                   "tokenizer.json"]
    for source in (tmp_path / "tok", tmp_path / "tok" / "tokenizer.json"):
        loaded = TextTokenizer.from_pretrained(source)
        assert loaded.kind == tok.kind and loaded.vocab_size == tok.vocab_size
        text = "what color is the star?"
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.mask_id not in loaded.encode("<mask>")  # survives reloading


def test_save_replaces_an_earlier_save_but_never_a_foreign_folder(word, tmp_path):
    word.save_pretrained(tmp_path / "tok")
    word.save_pretrained(tmp_path / "tok")  # an earlier save of the same kind is replaced
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and holds no text_tokenizer_config.json"):
        word.save_pretrained(foreign)
    assert [p.name for p in foreign.iterdir()] == ["todo.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "tok"]  # no temporary left


def test_from_pretrained_errors(word, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="text tokenizer file not found: .*nowhere") as err:
        TextTokenizer.from_pretrained(missing)
    # the hint is the command that makes exactly the missing directory, on one line
    assert f"`unigen text-tokenizer --data DATA --out {missing}`" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=re.escape(f"--out {tmp_path / 'gone'}`")):
        TextTokenizer.from_pretrained(tmp_path / "gone" / "tokenizer.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not a valid tokenizer.json"):
        TextTokenizer.from_pretrained(tmp_path / "bad.json")
    # a tokenizer whose control tokens sit elsewhere would silently corrupt masks and tasks
    word.save_pretrained(tmp_path / "tok")
    spec = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["<mask>"], vocab["red"] = vocab["red"], vocab["<mask>"]
    for added in spec["added_tokens"]:
        if added["content"] == "<mask>":
            added["id"] = vocab["<mask>"]
    (tmp_path / "swapped.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="'<mask>' at id .*needs it at 2"):
        TextTokenizer.from_pretrained(tmp_path / "swapped.json")


def test_a_vocabulary_edited_after_the_save_is_refused(word, tmp_path):
    """The config records the vocabulary's size and control tokens; a tokenizer.json replaced or
    edited since would shift the ids a model's embeddings were trained on."""
    word.save_pretrained(tmp_path / "tok")
    tokenizer_file = tmp_path / "tok" / "tokenizer.json"
    spec = json.loads(tokenizer_file.read_text())
    spec["model"]["vocab"]["zebra"] = max(spec["model"]["vocab"].values()) + 1
    tokenizer_file.write_text(json.dumps(spec))
    assert TextTokenizer.from_pretrained(tokenizer_file).vocab_size == word.vocab_size + 1  # alone: fine
    with pytest.raises(ValueError, match=rf"records a vocabulary of {word.vocab_size} tokens, but "
                                         rf".*tokenizer.json holds {word.vocab_size + 1}") as err:
        TextTokenizer.from_pretrained(tmp_path / "tok")
    assert "\n" not in str(err.value)
    word.save_pretrained(tmp_path / "tok")
    config_file = tmp_path / "tok" / "text_tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["special_tokens"] = config["special_tokens"][::-1]
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="records the special tokens"):
        TextTokenizer.from_pretrained(tmp_path / "tok")


def test_train_errors():
    with pytest.raises(ValueError, match="no text"):
        TextTokenizer.train(["", "  "])
    with pytest.raises(ValueError, match="too small for a 'bpe'"):
        TextTokenizer.train(PROSE, vocab_size=100, kind="bpe")
    with pytest.raises(KeyError, match="unknown text tokenizer kind 'sentencepiece'"):
        TextTokenizer.train(PROSE, kind="sentencepiece")


def test_bpe_learns_merges_and_never_needs_unk(bpe):
    ids = bpe.encode("The quick brown fox")
    assert len(ids) < len("The quick brown fox")  # merges were learned
    unseen = bpe.encode("Zebra ψ 𝔘 quokka")
    assert bpe.unk_id not in unseen


def test_join_words_spacing_rules():
    assert join_words(["is", "it", "(", "red", ")", "?", "yes", "."]) == "is it (red)? yes."
    assert join_words(["a", "-", "b"]) == "a - b"


# -- properties ----------------------------------------------------------------------------------
_punct = st.sampled_from(["?", ",", ".", "(", ")"])
_word = st.sampled_from(WORDS).map(lambda w: w.upper() if len(w) % 2 else w)
_space = st.sampled_from(["", " ", "  ", "\t"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(_word, _punct), _space), min_size=1, max_size=12))
def test_wordlevel_round_trip_property(word, pieces):
    # words need a separator or they fuse into one unknown word; punctuation does not
    text = "".join(tok + (sep or " ") for tok, sep in pieces)
    assume(any(c.isalpha() for c in text))
    ids = word.encode(text)
    assert word.unk_id not in ids
    assert word.decode(ids) == word.normalize(text)
    assert word.normalize(word.normalize(text)) == word.normalize(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=60))
def test_bpe_round_trip_property(bpe, text):
    assume(text.strip())
    ids = bpe.encode(text)
    assert bpe.decode(ids) == unicodedata.normalize("NFC", text)
    assert bpe.decode(bpe.encode(text, add_bos=True, add_eos=True)) == bpe.decode(ids)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=40))
def test_wordlevel_arbitrary_text_is_total(word, text):
    assume(text.strip())
    ids = word.encode(text)  # any text encodes; unseen words are <unk>
    assert all(0 <= i < word.vocab_size for i in ids)
    assert word.normalize(word.normalize(text)) == word.normalize(text)
