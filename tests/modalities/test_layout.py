"""A third modality through the registry: the shapes scene layout (unigen/modalities/layout.py)
gets a segment, an id range, positions, a legal-logit row and two tasks with no edit to the core."""

from __future__ import annotations

import json

import pytest
import torch

from unigen.data.shapes import GRID, Scene, ShapeObject, ShapesDataset
from unigen.diffusion.tasks import TASKS, TaskInputs
from unigen.diffusion.token_space import TokenSpace
from unigen.diffusion.vocab import IMAGE, STRUCTURE, TEXT, SequenceLayout, VocabLayout
from unigen.modalities import MODALITIES, ShapesLayout, build_modalities, layout_scores, modality_spec
from unigen.modalities.layout import malformed_cells
from unigen.modules.transformer import UnifiedTransformer
from unigen.tokenizers.text import TextTokenizer

@pytest.fixture(scope="module")
def space(layout_text_tokenizer_dir):
    tok = TextTokenizer.from_pretrained(layout_text_tokenizer_dir)
    layout = ShapesLayout()
    vocab = VocabLayout.from_tokenizers(tok, 125, {"layout": layout.codebook_size})
    seq = SequenceLayout(12, (4, 4), extra={"layout": layout.shape})
    return TokenSpace(tok, vocab, seq)


def scenes(n: int = 6) -> list[str]:
    data = ShapesDataset("train", num_samples=n, image_size=32)
    return [data[i]["scene"] for i in range(n)]


# -- the modality ------------------------------------------------------------------------------------
def test_layout_codes_round_trip_scenes():
    layout = ShapesLayout()
    raw = scenes(8)
    codes = layout.encode(raw)
    assert codes.shape == (8, GRID, 3 * GRID) and codes.dtype == torch.long
    assert int(codes.max()) < layout.codebook_size == 17
    for scene_json, scene, grid in zip(raw, layout.decode(codes), codes):
        want = {(o.row, o.col, o.shape, o.color, o.size) for o in Scene.from_json(scene_json).objects}
        assert {(o.row, o.col, o.shape, o.color, o.size) for o in scene.objects} == want
        assert int((grid != 0).sum()) == 3 * len(want)  # empty cells are three 0 slots
    assert torch.equal(layout.encode(layout.decode(codes)), codes)
    assert malformed_cells(codes).tolist() == [0] * 8


def test_layout_to_json_is_json_that_encode_reads_back():
    layout = ShapesLayout()
    codes = layout.encode(scenes(4))
    data = [layout.to_json(s) for s in layout.decode(codes)]
    assert torch.equal(layout.encode([json.dumps(d) for d in data]), codes)
    assert all(set(d) == {"objects"} for d in data)


def test_layout_describes_empty_scenes():
    layout = ShapesLayout()
    assert layout.describe([Scene([]), scenes(1)[0]])[0] == "an empty scene"


def test_modality_to_json_refuses_items_that_are_not_json():
    from unigen.modalities import Modality

    class Plain(Modality):
        codebook_size, shape = 4, (2,)

        def encode(self, raw):
            return torch.as_tensor(raw)

        def decode(self, codes):
            return [object() for _ in codes]

    assert Plain().to_json([1, 2]) == [1, 2]
    with pytest.raises(TypeError, match="Plain.decode gives object items.*override Modality.to_json"):
        Plain().to_json(object())


def test_layout_slots_factor_shape_color_and_size():
    layout = ShapesLayout()
    a = Scene([ShapeObject("circle", "red", "small", 0, 1)])
    b = Scene([ShapeObject("circle", "blue", "large", 0, 1)])
    c = Scene([ShapeObject("square", "red", "small", 0, 1)])
    codes = layout.encode([a, b.to_dict(), c.to_json()])  # Scene, dict and JSON all accepted
    cell = codes[:, 0, 3:6]  # (row 0, col 1): slots shape, color, size
    assert cell[0, 0] == cell[1, 0] != cell[2, 0]  # circle, circle, square
    assert cell[0, 1] == cell[2, 1] != cell[1, 1]  # red, blue, red
    assert cell[0, 2] == cell[2, 2] != cell[1, 2]  # small, large, small
    assert int(codes[:, :, :3].abs().sum()) == int(codes[:, 1:].abs().sum()) == 0


def test_malformed_cells_decode_as_empty_and_are_counted():
    layout = ShapesLayout()
    codes = layout.encode([Scene([ShapeObject("circle", "red", "small", 0, 0),
                                  ShapeObject("star", "blue", "large", 2, 2)])])
    broken = codes.clone()
    broken[0, 0, 1] = broken[0, 0, 0]  # a shape code in the color slot
    assert malformed_cells(broken).tolist() == [1]
    assert [o.shape for o in layout.decode(broken)[0].objects] == ["star"]
    assert layout_scores(broken, codes)["malformed"] == 1 / 9


