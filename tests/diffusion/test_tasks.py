import pytest
import torch

from unigen.diffusion.masking import drop_condition, mask_targets, sample_times
from unigen.diffusion.tasks import TASKS, TaskInputs, TaskMixture
from unigen.diffusion.token_space import TokenSpace
from unigen.diffusion.vocab import SequenceLayout, VocabLayout
from unigen.tokenizers.text import TextTokenizer


@pytest.fixture(scope="module")
def space(text_tokenizer_dir):
    tok = TextTokenizer.from_pretrained(text_tokenizer_dir)
    return TokenSpace(tok, VocabLayout.from_tokenizers(tok, 125), SequenceLayout(24, (4, 4)))


def inputs(n=4):
    return TaskInputs(torch.randint(0, 125, (n, 4, 4)), ["a red circle"] * n,
                      ["what color is the circle?"] * n, ["red"] * n)


def test_t2i_targets_the_image_and_conditions_on_text(space):
    tb = TASKS.get("t2i")().build(inputs(), space)
    seq = space.sequence
    assert tb.target[:, seq.image].all() and not tb.target[:, seq.text].any()
    assert tb.cond[:, seq.text].all() and not tb.cond[:, seq.image].any()
    assert tb.prefix[:, seq.text].all() and not tb.prefix[:, seq.image].any()
    assert space.decode_text(tb.tokens) == ["a red circle"] * 4


def test_vqa_targets_only_the_answer(space):
    tb = TASKS.get("vqa")().build(inputs(2), space)
    text = tb.tokens[0, space.sequence.text]
    sep = (text == space.sep_id).nonzero().item()
    tgt = tb.target[0, space.sequence.text]
    assert not tgt[: sep + 1].any() and tgt[sep + 1:].all()
    assert space.decode_answers(tb.tokens) == ["red", "red"]
    assert not tb.target[:, space.sequence.image].any() and tb.prefix[:, space.sequence.image].all()


def test_caption_joint_text_inpaint_masks(space):
    seq = space.sequence
    cap = TASKS.get("caption")().build(inputs(), space)
    assert cap.target[:, seq.text].all() and not cap.target[:, seq.image].any()
    joint = TASKS.get("joint")().build(inputs(), space)
    assert joint.target[:, seq.text].all() and joint.target[:, seq.image].all() and not joint.cond.any()
    text = TASKS.get("text")().build(TaskInputs(None, ["a red circle"]), space)
    assert (text.tokens[:, seq.image] == space.mask_id).all() and not text.target[:, seq.image].any()
    g = torch.Generator().manual_seed(0)
    inp = TASKS.get("inpaint")(0.25, 0.5).build(inputs(), space, g)
    region = inp.target[:, seq.image]
    assert region.any(dim=1).all() and not region.all(dim=1).any()
    assert not inp.target[:, seq.text].any()


def test_structure_positions_are_never_targets(space):
    for name in TASKS.names():
        cls = TASKS.get(name)
        if (set(getattr(cls, "given", ())) | set(getattr(cls, "predicted", ()))) - {"text", "image"}:
            continue  # a further modality's task (tests/modalities covers them with their segment)
        tb = TASKS.get(name)().build(inputs(), space, torch.Generator().manual_seed(1))
        structure = space.segment_mask(len(tb.tokens), "structure")
        assert not (tb.target & structure).any(), name
        assert (tb.prefix & structure).sum() == structure.sum(), name


def test_empty_and_too_long_text_are_clear_errors(space):
    with pytest.raises(ValueError, match="empty caption"):
        TASKS.get("t2i")().build(TaskInputs(torch.zeros(1, 4, 4, dtype=torch.long), [" "]), space)
    with pytest.raises(ValueError, match="text too long"):
        TASKS.get("t2i")().build(TaskInputs(torch.zeros(1, 4, 4, dtype=torch.long),
                                            ["red " * 40]), space)
    with pytest.raises(ValueError, match="needs a question"):
        TASKS.get("vqa")().build(TaskInputs(torch.zeros(1, 4, 4, dtype=torch.long), ["x"]), space)
    # data without questions (an image folder of captions) names the task that asked for them
    codes = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="task 'vqa' needs a question in every sample, and this batch has none.*leave "
                                         "'vqa' out of the model's tasks"):
        TASKS.get("vqa")().build(TaskInputs(codes, ["x", "y"], ["", ""], ["", ""]), space)


@pytest.fixture(scope="module")
def described():
    """Shapes items: template captions and exhaustive descriptions (up to 35 words)."""
    from unigen.data.shapes import ShapesDataset

    ds = ShapesDataset("train", 6, 32, seed=0)
    items = [ds[i] for i in range(6)]
    return TaskInputs(torch.randint(0, 125, (6, 4, 4)), [x["caption"] for x in items],
                      [x["question"] for x in items], [x["answer"] for x in items],
                      [x["description"] for x in items])


