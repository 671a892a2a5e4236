"""The pixel checker: detection on renders, rejection of mismatched scenes, caption parsing and
caption metrics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from unigen.data.checker import (
    caption_attribute_recall, caption_fact_precision, caption_scores, check,
    check_scene, connected_components, detect, evaluate_query, fit_shape, parse_caption,
    prompt_category, scene_detections, segment_colors,
)
from unigen.data.shapes import (
    ALL_CELLS, COLORS, PALETTE, SHAPES, SIZE_EXTENTS, ObjectSpec, Relation, Scene, SceneQuery, ShapeObject,
    ShapesWorld, caption_queries, captions, polygon_coverage, render, render_array,
    render_tensor, sample_scene, shape_outline,
)


def random_scenes(n: int, seed: int, split: str = "train") -> list[Scene]:
    return [sample_scene(np.random.default_rng([seed, i]), split) for i in range(n)]


def all_large(scene: Scene) -> Scene:
    return Scene([replace(o, size="large", extent=None) for o in scene.objects])


# -- detection on clean renders ------------------------------------------------------------------
def test_detects_a_known_scene_exactly():
    scene = Scene([ShapeObject("star", "green", "small", 0, 0),
                   ShapeObject("square", "orange", "large", 1, 2, extent=0.75)])
    dets = detect(render(scene, 64))
    assert [(d.shape, d.color, d.size, d.row, d.col) for d in dets] == [
        ("star", "green", "small", 0, 0), ("square", "orange", "large", 1, 2)]
    square = dets[1]
    side = 0.75 * 64 / 3  # 16 px, centred at (53.33, 32)
    assert square.bbox == (45, 24, 61, 40)
    assert square.area == pytest.approx(side**2, abs=1)
    assert square.shape_score > 0.97
    assert detect(np.zeros((64, 64, 3), np.uint8)) == []


def test_agrees_with_clean_renders_at_64():
    scenes = random_scenes(300, seed=1) + random_scenes(60, seed=1, split="heldout")
    results = [check(render(s, 64), s) for s in scenes]
    agreement = np.mean([r.correct for r in results])
    assert agreement >= 0.99
    expected = {"count", "object_present", "shape", "color", "size", "position"}
    assert all(r.category == "scene" and set(r.attributes) == expected for r in results)


@pytest.mark.parametrize("size, n", [(32, 150), (128, 40)])
def test_agrees_with_large_objects_at_other_sizes(size, n):
    scenes = [all_large(s) for s in random_scenes(n, seed=size)]
    agreement = np.mean([check(render(s, size), s).correct for s in scenes])
    assert agreement >= 0.99


def test_image_formats_give_the_same_detections():
    scene = random_scenes(1, seed=5)[0]
    arr = render_array(scene, 64)
    expected = detect(arr)
    assert detect(Image.fromarray(arr)) == expected
    assert detect(render_tensor(scene, 64)) == expected
    with pytest.raises(ValueError, match="RGB"):
        detect(Image.fromarray(arr).convert("L"))
    with pytest.raises(ValueError, match="uint8"):
        detect(arr.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        detect(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="square"):
        detect(np.zeros((64, 48, 3), np.uint8))
    with pytest.raises(TypeError, match="PIL image"):
        detect([[0, 0, 0]])


@pytest.mark.parametrize("noise, blur", [(12.0, 0.0), (0.0, 1.2), (8.0, 1.0)])
def test_robust_to_noise_and_blur(noise, blur):
    # generated images are noisy and decoders soften edges
    rng = np.random.default_rng(0)
    scenes = random_scenes(40, seed=9)
    ok = 0
    for s in scenes:
        image = render(s, 64).filter(ImageFilter.GaussianBlur(blur)) if blur else render(s, 64)
        noisy = np.asarray(image, dtype=float) + rng.normal(0, noise, (64, 64, 3))
        ok += check(np.clip(noisy, 0, 255).round().astype(np.uint8), s).correct
    assert ok / len(scenes) >= 0.95


# -- rejecting mismatched scenes -----------------------------------------------------------------
def _mutate(scene: Scene, attribute: str, rng: np.random.Generator) -> Scene | None:
    objs = list(scene.objects)
    k = int(rng.integers(len(objs)))
    o = objs[k]
    if attribute == "color":
        objs[k] = replace(o, color=str(rng.choice([c for c in COLORS if c != o.color])))
    elif attribute == "shape":
        objs[k] = replace(o, shape=str(rng.choice([s for s in SHAPES if s != o.shape])))
    elif attribute == "size":
        objs[k] = replace(o, size="small" if o.size == "large" else "large", extent=None)
    elif attribute == "position":
        free = [c for c in ALL_CELLS if c not in {x.cell for x in objs}]
        row, col = free[rng.integers(len(free))]
        objs[k] = replace(o, row=row, col=col)
    elif attribute == "count":
        if len(objs) > 1 and rng.random() < 0.5:
            del objs[k]
        else:
            free = [c for c in ALL_CELLS if c not in {x.cell for x in objs}]
            row, col = free[rng.integers(len(free))]
            objs.append(ShapeObject(o.shape, o.color, o.size, row, col))
    return Scene(objs)


@pytest.mark.parametrize("attribute", ["color", "shape", "size", "position", "count"])
def test_rejects_mismatched_scenes(attribute):
    rng = np.random.default_rng(len(attribute))
    scenes = random_scenes(80, seed=len(attribute) + 100)
    flagged = 0
    for s in scenes:
        detections = detect(render(s, 64))
        result = check_scene(None, _mutate(s, attribute, rng), detections=detections)
        flagged += not result.attributes[attribute] and not result.correct
    assert flagged / len(scenes) >= 0.95


def test_check_scene_matches_objects_by_attributes_not_order():
    a = ShapeObject("circle", "red", "large", 0, 0)
    b = ShapeObject("circle", "blue", "large", 2, 2)
    image = render(Scene([a, b]))
    assert check(image, Scene([b, a])).correct
    recolored = check(image, Scene([replace(a, color="blue"), b]))
    assert recolored.attributes == {"count": True, "object_present": True, "shape": True,
                                    "color": False, "size": True, "position": True}


# -- building blocks -----------------------------------------------------------------------------
def test_connected_components_split_by_color_and_gap():
    labels = np.array([[0, 0, -1, 0],
                       [1, 0, -1, 0],
                       [1, 1, -1, -1],
                       [-1, 0, 0, 0]])
    comps = connected_components(labels)
    assert comps[0, 0] == comps[0, 1] == comps[1, 1]
    assert comps[1, 0] == comps[2, 0] == comps[2, 1]
    assert comps[0, 3] == comps[1, 3]
    assert comps[3, 1] == comps[3, 2] == comps[3, 3]
    assert len({comps[0, 0], comps[1, 0], comps[0, 3], comps[3, 1]}) == 4
    assert (comps[labels < 0] == -1).all() and comps.max() == 3
    spiral = np.zeros((9, 9), int) - 1
    spiral[0, :] = spiral[:, 8] = spiral[8, :] = spiral[2:, 0] = spiral[2, :7] = 5
    assert set(np.unique(connected_components(spiral))) == {-1, 0}


def test_segment_colors_uses_coverage_on_the_color_line():
    pixels = np.array([[[255, 128, 0], [128, 64, 0], [100, 50, 0], [107, 107, 0],
                        [128, 128, 128], [200, 40, 120]]], dtype=np.uint8)
    labels = segment_colors(pixels)[0].tolist()
    orange, white = COLORS.index("orange"), COLORS.index("white")
    # full orange, half-covered orange, faint orange, faint yellow (not orange!), half white, junk
    assert labels == [orange, orange, -1, -1, white, -1]


@pytest.mark.parametrize("shape", SHAPES)
def test_fit_shape_recovers_an_eight_pixel_shape(shape):
    centre = np.array([7.3, 6.8])
    alpha = polygon_coverage(shape_outline(shape) * 8.0 + centre, 14, 15)
    fit = fit_shape(alpha)
    assert fit.shape == shape and fit.score > 0.95
    assert fit.extent == pytest.approx(8.0, abs=0.1)
    assert (fit.cx, fit.cy) == pytest.approx(tuple(centre), abs=0.1)


# -- captions: parsing and checking --------------------------------------------------------------
def test_parse_examples():
    q = parse_caption("an image of two red circles above a blue square")
    assert q == SceneQuery((ObjectSpec("circle", 2, "red"), ObjectSpec("square", 1, "blue")),
                           (Relation(0, "above", 1),))
    q = parse_caption("a small green star in the top left and a large yellow triangle in the "
                      "center")
    assert q.groups == (ObjectSpec("star", 1, "green", "small", (0, 0)),
                        ObjectSpec("triangle", 1, "yellow", "large", (1, 1)))
    assert parse_caption("three magenta diamonds").groups == (ObjectSpec("diamond", 3, "magenta"),)
    assert parse_caption("A red circle.") == parse_caption("a red circle")
    assert parse_caption("a star to the right of an orange cross").relations == (
        Relation(0, "to the right of", 1),)


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("two red circle", "plural shape noun"),
    ("a red circles", "singular shape noun"),
    ("a purple circle", "shape noun"),
    ("red circle", "'a', 'an' or a number word"),
    ("a red circle and", "'a', 'an' or a number word"),
    ("a red circle in the middle center", "position"),
    ("a red circle near a blue square", "'and', a relation or the end"),
    ("a red circle above a blue square and a star", "the end of the caption"),
])
def test_parse_rejects_bad_captions(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_caption(text)


def test_every_template_caption_parses_back_to_true_facts():
    world = ShapesWorld("train", 0)
    for i in range(250):
        scene = world.scene(i)
        for name, query in caption_queries(scene, world.rng(i, 1)).items():
            assert parse_caption(query.text()) == query, name
            facts = evaluate_query(query, scene_detections(scene))
            assert facts and all(f.holds for f in facts), (name, query.text())
        for text in captions(scene, world.rng(i, 1)):  # with prefixes
            assert caption_fact_precision(text, scene) == 1.0


def test_template_captions_hold_on_rendered_pixels():
    world = ShapesWorld("val", 0)
    total = ok = 0
    for i in range(80):
        scene = world.scene(i)
        detections = detect(render(scene, 64))
        for query in caption_queries(scene, world.rng(i, 1)).values():
            total += 1
            ok += all(f.holds for f in evaluate_query(query, detections))
    assert ok / total >= 0.99


def test_check_caption_against_image():
    image = render(Scene([ShapeObject("circle", "red", "large", 0, 0),
                          ShapeObject("square", "blue", "small", 2, 2)]))
    good = check(image, "a red circle to the left of a blue square")
    assert good.correct and good.category == "position" and good.attributes["relation"]
    wrong_color = check(image, "a blue circle and a blue square")
    assert not wrong_color.correct and wrong_color.attributes["color"] is False
    assert wrong_color.attributes["object_present"] and wrong_color.category == "attribute_binding"
    wrong_count = check(image, "two red circles")
    assert wrong_count.attributes == {"object_present": True, "color": True, "count": False}
    wrong_place = check(image, "a red circle in the bottom left")
    assert wrong_place.attributes["position"] is False and wrong_place.attributes["count"]
    wrong_relation = check(image, "a red circle below a blue square")
    assert wrong_relation.attributes == {"object_present": True, "color": True, "count": True,
                                         "relation": False}
    missing = check(image, "a star")
    assert missing.attributes == {"object_present": False, "count": False}
    assert isinstance(good.correct, bool) and isinstance(missing.correct, bool)


def test_exact_verdicts_refuse_objects_the_prompt_does_not_name():
    """GenEval's verdict passes a prompt's objects among others; ``exact`` does not, so a fixed
    image showing many kinds cannot pass single-object prompts wholesale."""
    image = render(Scene([ShapeObject("circle", "red", "large", 0, 0),
                          ShapeObject("square", "blue", "small", 2, 2)]))
    one = check(image, "a red circle")
    assert one.correct and one.named == 1 and one.unrequested and not one.exact
    both = check(image, "a red circle to the left of a blue square")
    assert both.correct and both.named == 2 and not both.unrequested and both.exact
    wrong = check(image, "two red circles and a blue square")
    assert not wrong.correct and not wrong.exact and not wrong.unrequested  # 3 named, 2 seen
    scene = Scene([ShapeObject("star", "green", "small", 1, 1)])
    assert check(render(scene), scene).exact and check(render(scene), "a green star").exact
    catalogue = Scene([ShapeObject(shape, color, "small", i // 3, i % 3)
                       for i, (shape, color) in enumerate(zip(SHAPES[:6], COLORS[:6]))])
    many = render(catalogue)
    for spec in catalogue.objects:  # each of its kinds, asked for alone
        verdict = check(many, f"a {spec.color} {spec.shape}")
        assert verdict.correct and verdict.unrequested and not verdict.exact


@pytest.mark.parametrize("text, category", [
    ("a star", "single_object"),
    ("a red star", "colors"),
    ("a large star", "colors"),
    ("a star and a circle", "two_objects"),
    ("a red star and a blue circle", "attribute_binding"),
    ("two stars", "counting"),
    ("two red stars and a blue circle", "counting"),
    ("a star in the top left", "position"),
    ("a star above a circle", "position"),
])
def test_prompt_categories(text, category):
    assert prompt_category(text) == category == parse_caption(text).category


def test_caption_metrics_exact_values():
    scene = Scene([ShapeObject("circle", "red", "large", 0, 0),
                   ShapeObject("square", "blue", "small", 2, 2)])
    # facts: circle present, red circle, one red circle | square present, green square (no),
    # one green square (no)
    assert caption_fact_precision("a red circle and a green square", scene) == pytest.approx(4 / 6)
    # recall: the red circle phrase states shape+color of object 0; the square phrase is false
    recall = caption_attribute_recall("a red circle and a green square", scene)
    assert recall == pytest.approx(2 / 8)
    full = "a large red circle in the top left and a small blue square in the bottom right"
    assert caption_scores(full, scene) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert caption_attribute_recall("a circle and a square", scene) == pytest.approx(2 / 8)
    assert caption_attribute_recall("two circles", scene) == 0.0  # a wrong count voids the phrase
    assert caption_scores("the cat sat on the mat", scene) == {"precision": 0.0, "recall": 0.0,
                                                               "f1": 0.0}


def test_phrases_listing_one_kind_cell_by_cell_are_read_together():
    # two small red circles: only a list of both cells can place them (a description does this)
    scene = Scene([ShapeObject("circle", "red", "small", 0, 0),
                   ShapeObject("circle", "red", "small", 2, 2),
                   ShapeObject("square", "blue", "large", 1, 1)])
    both = "a small red circle in the top left and a small red circle in the bottom right"
    assert caption_scores(both + " and a large blue square in the center", scene) == {
        "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert caption_attribute_recall(both, scene) == pytest.approx(8 / 12)
    # one cell alone keeps the plain reading: "a small red circle" claims the only one
    one = "a small red circle in the top left"
    assert caption_attribute_recall(one, scene) == 0.0
    assert caption_fact_precision(one, scene) == pytest.approx(3 / 5)  # count and cell are wrong
    # a wrong cell in the list voids every phrase of it: the circles' places are not those named
    wrong = "a small red circle in the top left and a small red circle in the top right"
    assert caption_attribute_recall(wrong, scene) == 0.0
    assert caption_fact_precision(wrong, scene) == pytest.approx(8 / 10)
    # a cell named twice; one circle too many
    for bad in (one + " and " + one, both + " and a small red circle in the center"):
        assert caption_fact_precision(bad, scene) < 1.0
        assert caption_attribute_recall(bad, scene) == 0.0
    # phrases of different sizes are not one list: each still claims its own kind alone
    mixed = "a red circle in the top left and a small red circle in the bottom right"
    assert caption_attribute_recall(mixed, scene) == 0.0


def test_template_captions_read_phrase_by_phrase():
    # no template lists one kind cell by cell, so their facts are those of each phrase alone,
    # also against scenes they do not describe
    world = ShapesWorld("train", 0)
    for i in range(150):
        scene, other = world.scene(i), world.scene(i + 1)
        for query in caption_queries(scene, world.rng(i, 1)).values():
            for dets in (scene_detections(scene), scene_detections(other)):
                alone = [f for g in query.groups for f in evaluate_query(SceneQuery((g,)), dets)]
                facts = evaluate_query(query, dets)
                assert facts[:len(alone)] == alone, query.text()


def test_scene_detections_are_what_detect_finds():
    for s in random_scenes(20, seed=3):
        symbolic = [(d.shape, d.color, d.size, d.cell) for d in scene_detections(s)]
        found = [(d.shape, d.color, d.size, d.cell) for d in detect(render(s, 64))]
        assert sorted(symbolic) == sorted(found)


def test_sizes_are_separable():
    # the size classes leave a margin around the threshold for +-1 px measurement error at 32
    (_, small_hi), (large_lo, _) = SIZE_EXTENTS["small"], SIZE_EXTENTS["large"]
    assert large_lo - small_hi > 2 * 3 / 32
    dets = detect(render(Scene([ShapeObject("circle", "red", "small", 0, 0, extent=small_hi),
                                ShapeObject("circle", "red", "large", 0, 1, extent=large_lo)]), 32))
    assert [d.size for d in dets] == ["small", "large"]



def test_a_colour_flooding_the_frame_is_no_object_of_the_world():
    """World objects span at most 0.8 of a cell; a full-frame colour once read as a large square
    in the centre (score 1.0) and passed "a large red square in the center"."""
    red = np.zeros((64, 64, 3), np.uint8)
    red[...] = PALETTE["red"]
    (flood,) = detect(red)
    assert flood.shape == "unknown" and flood.color == "red"
    assert not check(red, "a large red square in the center").correct
    largest = Scene([ShapeObject("square", "red", "large", 1, 1, extent=0.8)])
    assert check(render(largest), largest).correct and detect(render(largest))[0].shape == "square"


def test_a_phrase_repeated_or_related_to_its_own_kind_needs_two_objects():
    one = render(Scene([ShapeObject("circle", "red", "large", 0, 1)]))
    for prompt in ("a red circle and a red circle", "a red circle above a red circle",
                   "a circle to the left of a circle"):
        assert not check(one, prompt).correct, prompt  # once true of a single circle
    two = render(Scene([ShapeObject("circle", "red", "small", 0, 1),
                        ShapeObject("circle", "red", "small", 2, 1)]))
    assert check(two, "a red circle and a red circle").correct
    assert check(two, "a red circle above a red circle").correct
    assert not check(two, "a red circle to the left of a red circle").correct