def test_layout_bad_input_is_one_clear_error():
    layout = ShapesLayout()
    with pytest.raises(ValueError, match="layout: sample 1 is not a shapes scene") as err:
        layout.encode([scenes(1)[0], "{not json"])
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="takes a batch") as err:
        layout.encode(scenes(1)[0])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"layout codes must lie in \[0, 17\)") as err:
        layout.decode(torch.full((1, 3, 9), 17))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"must be \[B, 3, 9\]") as err:
        layout.decode(torch.zeros(1, 3, 3, dtype=torch.long))
    assert "\n" not in str(err.value)


def test_layout_scores_are_exact():
    layout = ShapesLayout()
    target = layout.encode([Scene([ShapeObject("circle", "red", "small", 0, 0),
                                   ShapeObject("star", "blue", "large", 1, 1)]),
                            Scene([ShapeObject("cross", "white", "small", 2, 2)])])
    pred = layout.encode([Scene([ShapeObject("circle", "red", "small", 0, 0),
                                 ShapeObject("star", "blue", "small", 1, 1)]),  # size wrong
                          Scene([ShapeObject("cross", "white", "small", 2, 2),
                                 ShapeObject("cross", "red", "small", 0, 0)])])  # one extra
    scores = layout_scores(pred, target)
    assert scores == {"cell_accuracy": 16 / 18, "object_recall": 2 / 3, "exact_match": 0.0,
                      "malformed": 0.0}
    assert layout_scores(target, target)["exact_match"] == 1.0


def test_modalities_are_built_by_name_and_saved_to_rebuild():
    built = build_modalities({"layout": {"kind": "shapes_layout"}})
    assert isinstance(built["layout"], ShapesLayout)
    spec = modality_spec(built)
    assert spec == {"layout": {"kind": "shapes_layout"}}
    assert isinstance(build_modalities(json.loads(json.dumps(spec)))["layout"], ShapesLayout)
    with pytest.raises(KeyError, match="unknown modality 'audio'.*shapes_layout"):
        build_modalities({"audio": {}})
    with pytest.raises(ValueError, match="modality .layout. \\(shapes_layout\\): ShapesLayout\\(\\) takes no arguments"):
        build_modalities({"layout": {"kind": "shapes_layout", "grid": 4}})
    assert "shapes_layout" in MODALITIES


# -- layouts with an extra segment -------------------------------------------------------------------
def test_vocabulary_appends_the_segment_after_the_image_codes(space):
    vocab = space.vocab
    assert vocab.total_size == vocab.text_size + 125 + 17
    assert vocab.offset("layout") == vocab.text_size + 125
    assert vocab.modality_id("layout") == 3 and vocab.num_modalities == 4
    bias = vocab.legal_bias()
    assert bias.shape == (4, vocab.total_size)
    legal = (bias == 0)
    assert legal[3].nonzero().squeeze(-1).tolist() == list(range(vocab.offset("layout"), vocab.total_size))
    assert not legal[IMAGE, vocab.offset("layout"):].any()  # no image position emits a layout code
    assert not legal[TEXT, vocab.text_size:].any()
    codes = torch.tensor([[0, 16]])
    assert torch.equal(vocab.vocab_to_codes("layout", vocab.codes_to_vocab("layout", codes)), codes)
    with pytest.raises(ValueError, match="cannot be decoded to layout codes"):
        vocab.vocab_to_codes("layout", torch.tensor([vocab.text_size]))
    assert VocabLayout(**vocab.to_dict()) == vocab


def test_configs_without_extra_segments_are_unchanged(space):
    plain = VocabLayout(space.vocab.text_size, 125, space.vocab.specials)
    assert "extra" not in plain.to_dict()
    assert "extra" not in SequenceLayout(12, (4, 4)).to_dict()
    assert plain.legal_bias().shape[0] == 3


def test_sequence_places_the_segment_after_eoi_with_its_own_grid(space):
    seq = space.sequence
    layout = seq.extra_segment("layout")
    assert layout == slice(seq.eoi_pos + 1, seq.eoi_pos + 28) and seq.length == layout.stop
    modality = seq.modality()
    assert (modality[layout] == 3).all() and modality[seq.eoi_pos] == STRUCTURE
    axes = seq.axes()
    cells = axes[layout]
    assert len({tuple(a) for a in cells.tolist()}) == 27  # a 2-D grid: every token its own pair
    assert torch.equal(cells[1] - cells[0], torch.tensor([0, 1]))  # next column
    assert torch.equal(cells[9] - cells[0], torch.tensor([1, 0]))  # next row
    assert int(cells.min()) > int(axes[seq.eoi_pos].max())  # after everything before it
    one_d = SequenceLayout(12, (4, 4), extra={"audio": (5,)})
    audio = one_d.axes()[one_d.extra_segment("audio")]
    assert torch.equal(audio[:, 0], audio[:, 1]) and audio[:, 0].diff().eq(1).all()
    assert SequenceLayout(**seq.to_dict()) == seq
    with pytest.raises(ValueError, match="extra segment names must be identifiers other than"):
        SequenceLayout(12, (4, 4), extra={"image": (3,)})
    with pytest.raises(ValueError, match=r"shape must be \(n,\) or \(h, w\)"):
        SequenceLayout(12, (4, 4), extra={"audio": (2, 2, 2)})