@pytest.fixture(scope="module")
def long_space(space):
    return TokenSpace(space.text_tokenizer, space.vocab, SequenceLayout(40, (4, 4)))


@pytest.mark.parametrize("name", ["caption", "joint", "inpaint"])
def test_caption_tasks_can_train_on_descriptions(name, described, long_space):
    assert described.descriptions != described.captions
    text = long_space.sequence.text
    tb = TASKS.get(name)(text="descriptions").build(described, long_space,
                                                    torch.Generator().manual_seed(0))
    assert torch.equal(tb.tokens[:, text], long_space.encode_captions(described.descriptions))
    plain = TASKS.get(name)().build(described, long_space, torch.Generator().manual_seed(0))
    assert torch.equal(plain.tokens[:, text], long_space.encode_captions(described.captions))


def test_mixture_routes_descriptions_to_captioning_only(described, long_space):
    mix = TaskMixture({"t2i": 1.0, "caption": 1.0, "vqa": 1.0},
                      {"caption": {"text": "descriptions"}})
    tb, assignment = mix.build(described, long_space, torch.Generator().manual_seed(3))
    text = tb.tokens[:, long_space.sequence.text]
    captions = long_space.encode_captions(described.captions)
    descriptions = long_space.encode_captions(described.descriptions)
    assert set(assignment.tolist()) == {0, 1, 2}
    for row, task in enumerate(assignment.tolist()):
        if task == 0:  # t2i keeps the varied template caption as its prompt
            assert torch.equal(text[row], captions[row])
        elif task == 1:
            assert torch.equal(text[row], descriptions[row])
    assert described.select([4, 1]).descriptions == [described.descriptions[i] for i in (4, 1)]


def test_description_text_errors(described, space):
    codes = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="task 'caption' needs a description in every sample"):
        TASKS.get("caption")(text="descriptions").build(TaskInputs(codes, ["a red circle"]), space)
    with pytest.raises(ValueError, match=r"unknown text 'poems'; expected one of \['captions', "
                                         r"'descriptions'\]"):
        TASKS.get("caption")(text="poems")
    with pytest.raises(ValueError, match="unknown text"):
        TaskMixture({"inpaint": 1.0}, {"inpaint": {"text": "description"}})
    longest = max(described.descriptions, key=lambda d: len(d.split()))
    assert len(longest.split()) + 1 > space.sequence.max_text_len  # 24: a description overflows
    with pytest.raises(ValueError, match="text too long"):  # a clear error, never a silent cut
        TASKS.get("caption")(text="descriptions").build(
            TaskInputs(codes, ["a red circle"], descriptions=[longest]), space)


def test_mixture_assigns_tasks_by_ratio_reproducibly(space):
    mix = TaskMixture({"t2i": 3.0, "caption": 1.0})
    a = mix.assign(4000, torch.Generator().manual_seed(0))
    assert abs((a == 0).float().mean().item() - 0.75) < 0.03
    assert torch.equal(a, mix.assign(4000, torch.Generator().manual_seed(0)))
    tb, assignment = mix.build(inputs(8), space, torch.Generator().manual_seed(3))
    seq = space.sequence
    for row, task in enumerate(assignment.tolist()):
        assert bool(tb.target[row, seq.image].all()) == (task == 0)
    with pytest.raises(ValueError, match="ratios"):
        TaskMixture({"t2i": -1.0})


def test_mask_targets_exact_counts_and_only_targets():
    target = torch.zeros(3, 20, dtype=torch.bool)
    target[:, 5:15] = True
    target[2, 5:] = False  # a row with no targets at all
    masked = mask_targets(target, torch.tensor([0.3, 1.0, 0.5]), torch.Generator().manual_seed(0))
    assert masked.sum(1).tolist() == [3, 10, 0]
    assert not (masked & ~target).any()


def test_complementary_masks_cover_every_target_once():
    target = torch.rand(4, 50, generator=torch.Generator().manual_seed(0)) < 0.6
    masked = mask_targets(target, torch.tensor([0.2, 0.5, 0.7, 0.9]), torch.Generator().manual_seed(1))
    comp = target & ~masked
    assert torch.equal((masked.int() + comp.int())[target], torch.ones(int(target.sum()), dtype=torch.int))
    assert not (masked & comp).any()


def test_condition_dropout_rate_and_effect():
    tokens = torch.arange(10).repeat(4000, 1)
    cond = torch.zeros(4000, 10, dtype=torch.bool)
    cond[:, :3] = True
    out, dropped = drop_condition(tokens, cond, 0.1, 99, torch.Generator().manual_seed(0))
    assert abs(dropped.float().mean().item() - 0.1) < 0.02
    assert (out[dropped][:, :3] == 99).all() and torch.equal(out[~dropped], tokens[~dropped])
    assert torch.equal(out[:, 3:], tokens[:, 3:])


