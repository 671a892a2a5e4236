import pytest
import torch

from unigen.diffusion.vocab import IMAGE, STRUCTURE, TEXT, SequenceLayout, VocabLayout
from unigen.tokenizers.text import SPECIAL_TOKENS

SPECIALS = {t: i for i, t in enumerate(SPECIAL_TOKENS)}


def test_image_codes_round_trip_through_vocab_ids():
    v = VocabLayout(text_size=100, image_size=64, specials=SPECIALS)
    codes = torch.randint(0, 64, (3, 4, 4))
    ids = v.image_to_vocab(codes)
    assert int(ids.min()) >= 100 and int(ids.max()) < v.total_size
    assert torch.equal(v.vocab_to_image(ids), codes)
    with pytest.raises(ValueError, match="image code range"):
        v.vocab_to_image(torch.tensor([5]))


def test_legal_bias_restricts_each_modality():
    v = VocabLayout(text_size=100, image_size=64, specials=SPECIALS)
    bias = v.legal_bias()
    assert torch.isinf(bias[TEXT, 100:]).all() and torch.isinf(bias[IMAGE, :100]).all()
    assert (bias[IMAGE, 100:] == 0).all()
    assert torch.isinf(bias[TEXT, SPECIALS["<mask>"]]) and torch.isinf(bias[TEXT, SPECIALS["<t2i>"]])
    assert bias[TEXT, SPECIALS["<eos>"]] == 0 and bias[TEXT, SPECIALS["<pad>"]] == 0
    assert bias[TEXT, 50] == 0 and torch.isfinite(bias[STRUCTURE]).all()


def test_layout_validation_errors():
    with pytest.raises(ValueError, match="missing special"):
        VocabLayout(10, 5, {"<pad>": 0})
    with pytest.raises(ValueError, match="outside the text vocabulary"):
        VocabLayout(5, 5, {**SPECIALS})


def test_sequence_layout_positions():
    s = SequenceLayout(max_text_len=6, grid=(3, 4))
    assert s.length == 2 + 6 + 1 + 12 + 1
    mod = s.modality()
    assert (mod[s.text] == TEXT).all() and (mod[s.image] == IMAGE).all()
    assert (mod == STRUCTURE).sum() == 4
    axes = s.grid_axes()[s.image]
    assert axes[:, 0].max() == 2 and axes[:, 1].max() == 3
    rope = s.axes()
    assert len(set(map(tuple, rope.tolist()))) == s.length  # every position distinct
    assert SequenceLayout(**s.to_dict()) == s


def test_question_slot_splits_the_text_segment_and_round_trips():
    s = SequenceLayout(max_text_len=10, grid=(2, 2), question_slot=4)
    assert (s.question.start, s.question.stop) == (s.text.start, s.text.start + 4)
    assert (s.after_question.start, s.after_question.stop) == (s.text.start + 4, s.text.stop)
    assert s.length == SequenceLayout(10, (2, 2)).length  # the slot moves nothing
    assert SequenceLayout(**s.to_dict()) == s and s.to_dict()["question_slot"] == 4
    plain = SequenceLayout(10, (2, 2))
    assert "question_slot" not in plain.to_dict()  # configs saved before the slot stay equal
    assert plain.question.stop == plain.question.start and plain.after_question == plain.text
    for bad in (1, 9, 10):
        with pytest.raises(ValueError, match="question_slot"):
            SequenceLayout(10, (2, 2), question_slot=bad)


def test_answer_len_is_checked_and_round_trips():
    s = SequenceLayout(max_text_len=10, grid=(2, 2), question_slot=4, answer_len=3)
    assert SequenceLayout(**s.to_dict()) == s and s.to_dict()["answer_len"] == 3
    assert "answer_len" not in SequenceLayout(10, (2, 2)).to_dict()  # older configs stay equal
    for bad in (1, 5):  # a word + <eos> at least; 4 + 5 > 10 - 2
        with pytest.raises(ValueError, match="answer_len must be 0 or in"):
            SequenceLayout(10, (2, 2), question_slot=4, answer_len=bad)
