"""Rewards for reward fine-tuning: the shapes checker's exact scores, CLIP score as its metric, and
one error line for a batch a reward cannot score."""

from __future__ import annotations

import pytest
import torch

from docs_testkit import exec_doc_block
from metrics_testkit import batch
from unigen.data.shapes import ShapesDataset, Scene, render_tensor
from unigen.rewards import REWARDS, ClipScoreReward, ShapesCheckerReward, build_reward


def _scenes(n: int) -> tuple[torch.Tensor, list[str]]:
    data = ShapesDataset("val", n, 64)
    items = [data[i] for i in range(n)]
    images = torch.stack([render_tensor(Scene.from_json(x["scene"]), 64) for x in items])
    return images, [x["caption"] for x in items]


def test_the_shapes_checker_scores_true_images_1_and_empty_ones_0():
    images, captions = _scenes(4)
    out = ShapesCheckerReward()(images, captions)
    assert torch.equal(out.rewards, torch.ones(4))  # the renderer's image of each caption passes
    assert out.metrics["pass_rate"] == 1.0 and out.metrics["fact_share"] == 1.0
    empty = render_tensor(Scene.from_json('{"objects": []}'), 64)  # the background: no object,
    out = ShapesCheckerReward()(empty.expand_as(images), captions)  # so no fact holds
    assert torch.equal(out.rewards, torch.zeros(4)) and out.metrics["pass_rate"] == 0.0


def test_a_partly_right_image_gets_partial_credit_and_pass_weight_1_is_the_verdict():
    from unigen.data.checker import check

    # a red circle drawn for "a blue circle": the circle is there, its colour is wrong
    scene = Scene.from_json('{"objects": [{"shape": "circle", "color": "red", "size": "large", '
                            '"row": 1, "col": 1}]}')
    image = render_tensor(scene, 64)[None]
    result = check(image[0], "a blue circle")
    share = sum(f.holds for f in result.facts) / len(result.facts)
    assert 0 < share < 1 and not result.correct
    for weight in (0.0, 0.25, 1.0):
        got = ShapesCheckerReward(pass_weight=weight)(image, ["a blue circle"])
        assert got.rewards.item() == pytest.approx((1 - weight) * share)
        assert got.metrics == {"pass_rate": 0.0, "fact_share": pytest.approx(share),
                               "extra_objects": 0.0}


def test_objects_the_caption_does_not_count_cost_only_when_asked_to():
    # three objects for "a red circle": the checker passes it (GenEval-style, extras unchecked)
    scene = Scene.from_json(
        '{"objects": [{"shape": "circle", "color": "red", "size": "large", "row": 0, "col": 0}, '
        '{"shape": "square", "color": "blue", "size": "large", "row": 2, "col": 2}, '
        '{"shape": "star", "color": "green", "size": "large", "row": 0, "col": 2}]}')
    image = render_tensor(scene, 64)[None]
    plain = ShapesCheckerReward()(image, ["a red circle"])
    assert plain.rewards.item() == 1.0 and plain.metrics["extra_objects"] == pytest.approx(2 / 3)
    costly = ShapesCheckerReward(extra_object_weight=0.6)(image, ["a red circle"])
    assert costly.rewards.item() == pytest.approx(1.0 - 0.6 * 2 / 3)
    with pytest.raises(ValueError, match="extra_object_weight must be >= 0"):
        ShapesCheckerReward(extra_object_weight=-1.0)


def test_bad_batches_and_options_are_one_clear_error():
    images, captions = _scenes(2)
    reward = ShapesCheckerReward()
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        reward(images, captions[:1])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        reward(images, [captions[0], ""])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\[3, 64, 64\]"):
        reward(images[0], captions[:1])
    with pytest.raises(ValueError, match="prompt 0 .*'a photo of a cat'.* not a shapes caption"):
        reward(images[:1], ["a photo of a cat"])
    with pytest.raises(ValueError, match="pass_weight must be in"):
        ShapesCheckerReward(pass_weight=2.0)
    with pytest.raises(ValueError, match="reward 'shapes_checker'.*unexpected keyword.*weight"):
        build_reward("shapes_checker", weight=1.0)
    assert {"shapes_checker", "clip_score"} <= set(REWARDS.names())


def test_clip_score_reward_is_the_metric_scaled(tiny_clip_dir):
    from unigen.metrics import CLIPScore

    data = batch(4)
    reward = build_reward("clip_score", clip=str(tiny_clip_dir), scale=0.5)
    assert isinstance(reward, ClipScoreReward)
    out = reward(data["image"], data["caption"])
    expected = CLIPScore(str(tiny_clip_dir)).pair_scores(data["image"], data["caption"])
    assert torch.allclose(out.rewards, (0.5 * expected).float())
    assert out.metrics["clip_score"] == pytest.approx(float(expected.mean()))
    with pytest.raises(FileNotFoundError):
        build_reward("clip_score", clip=str(tiny_clip_dir / "missing"))


def test_the_documented_reward_runs_as_written():
    exec_doc_block("# my_reward.py", "my_reward")
    try:
        reward = build_reward("saturation", weight=2.0)
        gray, red = torch.full((1, 3, 8, 8), 0.5), torch.zeros(1, 3, 8, 8)
        red[:, 0] = 1.0
        out = reward(torch.cat((gray, red)), ["a gray image", "a red image"])
        assert torch.equal(out.rewards, torch.tensor([0.0, 2.0]))
        assert out.metrics == {"saturation": 0.5}
    finally:
        REWARDS._items.pop("saturation")