def test_stratified_times_cover_the_interval():
    t = sample_times(8, torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() <= 1
    gaps = t.sort().values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, (1 - 1e-3) / 8), atol=1e-5)


QUESTIONS = ["what color is the circle?", "how many objects are there?"]


def vqa_batch(space, **layout):
    """A TokenSpace with the given layout options and a VQA batch of two questions built in it."""
    laid_out = TokenSpace(space.text_tokenizer, space.vocab, SequenceLayout(24, (4, 4), **layout))
    tb = TASKS.get("vqa")().build(TaskInputs(torch.randint(0, 125, (2, 4, 4)), None, QUESTIONS,
                                             ["red", "two"]), laid_out)
    return laid_out, tb


def test_question_slot_puts_every_question_in_one_cacheable_prefix(space):
    slotted, tb = vqa_batch(space, question_slot=10)
    seq = slotted.sequence
    questions = QUESTIONS
    # every row: image + question slot + structure is the prefix, the rest of the text the target
    assert (tb.prefix == tb.prefix[:1]).all()
    assert tb.prefix[:, seq.image].all() and tb.prefix[:, seq.question].all()
    assert not tb.prefix[:, seq.after_question].any()
    assert tb.target[:, seq.after_question].all() and not tb.target[:, seq.question].any()
    assert not (tb.prefix & tb.target).any()
    assert slotted.decode_answers(tb.tokens) == ["red", "two"]
    # the question sits at the start of the slot, padded after its <sep>
    row = tb.tokens[0, seq.question].tolist()
    assert row.index(slotted.sep_id) == len(slotted.text_tokenizer.encode(questions[0]))
    assert set(row[row.index(slotted.sep_id) + 1:]) == {slotted.pad_id}
    # without a slot the prefix is the image alone (the question's end differs between rows)
    plain = TASKS.get("vqa")().build(TaskInputs(tb.tokens.new_zeros(2, 4, 4), None, questions,
                                                ["red", "two"]), space)
    assert not plain.prefix[:, space.sequence.text].any()
    with pytest.raises(ValueError, match="question too long: .* > question_slot 10"):
        slotted.encode_questions(["which shape is to the left of the small red circle?"])


def test_answer_len_limits_the_vqa_targets_and_gives_the_padding(space):
    short, tb = vqa_batch(space, answer_len=3)
    seq = short.sequence
    questions = QUESTIONS
    text_target = tb.target[:, seq.text]
    for row, q in enumerate(questions):
        start = len(short.text_tokenizer.encode(q)) + 1  # question + <sep>
        assert text_target[row].nonzero().squeeze(-1).tolist() == [start, start + 1, start + 2]
        after = tb.tokens[row, seq.text][start + 3:]
        assert set(after.tolist()) == {short.pad_id}  # given, not predicted
    assert short.decode_answers(tb.tokens) == ["red", "two"]
    # without a limit every position after the question is a target (mostly padding to predict)
    full = TASKS.get("vqa")().build(TaskInputs(tb.tokens.new_zeros(2, 4, 4), None, questions,
                                               ["red", "two"]), space)
    assert int(full.target.sum()) > int(tb.target.sum()) == 6
    with pytest.raises(ValueError, match="answer too long: 2 tokens \\+ <eos> > answer_len 2"):
        TokenSpace(space.text_tokenizer, space.vocab, SequenceLayout(24, (4, 4), answer_len=2)
                   ).encode_questions(["where is the circle?"], ["top left"])
    cramped = TokenSpace(space.text_tokenizer, space.vocab, SequenceLayout(8, (4, 4), answer_len=3))
    with pytest.raises(ValueError, match="leave fewer than answer_len 3 of the 8 text positions"):
        cramped.encode_questions(["how many objects are there?"])


def test_inpaint_uses_the_given_regions_and_draws_nothing(space):
    seq = space.sequence
    regions = torch.zeros(2, 4, 4, dtype=torch.bool)
    regions[0, 1:3, 1:3] = True
    regions[1, 0] = True
    codes = torch.randint(0, 125, (2, 4, 4))
    state = torch.get_rng_state()
    tb = TASKS.get("inpaint")().build(TaskInputs(codes, ["a red circle"] * 2, regions=regions), space)
    assert torch.equal(torch.get_rng_state(), state)  # no draw, from the global RNG or any other
    assert torch.equal(tb.target[:, seq.image], regions.flatten(1)) and not tb.target[:, seq.text].any()
    assert torch.equal(TaskInputs(None, ["a", "b"], regions=regions).select([1]).regions, regions[1:])
    with pytest.raises(ValueError, match="regions must be a bool tensor \\[2, 4, 4\\]"):
        TASKS.get("inpaint")().build(TaskInputs(torch.zeros(2, 4, 4, dtype=torch.long), ["a"] * 2,
                                                regions=regions.float()), space)


