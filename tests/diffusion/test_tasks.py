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
