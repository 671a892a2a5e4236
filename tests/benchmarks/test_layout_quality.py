"""benchmarks/layout_quality.py runs end to end on a tiny layout model and refuses other models."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import layout_quality
from tests.training.test_unified_module import make


@pytest.fixture(scope="module")
def layout_model(tokenizer_dirs, layout_text_tokenizer_dir, tmp_path_factory):
    torch.manual_seed(0)
    dirs = {**tokenizer_dirs, "text_tokenizer": str(layout_text_tokenizer_dir)}
    module = make(dirs, modalities={"layout": {"kind": "shapes_layout"}},
                  tasks={"t2i": 1.0, "t2layout": 1.0, "layout2i": 1.0, "i2layout": 1.0})
    out = tmp_path_factory.mktemp("models") / "layout"
    module.to_pipeline().save_pretrained(out)
    return out


def test_layout_quality_writes_paired_scores_and_a_grid(layout_model, tmp_path):
    out = tmp_path / "layout_quality.json"
    payload = layout_quality.main(["--model", str(layout_model), "--num-samples", "4",
                                   "--batch-size", "2", "--image-steps", "2", "--layout-steps", "2",
                                   "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "layout_quality" and saved["split"] == "heldout"
    scores = saved["scores"]
    assert set(scores) == {"direct", "two_stage", "plan", "two_stage_follows_plan",
                           "layout2i_true_scene"}
    assert all(0.0 <= s["mean"] <= 1.0 for s in scores.values())
    diff = saved["two_stage_minus_direct"]["mean"]
    assert diff == pytest.approx(scores["two_stage"]["mean"] - scores["direct"]["mean"])
    assert set(saved["i2layout"]) == {"cell_accuracy", "object_recall", "exact_match", "malformed"}
    assert (tmp_path / "layout_quality.png").exists() and payload["grid"] == "layout_quality.png"


def test_a_plan_rendered_exactly_passes_the_checker():
    """The plan's score renders the planned scene with the world's renderer: a true scene, so
    rendered, satisfies its own caption (the measurement's ceiling is 1)."""
    from unigen.data.checker import check, parse_caption
    from unigen.data.shapes import render_tensor

    data = layout_quality.held_out(12, 64)
    assert len(data["scene"]) == len(data["caption"]) == 12  # not vacuously true on no scenes
    assert all(check(render_tensor(s, 64), parse_caption(c)).correct
               for s, c in zip(data["scene"], data["caption"]))


def test_a_model_without_the_layout_is_refused(tokenizer_dirs, tmp_path):
    module = make(tokenizer_dirs)
    module.to_pipeline().save_pretrained(tmp_path / "plain")
    with pytest.raises(SystemExit, match="is not a layout model"):
        layout_quality.main(["--model", str(tmp_path / "plain"), "--num-samples", "2"])