def test_a_question_must_leave_room_for_a_word_and_eos(space):
    # 24 text positions; "red" x n + <sep> leaves 23 - n
    ids, _ = space.encode_questions([" ".join(["red"] * 21)])
    assert ids.shape == (1, 24)
    for n, left in ((22, 1), (23, 0), (30, 0)):
        with pytest.raises(ValueError, match=f"question leaves no room for an answer: {n} tokens "
                                             f"\\+ <sep> leave {left} of the 24 text positions"):
            space.encode_questions([" ".join(["red"] * n)])


def test_blanks_are_one_mask_token_each_between_the_given_words(space):
    rows, blanks = space.encode_blanks(["a _ circle above _ _", "_ red square"])
    tok = space.text_tokenizer
    a, circle, above = (tok.encode(w)[0] for w in ("a", "circle", "above"))
    m, eos, pad = space.mask_id, space.eos_id, space.pad_id
    assert rows[0, :7].tolist() == [a, m, circle, above, m, m, eos] and rows[0, 7:].eq(pad).all()
    assert blanks[0].nonzero().squeeze(-1).tolist() == [1, 4, 5]
    assert rows[1, 0] == m and blanks[1].nonzero().squeeze(-1).tolist() == [0]
    # a blank stuck to other characters is text, not a blank
    assert not space.encode_blanks(["a_b circle"])[1].any()


def test_the_given_words_keep_the_tokens_of_the_whole_caption_under_byte_level_bpe():
    from unigen.diffusion.token_space import TokenSpace
    from unigen.diffusion.vocab import SequenceLayout, VocabLayout
    from unigen.tokenizers.text import TextTokenizer

    texts = ["a red circle above a blue square", "two green triangles left of a star"] * 50
    tok = TextTokenizer.train(texts, vocab_size=300, kind="bpe")
    bpe = TokenSpace(tok, VocabLayout.from_tokenizers(tok, 16), SequenceLayout(16, (2, 2)))
    whole = tok.encode("a red circle above a blue square")
    rest = tok.encode("a red")
    tail = whole[len(rest):]  # " circle above a blue square" as the whole caption spells it
    assert tok.id_to_token(tail[0]).startswith("\u0120")  # byte-level BPE: the space is in the token
    rows, blanks = bpe.encode_blanks(["a _ circle above a blue square"])
    given = [i for i in rows[0][~blanks[0]].tolist() if i != bpe.pad_id]
    assert given == tok.encode("a") + tail + [bpe.eos_id]


def test_infill_targets_the_blanks_and_with_a_region_the_region_too(space):
    seq = space.sequence
    codes = torch.randint(0, 125, (2, 4, 4))
    tb = TASKS.get("infill")().build(TaskInputs(codes, ["a _ circle", "a red _"]), space)
    assert tb.target[:, seq.text].sum(-1).tolist() == [1, 1] and not tb.target[:, seq.image].any()
    assert tb.tokens[0, seq.task_pos] == space.task_token("caption")  # a task the model knows
    assert tb.prefix[:, seq.image].all() and tb.cond[:, seq.image].all()
    assert not (tb.cond & tb.target).any()
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[:, :2] = True
    joint = TASKS.get("infill")().build(TaskInputs(codes, ["a _ circle"] * 2, regions=region), space)
    assert joint.tokens[0, seq.task_pos] == space.task_token("joint")
    assert torch.equal(joint.target[:, seq.image], region.flatten(1))
    assert not joint.prefix[:, seq.image].any()  # the image is redrawn: no cacheable prefix


def test_infill_training_masks_a_random_span_of_clean_tokens(space):
    seq = space.sequence
    captions = ["a big red circle above a small blue square"] * 8
    g = torch.Generator().manual_seed(0)
    tb = TASKS.get("infill")(min_frac=0.2, max_frac=0.5).build(
        TaskInputs(torch.randint(0, 125, (8, 4, 4)), captions), space, g)
    text = tb.target[:, seq.text]
    assert not (tb.tokens[:, seq.text] == space.mask_id).any()  # the loss has true tokens
    words = len(space.text_tokenizer.encode(captions[0]))
    for row in text:
        picked = row.nonzero().squeeze(-1)
        assert 0.2 * words <= len(picked) <= 0.5 * words + 1 and int(picked.max()) < words
        assert picked.tolist() == list(range(int(picked[0]), int(picked[-1]) + 1))  # one span
    assert len({tuple(r.nonzero().squeeze(-1).tolist()) for r in text}) > 1  # drawn per row
    with pytest.raises(ValueError, match="no true token to learn"):
        TASKS.get("infill")().build(TaskInputs(torch.randint(0, 125, (1, 4, 4)), ["a _ circle"]),
                                    space, g)
