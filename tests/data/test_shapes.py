"""The shapes world: scenes, rendering, captions, questions, splits and the torch data set."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from unigen.data.shapes import (
    CAPTION_TEMPLATES, COLORS, HELDOUT_COLOR_SHAPE, HELDOUT_SHAPE_CELL, MAX_CAPTION_WORDS,
    PALETTE, PLURALS, SHAPES, SIZE_EXTENTS, WORD_PATTERN, ObjectSpec, Relation, Scene, SceneQuery,
    ShapeObject, ShapesDataset, ShapesWorld, caption, caption_queries, captions, corpus,
    description, description_query, qa_items, qa_pairs, render, render_array, sample_scene,
    shape_outline, vocabulary_words,
)


def scenes(split: str = "train", n: int = 200, seed: int = 0) -> list[Scene]:
    world = ShapesWorld(split, seed)
    return [world.scene(i) for i in range(n)]


@pytest.fixture(scope="module")
def mixed() -> Scene:
    # two red circles (one small), a blue square below-right of them, an orange star
    return Scene([
        ShapeObject("circle", "red", "large", 0, 0),
        ShapeObject("circle", "red", "small", 0, 2),
        ShapeObject("square", "blue", "large", 2, 1),
        ShapeObject("star", "orange", "small", 1, 0),
    ])


# -- scenes --------------------------------------------------------------------------------------
def test_scene_round_trips_through_json_and_dict():
    for s in scenes(n=50) + scenes("heldout", n=50):
        assert Scene.from_json(s.to_json()) == s
        assert Scene.from_dict(s.to_dict()) == s
        assert render_array(Scene.from_json(s.to_json())).tobytes() == render_array(s).tobytes()


@pytest.mark.parametrize("build, message", [
    (lambda: ShapeObject("hexagon", "red", "large", 0, 0), "shape"),
    (lambda: ShapeObject("circle", "purple", "large", 0, 0), "color"),
    (lambda: ShapeObject("circle", "red", "huge", 0, 0), "size"),
    (lambda: ShapeObject("circle", "red", "large", 3, 0), "row"),
    (lambda: ShapeObject("circle", "red", "large", True, 1), "row must be an integer cell index in 0..2, got True"),
    (lambda: ShapeObject("circle", "red", "large", 1, 1.0), "col must be an integer cell index in 0..2, got 1.0"),
    (lambda: Scene.from_dict({"objects": [{"shape": "circle", "color": "red", "size": "large",
                                           "row": 1, "col": False}]}), "col must be an integer"),
    (lambda: ShapeObject("circle", "red", "large", 0, 0, extent=0.45), "extent"),
    (lambda: ShapeObject("circle", "red", "small", 0, 0, dx=0.2), "jitter"),
    (lambda: Scene([ShapeObject("circle", "red", "large", 1, 1),
                    ShapeObject("star", "blue", "small", 1, 1)]), "one object per grid cell"),
    (lambda: Scene.from_json("{not json"), "not valid JSON"),
    (lambda: Scene.from_dict({"things": []}), "'objects' list"),
    (lambda: Scene.from_dict({"objects": [{"shape": "circle"}]}), "bad object"),
])
def test_bad_scenes_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_sampling_is_deterministic_and_seed_dependent():
    a = [s.to_json() for s in scenes(seed=3, n=30)]
    assert a == [s.to_json() for s in scenes(seed=3, n=30)]
    assert a != [s.to_json() for s in scenes(seed=4, n=30)]
    assert a != [s.to_json() for s in scenes("val", seed=3, n=30)]
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    assert sample_scene(rng_a).to_json() == sample_scene(rng_b).to_json()


def test_sampled_scenes_respect_the_world_rules():
    ss = scenes(n=400)
    counts = {len(s.objects) for s in ss}
    assert counts == {1, 2, 3, 4}
    objs = [o for s in ss for o in s.objects]
    assert {o.shape for o in objs} == set(SHAPES)
    assert {o.color for o in objs} == set(COLORS)
    assert {o.cell for o in objs} == {(r, c) for r in range(3) for c in range(3)}
    for o in objs:
        lo, hi = SIZE_EXTENTS[o.size]
        assert lo <= o.box_extent <= hi
    # repeated kinds are common enough to feed counting captions
    repeats = sum(len({(o.color, o.shape) for o in s.objects}) < len(s.objects) for s in ss)
    assert repeats > 40


def test_heldout_compositions_never_appear_in_train_or_val():
    for split in ("train", "val"):
        for s in scenes(split, n=1500):
            assert not any(o.is_heldout for o in s.objects)
    held = scenes("heldout", n=300)
    assert all(any(o.is_heldout for o in s.objects) for s in held)
    seen = {(o.color, o.shape) for s in held for o in s.objects}
    seen_cells = {(o.shape, o.cell) for s in held for o in s.objects}
    assert HELDOUT_COLOR_SHAPE <= seen and HELDOUT_SHAPE_CELL <= seen_cells
    # and the texts of train never name a held-out color-shape pair either
    text = " | ".join(corpus("train", 300))
    for color, shape in HELDOUT_COLOR_SHAPE:
        assert f"{color} {shape}" not in text and f"{color} {PLURALS[shape]}" not in text


# -- rendering -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_sizes_and_colors(size):
    s = Scene([ShapeObject("square", "orange", "large", 1, 1, extent=0.75),
               ShapeObject("circle", "cyan", "small", 0, 0)])
    arr = render_array(s, size)
    assert arr.shape == (size, size, 3) and arr.dtype == np.uint8
    assert render(s, size).size == (size, size) and render(s, size).mode == "RGB"
    assert arr[size // 2, size // 2].tolist() == list(PALETTE["orange"])
    assert arr[size // 6, size // 6].tolist() == list(PALETTE["cyan"])
    assert arr[0, -1].tolist() == [0, 0, 0]
    # a square of extent 0.75 covers (0.75 * cell)^2 pixels, antialiased edges included
    coverage = (arr.astype(float) @ np.array(PALETTE["orange"], float)
                / float(np.sum(np.square(PALETTE["orange"]))))
    centre = coverage[size // 3: 2 * size // 3, size // 3: 2 * size // 3]
    assert centre.sum() == pytest.approx((0.75 * size / 3) ** 2, rel=0.01)


def test_outlines_are_box_centred_with_unit_largest_side():
    for shape in SHAPES:
        p = shape_outline(shape)
        assert (p.max(0) - p.min(0)).max() == pytest.approx(1.0)
        assert (p.max(0) + p.min(0)) == pytest.approx(np.zeros(2), abs=1e-9)
    assert (shape_outline("triangle").max(0) - shape_outline("triangle").min(0)) == \
        pytest.approx([1.0, np.sqrt(3) / 2])


def test_render_rejects_tiny_images():
    with pytest.raises(ValueError, match="image size"):
        render_array(Scene(), 8)


# -- text ----------------------------------------------------------------------------------------
def test_noun_phrases_and_queries_write_the_grammar():
    assert ObjectSpec("circle", 2, "red").text() == "two red circles"
    assert ObjectSpec("star", 1, "orange").text() == "an orange star"
    assert ObjectSpec("cross", 3).text() == "three crosses"
    assert ObjectSpec("star", 1, "green", "small", (0, 0)).text() == \
        "a small green star in the top left"
    assert ObjectSpec("triangle", 1, "yellow", "large", (1, 1)).text() == \
        "a large yellow triangle in the center"
    q = SceneQuery((ObjectSpec("circle", 2, "red"), ObjectSpec("square", 1, "blue")),
                   (Relation(0, "above", 1),))
    assert q.text() == "two red circles above a blue square"
    assert q.text("an image of") == "an image of two red circles above a blue square"
    with pytest.raises(ValueError, match="count"):
        ObjectSpec("circle", 0)


def test_captions_are_clean_short_and_deterministic():
    for i, s in enumerate(scenes(n=300) + scenes("heldout", n=100)):
        caps = captions(s, np.random.default_rng(i))
        assert caps == captions(s, np.random.default_rng(i))
        for c in caps:
            assert c == c.lower() and c == " ".join(c.split()) and c.strip() == c
            assert WORD_PATTERN.findall(c) == c.split()  # words only, no punctuation
            assert 1 <= len(c.split()) <= MAX_CAPTION_WORDS
        # caption() draws its template after computing the same candidates
        assert caption(s, np.random.default_rng(i)) in caps


def test_every_template_is_used_and_captions_are_exact(mixed):
    used = set()
    for i, s in enumerate(scenes(n=300)):
        used |= set(caption_queries(s, np.random.default_rng(i)))
    assert used == set(CAPTION_TEMPLATES)
    queries = [caption_queries(mixed, np.random.default_rng(i)) for i in range(60)]
    texts = {name: {q[name].text() for q in queries if name in q} for name in CAPTION_TEMPLATES}
    assert texts["counting"] == {"two red circles", "two circles"}
    assert "a circle" not in texts["single"]  # two circles: "a circle" would be false
    assert "a star" in texts["single"] and "a blue square" in texts["single"]
    assert "a small orange star in the middle left" in texts["positions"]
    assert texts["list_shapes"] and all(
        sorted(t.split(" and ")) == ["a square", "a star", "two circles"]
        for t in texts["list_shapes"])
    assert "two red circles above a blue square" in texts["relation"]
    assert "an orange star below a red circle" not in texts["relation"]  # only one of them is
    for t in texts["list_all"]:
        assert "two red circles" in t or ("a large red circle" in t and "a small red circle" in t)


def test_description_states_every_object_in_reading_order(mixed):
    assert description(mixed) == (
        "a large red circle in the top left and a small red circle in the top right and a small "
        "orange star in the middle left and a large blue square in the bottom center")
    twins = Scene([ShapeObject("star", "cyan", "small", 2, 2),
                   ShapeObject("star", "cyan", "small", 1, 1)])
    assert description(twins) == ("a small cyan star in the center and a small cyan star in the "
                                  "bottom right")
    with pytest.raises(ValueError, match="empty scene"):
        description(Scene())


@pytest.mark.parametrize("split", ["train", "val", "heldout"])
def test_descriptions_are_exhaustive_true_and_parse(split):
    from unigen.data.checker import caption_attribute_recall, caption_fact_precision, parse_caption

    repeated = 0  # scenes with two objects of one size, color and shape: read as one list
    for s in scenes(split, n=500, seed=2):
        text = description(s)
        assert text == description(s) and text == " ".join(text.split())
        assert WORD_PATTERN.findall(text) == text.split()
        assert parse_caption(text) == description_query(s)
        assert len(description_query(s).groups) == len(s.objects)
        assert caption_attribute_recall(text, s) == 1.0, text
        assert caption_fact_precision(text, s) == 1.0, text
        kinds = [(o.size, o.color, o.shape) for o in s.objects]
        repeated += len(set(kinds)) < len(kinds)
    assert repeated > 50  # about a quarter of the scenes


def test_description_length_bound():
    # the longest description: 4 objects off the center, each "a small <color> <shape> in the
    # <row> <col>" (8 words), joined by 3 "and"; recipes size max_text_len for it
    four = Scene([ShapeObject("circle", "red", "small", r, c) for r, c in
                  [(0, 0), (0, 2), (2, 0), (2, 2)]])
    assert len(description(four).split()) == 35 > MAX_CAPTION_WORDS
    assert max(len(description(s).split()) for s in scenes(n=500)) <= 35


def test_qa_pairs_are_exact_and_unambiguous(mixed):
    pairs = set(qa_pairs(mixed))
    expected = {
        ("what color is the star?", "orange"),
        ("what color is the square?", "blue"),
        ("what color is the large circle?", "red"),
        ("what shape is the blue object?", "square"),
        ("where is the blue square?", "bottom center"),
        ("where is the orange star?", "middle left"),
        ("what size is the orange star?", "small"),
        ("how many objects are there?", "four"),
        ("how many circles are there?", "two"),
        ("how many red circles are there?", "two"),
        ("is there a red circle?", "yes"),
        ("is there an orange star?", "yes"),
        ("which shape is below the orange star?", "square"),
        ("which shape is to the right of the blue square?", "circle"),
    }
    assert expected <= pairs
    questions = {q for q, _ in pairs}
    # ambiguous questions are never asked: two circles, two red objects
    assert "what color is the circle?" not in questions
    assert "what shape is the red object?" not in questions
    assert "where is the red circle?" not in questions
    assert "which shape is to the left of the orange star?" not in questions  # nothing is
    assert "which shape is above the orange star?" not in questions  # both circles are
    assert "which shape is to the left of the blue square?" not in questions  # circle and star
    zeros = [q for q, a in pairs if a == "zero"]
    assert len(zeros) == 1 and zeros[0].split()[2] in {PLURALS[s] for s in SHAPES}
    negatives = [q for q, a in pairs if a == "no"]
    assert negatives and all(q.startswith("is there") for q in negatives)
    for q in negatives:  # a "no" question names a kind that is really absent
        color, shape = q.removesuffix("?").split()[-2:]
        assert not any(o.color == color and o.shape == shape for o in mixed.objects)
    for q, a in pairs:
        assert q.endswith("?") and q == q.lower() and 1 <= len(a.split()) <= 2


def test_qa_kinds_cover_all_question_types():
    kinds = {q.kind for s in scenes(n=200) for q in qa_items(s)}
    assert kinds == {"color", "shape", "size", "position", "count", "exists", "absent",
                     "relation"}


def test_vocabulary_covers_every_text():
    vocab = set(vocabulary_words())
    used = set()
    for split in ("train", "val", "heldout"):
        for text in corpus(split, 150, seed=1):
            used.update(WORD_PATTERN.findall(text))
    assert used <= vocab
    assert len(vocab - used) < 10  # the list is not padded with words the templates never use
    world = ShapesWorld("train", 1)  # a tokenizer trained on the corpus has seen descriptions
    assert {description(world.scene(i)) for i in range(5)} <= set(corpus("train", 5, seed=1))


# -- data set ------------------------------------------------------------------------------------
def test_dataset_items():
    ds = ShapesDataset("train", num_samples=20, image_size=32, seed=5)
    item = ds[7]
    assert set(item) == {"image", "caption", "description", "question", "answer", "scene", "index"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["index"] == 7
    scene = Scene.from_json(item["scene"])
    assert scene == ShapesWorld("train", 5).scene(7)
    assert torch.equal(item["image"], torch.from_numpy(render_array(scene, 32)).permute(2, 0, 1)
                       .float() / 255)
    assert (item["question"], item["answer"]) in qa_pairs(scene)
    assert item["caption"] in captions(scene, ShapesWorld("train", 5).rng(7, 1))
    assert item["description"] == description(scene)
    again = ShapesDataset("train", num_samples=20, image_size=32, seed=5)[7]
    assert torch.equal(item["image"], again["image"]) and item["caption"] == again["caption"]
    with pytest.raises(IndexError, match="^index 20 out of range for 20 samples$"):
        ds[20]


def test_dataset_task_text_and_validation():
    cap = ShapesDataset(num_samples=3, task_text="caption")[0]
    assert cap["caption"] and cap["description"] and cap["question"] == "" and cap["answer"] == ""
    qa = ShapesDataset(num_samples=3, task_text="qa")[0]
    assert qa["caption"] == qa["description"] == "" and qa["question"] and qa["answer"]
    with pytest.raises(ValueError, match="task_text"):
        ShapesDataset(task_text="poems")
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(split="test")
    with pytest.raises(ValueError, match="image size"):
        ShapesDataset(image_size=4)


def test_question_choice_balances_kinds():
    world = ShapesWorld("train", 0)
    kinds = [world.qa(i).kind for i in range(400)]
    answers = [world.qa(i).answer for i in range(400)]
    assert len(set(kinds)) == 8 and max(kinds.count(k) for k in set(kinds)) < 120
    assert 0.3 < answers.count("yes") / max(answers.count("yes") + answers.count("no"), 1) < 0.7
