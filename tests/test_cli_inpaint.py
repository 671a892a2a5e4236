"""``unigen inpaint``: a region given as a mask image or a pixel box, redrawn from a prompt."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from cli_testkit import fails_with

from unigen.cli import main
from unigen.inpaint_command import parse_box, tinted

SIZE = 32


@pytest.fixture(scope="module")
def dirs(cli_models, tmp_path_factory):
    """The shared tiny pipelines and two 32x32 images, plus a top-half mask and bad masks."""
    root = tmp_path_factory.mktemp("inpaint")
    for name in ("masked", "ar", "x0.png", "x1.png"):
        (root / name).symlink_to(cli_models / name)
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE, SIZE // 2))
    mask.save(root / "top.png")
    Image.new("L", (SIZE + 4, SIZE), 255).save(root / "wrong_size.png")
    (root / "broken.png").write_bytes(b"not a png")
    return root


def _argv(dirs, out, *extra: str) -> list[str]:
    return ["inpaint", "--model", str(dirs / "masked"), "--image", str(dirs / "x0.png"),
            "--image", str(dirs / "x1.png"), "--prompt", "a red circle", "--steps", "2",
            "--out", str(out), *extra]


def test_a_box_and_the_same_region_as_a_mask_draw_the_same_grid(dirs, tmp_path):
    by_box, by_mask = tmp_path / "box.png", tmp_path / "mask.png"
    assert main(_argv(dirs, by_box, "--box", f"0,0,{SIZE},{SIZE // 2}")) == 0
    assert main(_argv(dirs, by_mask, "--mask", str(dirs / "top.png"))) == 0
    assert by_box.read_bytes() == by_mask.read_bytes()
    settings = json.loads(by_box.with_suffix(".settings.json").read_text())
    # a 32x32 image is an 8x8 grid of tokens here (4x downsampling): the top half is 32 of them
    assert settings["regenerated_tokens"] == [32, 32]
    assert settings["prompts"] == ["a red circle"] * 2 and settings["box"] == f"0,0,{SIZE},{SIZE // 2}"
    assert json.loads(by_mask.with_suffix(".settings.json").read_text())["masks"] == [str(dirs / "top.png")]


def test_the_results_are_the_pipelines_inpainting(dirs, tmp_path):
    from unigen.commands import _load_images
    from unigen.pipeline import UnifiedPipeline
    from unigen.visual import captioned_grid

    out = tmp_path / "g.png"
    assert main(_argv(dirs, out, "--box", "8,8,24,24", "--seed", "7", "--guidance", "2",
                      "--negative-prompt", "a blue square")) == 0
    pipe = UnifiedPipeline.from_pretrained(dirs / "masked")
    images = _load_images([str(dirs / "x0.png"), str(dirs / "x1.png")], SIZE, "none", False)
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[8:24, 8:24] = True
    expected = pipe.inpaint(images, region, "a red circle", num_steps=2, guidance_scale=2.0,
                            seed=7, output="tensor", negative_prompt="a blue square")
    regions = pipe.inpaint_regions(region, 2)
    shown = tinted(images, regions, pipe.image_tokenizer.downsample_factor)
    tiles = torch.stack([shown[0], expected[0], shown[1], expected[1]])
    grid = captioned_grid(tiles, ["x0.png", "a red circle", "x1.png", "a red circle"], ncol=2)
    assert list(Image.open(out).convert("RGB").getdata()) == list(grid.getdata())


def test_the_tint_marks_exactly_the_region():
    images = torch.full((1, 3, 4, 4), 0.5)
    regions = torch.tensor([[[True, False], [False, False]]])
    out = tinted(images, regions, factor=2)
    assert not torch.equal(out[0, :, :2, :2], images[0, :, :2, :2])
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[:2, :2] = False
    assert torch.equal(out[0][:, keep], images[0][:, keep])


@pytest.mark.parametrize("text, message", [
    ("1,2,3", "give four integers X0,Y0,X1,Y1"),
    ("a,b,c,d", "give four integers"),
    ("0,0,40,8", "need 0 <= X0 < X1 <= 32"),
    ("8,8,8,16", "need 0 <= X0 < X1 <= 32"),
])
def test_bad_boxes_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_box(text, SIZE)


@pytest.mark.parametrize("extra, message", [
    (["--box", "0,0,99,8"], "--box '0,0,99,8': need 0 <= X0 < X1 <= 32"),
    (["--mask", "{d}/top.png", "--mask", "{d}/top.png", "--mask", "{d}/top.png"],
     "--mask: give one, or one per --image (2); got 3"),
    (["--mask", "{d}/missing.png"], "--mask {d}/missing.png: no such file"),
    (["--mask", "{d}/broken.png"], "--mask {d}/broken.png: cannot read it as an image"),
    (["--mask", "{d}/wrong_size.png"], "--mask: inpainting mask must be 32x32 pixels or 8x8 tokens"),
    (["--box", "0,0,8,8", "--negative-prompt", "a star"],
     "--negative-prompt acts through classifier-free guidance"),
    (["--box", "0,0,8,8", "--prompt", "b", "--prompt", "c"],
     "--prompt: give one, or one per --image (2); got 3"),
])
def test_unusable_regions_and_prompts_are_one_line_and_write_nothing(extra, message, dirs, tmp_path,
                                                                     capsys):
    extra = [e.replace("{d}", str(dirs)) for e in extra]
    line = fails_with(_argv(dirs, tmp_path / "g.png", *extra), capsys)
    assert message.replace("{d}", str(dirs)) in line, line
    assert list(tmp_path.iterdir()) == []


def test_an_autoregressive_model_is_refused(dirs, tmp_path, capsys):
    argv = _argv(dirs, tmp_path / "g.png", "--box", "0,0,8,8")
    argv[2] = str(dirs / "ar")
    line = fails_with(argv, capsys)
    assert "holds an autoregressive pipeline" in line and "`unigen inpaint` needs a masked" in line


@pytest.mark.parametrize("extra, message", [
    (["--mask", "{d}/top.png"] * 3, "--mask: give one, or one per --image (2); got 3"),
    (["--mask", "{d}/missing.png"], "--mask {d}/missing.png: no such file"),
])
def test_mask_counts_and_files_are_checked_before_the_weights_load(extra, message, dirs, tmp_path,
                                                                   capsys, monkeypatch):
    import unigen.inpaint_command as command

    def no_loading(args):
        raise AssertionError("the pipeline was loaded before the check")

    monkeypatch.setattr(command, "_pipeline", no_loading)
    extra = [e.replace("{d}", str(dirs)) for e in extra]
    assert message.replace("{d}", str(dirs)) in fails_with(_argv(dirs, tmp_path / "g.png", *extra),
                                                           capsys)


def test_invert_redraws_everything_outside_the_box(dirs, tmp_path):
    """Outpainting: the box is kept, the rest regenerated; the same as inpainting the complement."""
    inverted, complement = tmp_path / "inv.png", tmp_path / "comp.png"
    assert main(_argv(dirs, inverted, "--box", f"0,0,{SIZE},{SIZE // 2}", "--invert")) == 0
    assert main(_argv(dirs, complement, "--box", f"0,{SIZE // 2},{SIZE},{SIZE}")) == 0
    assert inverted.read_bytes() == complement.read_bytes()
    settings = json.loads(inverted.with_suffix(".settings.json").read_text())
    assert settings["invert"] is True and settings["regenerated_tokens"] == [32, 32]


def test_invert_of_a_region_covering_the_image_is_one_line(dirs, tmp_path, capsys):
    line = fails_with(_argv(dirs, tmp_path / "g.png", "--box", f"0,0,{SIZE},{SIZE}", "--invert"),
                      capsys)
    assert "--invert: the box covers all of" in line and "nothing outside it" in line
    assert list(tmp_path.iterdir()) == []


def test_the_trajectory_shows_only_the_region_being_drawn(dirs, tmp_path, capsys):
    from unigen.commands import _load_images
    from unigen.pipeline import UnifiedPipeline
    from unigen.trajectory import TrajectoryRecorder

    out, steps = tmp_path / "g.png", tmp_path / "steps.png"
    assert main(_argv(dirs, out, "--box", f"0,0,{SIZE},{SIZE // 2}", "--seed", "4",
                      "--trajectory", str(steps), "--trajectory-frames", "2")) == 0
    assert capsys.readouterr().out.strip().endswith(f"; decoding steps in {steps})")
    pipe = UnifiedPipeline.from_pretrained(dirs / "masked")
    images = _load_images([str(dirs / "x0.png"), str(dirs / "x1.png")], SIZE, "none", False)
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[: SIZE // 2] = True
    recorder = TrajectoryRecorder()
    pipe.inpaint(images, region, "a red circle", num_steps=2, seed=4, callback=recorder)
    grid = pipe.space.sequence.grid
    image = pipe.space.sequence.image
    given = pipe.space.vocab.image_to_vocab(pipe.image_tokenizer.encode(images))[:, grid[0] // 2:]
    for _, tokens, is_masked in recorder.states:  # the kept half never changes, never masked
        assert not is_masked[:, image].reshape(2, *grid)[:, grid[0] // 2:].any()
        assert torch.equal(tokens[:, image].reshape(2, *grid)[:, grid[0] // 2:], given)
    _, frames, revealed = recorder.frames(pipe, 2)
    assert bool((revealed[0] >= 0.5).all()) and bool((revealed[0] < 1).all())
    expected = recorder.grid(pipe, 2, ["a red circle", "a red circle"])
    assert list(Image.open(steps).convert("RGB").getdata()) == list(expected.getdata())
    assert json.loads(out.with_suffix(".settings.json").read_text())["trajectory"] == {
        "path": str(steps), "frames": 2}


def test_fill_draws_the_region_and_the_captions_blanks_in_one_decode(dirs, tmp_path):
    from unigen.commands import _load_images
    from unigen.pipeline import UnifiedPipeline
    from unigen.visual import captioned_grid

    out = tmp_path / "joint.png"
    argv = _argv(dirs, out, "--box", f"0,0,{SIZE},{SIZE // 2}", "--seed", "2")
    at = argv.index("--prompt")
    argv[at:at + 2] = ["--fill", "a _ circle"]
    assert main(argv) == 0
    pipe = UnifiedPipeline.from_pretrained(dirs / "masked")
    images = _load_images([str(dirs / "x0.png"), str(dirs / "x1.png")], SIZE, "none", False)
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[: SIZE // 2] = True
    expected = pipe.infill(images, "a _ circle", mask=region, num_steps=2, seed=2,
                           sampler="maskgit", output="tensor")
    shown = tinted(images, pipe.inpaint_regions(region, 2), pipe.image_tokenizer.downsample_factor)
    grid = captioned_grid(torch.stack([shown[0], expected.images[0], shown[1], expected.images[1]]),
                          ["x0.png", expected.texts[0], "x1.png", expected.texts[1]], ncol=2)
    assert list(Image.open(out).convert("RGB").getdata()) == list(grid.getdata())
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["fill"] == ["a _ circle"] * 2 and settings["filled"] == expected.texts
    assert all(t.split()[0] == "a" and t.split()[2] == "circle" for t in expected.texts)


@pytest.mark.parametrize("extra, message", [
    (["--fill", "a red circle"], "--fill 'a red circle' has no blank"),
    (["--fill", "a _", "--guidance", "2", "--negative-prompt", "x"],
     "--negative-prompt steers a --prompt; --fill has none to steer"),
])
def test_bad_fills_are_one_line_and_write_nothing(extra, message, dirs, tmp_path, capsys):
    argv = _argv(dirs, tmp_path / "g.png", "--box", "0,0,8,8", *extra)
    at = argv.index("--prompt")
    del argv[at:at + 2]
    assert message in fails_with(argv, capsys)
    assert list(tmp_path.iterdir()) == []


def test_prompt_and_fill_are_one_or_the_other(dirs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(_argv(dirs, tmp_path / "g.png", "--box", "0,0,8,8", "--fill", "a _"))
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_16_bit_mask_is_refused_not_clipped(dirs, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    mask = tmp_path / "m16.png"
    Image.fromarray(np.full((SIZE, SIZE), 300, dtype=np.uint16)).save(mask)  # 300/65535: nearly black
    line = fails_with(_argv(dirs, tmp_path / "g.png", "--mask", str(mask)), capsys)
    assert f"--mask {mask}: mode 'I" in line and "save the mask as an 8-bit image" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m16.png"]