def test_segments_assemble_and_read_back(space):
    codes = ShapesLayout().encode(scenes(3))
    image = torch.randint(0, 125, (3, 4, 4))
    tokens = space.assemble("i2layout", None, image, segments={"layout": codes})
    assert torch.equal(space.segment_codes(tokens, "layout"), codes)
    assert torch.equal(space.image_codes(tokens), image)
    assert (tokens[:, space.sequence.text] == space.mask_id).all()  # an unused segment stays <mask>
    with pytest.raises(ValueError, match=r"layout codes must be \[3, 3, 9\]"):
        space.assemble("i2layout", None, image, segments={"layout": codes.flatten(1)})
    with pytest.raises(ValueError, match="no extra segment 'audio'"):
        space.assemble("i2layout", None, image, segments={"audio": codes})
    with pytest.raises(ValueError, match="unknown segment 'audio'"):
        space.segment_mask(1, "audio")


@pytest.mark.parametrize("task,target,given", [("layout2i", "image", "layout"),
                                               ("i2layout", "layout", "image"),
                                               ("t2layout", "layout", "text")])
def test_layout_tasks_mask_their_segments(space, task, target, given):
    codes = ShapesLayout().encode(scenes(4))
    inputs = TaskInputs(torch.randint(0, 125, (4, 4, 4)), captions=["a red circle"] * 4,
                        segments={"layout": codes})
    tb = TASKS.get(task)().build(inputs, space)
    seg = space.segment_mask
    assert torch.equal(tb.target, seg(4, target))
    assert torch.equal(tb.cond, seg(4, given))
    assert torch.equal(tb.prefix, seg(4, "structure", given))
    assert tb.tokens[0, 0] == space.task_token(task)
    for unused in {"text", "image", "layout"} - {target, given}:  # absent, not to be decoded
        assert not (tb.target & seg(4, unused)).any()
        assert (tb.tokens[seg(4, unused)] == space.pad_id).all()


def test_a_layout_task_without_layouts_names_itself(space):
    with pytest.raises(ValueError, match="task 'layout2i' needs layout codes in every sample"):
        TASKS.get("layout2i")().build(TaskInputs(torch.zeros(2, 4, 4, dtype=torch.long)), space)


@pytest.mark.parametrize("head", ["shared", "separate"])
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_transformer_restricts_layout_positions_to_layout_codes(space, head, position):
    torch.manual_seed(0)
    net = UnifiedTransformer(space.vocab, space.sequence, dim=32, depth=1, heads=4, head=head,
                             position=position)
    assert net.modality_emb.num_embeddings == 4
    tokens = space.assemble("i2layout", None, torch.randint(0, 125, (2, 4, 4)),
                            segments={"layout": ShapesLayout().encode(scenes(2))})
    logits = net(tokens)
    layout = space.sequence.extra_segment("layout")
    finite = torch.isfinite(logits[:, layout])
    start = space.vocab.offset("layout")
    assert finite[..., start:].all() and not finite[..., :start].any()
    image = torch.isfinite(logits[:, space.sequence.image])
    assert not image[..., start:].any()
    rebuilt = UnifiedTransformer.from_config(net.config)
    assert rebuilt.sequence == space.sequence and rebuilt.vocab == space.vocab


@pytest.mark.parametrize("task", ["t2i", "caption", "vqa", "joint", "text", "inpaint", "layout2i",
                                  "i2layout", "t2layout"])
def test_every_task_on_a_layout_model_keeps_structure_given_and_unused_layouts_absent(space, task):
    n = 3
    raw = scenes(n)
    inputs = TaskInputs(torch.randint(0, 125, (n, 4, 4)), captions=["a red circle"] * n,
                        questions=["what color is the circle"] * n, answers=["red"] * n,
                        segments={"layout": ShapesLayout().encode(raw)})
    tb = TASKS.get(task)().build(inputs, space, torch.Generator().manual_seed(0))
    structure = space.segment_mask(n, "structure")
    assert not (tb.target & structure).any() and (tb.prefix & structure).sum() == structure.sum()
    layout = space.sequence.extra_segment("layout")
    if "layout" not in (*getattr(TASKS.get(task), "given", ()), *getattr(TASKS.get(task), "predicted", ())):
        assert (tb.tokens[:, layout] == space.pad_id).all()  # a task that knows nothing of it
        assert not tb.target[:, layout].any()
