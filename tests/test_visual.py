import torch

from unigen.visual import captioned_grid, wrap_caption


def test_wrap_caption_keeps_lines_short_and_marks_a_cut():
    text = "two red circles above a blue square and a green star"
    assert wrap_caption(text, 20, 5) == ["two red circles", "above a blue square", "and a green star"]
    cut = wrap_caption(text, 20, 2)
    assert cut == ["two red circles", "above a blue squa..."]
    assert all(len(line) <= 20 for line in cut)
    assert wrap_caption("a", 20, 1) == ["a"]
    assert wrap_caption("supercalifragilistic red", 8, 3) == ["supercalifragilistic", "red"]


def test_captioned_grid_lays_out_every_image():
    grid = captioned_grid(torch.rand(5, 3, 16, 16), ["a red circle"] * 5, ncol=4, scale=2)
    assert grid.size == (4 * (32 + 8) + 8, 2 * (32 + 24 * 3 // 2 + 8) + 8)
