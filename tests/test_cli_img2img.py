"""``unigen img2img``: variations of images, a share of their tokens redrawn under a prompt."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from cli_testkit import fails_with

from unigen.cli import main

SIZE = 32


@pytest.fixture(scope="module")
def dirs(cli_models):
    return cli_models


def _argv(dirs, out, *extra: str, model: str = "masked") -> list[str]:
    return ["img2img", "--model", str(dirs / model), "--image", str(dirs / "x0.png"),
            "--image", str(dirs / "x1.png"), "--prompt", "a red circle", "--steps", "4",
            "--out", str(out), *extra]


def test_the_grid_is_the_pipelines_image_to_image_with_its_redrawn_tokens_tinted(dirs, tmp_path,
                                                                                capsys):
    from unigen.commands import _load_images
    from unigen.inpaint_command import tinted
    from unigen.pipeline import UnifiedPipeline
    from unigen.visual import captioned_grid

    out = tmp_path / "v.png"
    assert main(_argv(dirs, out, "--strength", "0.5", "--seed", "9", "--guidance", "2")) == 0
    assert capsys.readouterr().out.strip().endswith(f"settings in {tmp_path / 'v.settings.json'})")
    pipe = UnifiedPipeline.from_pretrained(dirs / "masked")
    images = _load_images([str(dirs / "x0.png"), str(dirs / "x1.png")], SIZE, "none", False)
    expected = pipe.image_to_image(images, "a red circle", strength=0.5, num_steps=4, seed=9,
                                   guidance_scale=2.0, output="tensor")
    regions = pipe.random_regions(2, 0.5, pipe.generators(2, 9))
    shown = tinted(images, regions, pipe.image_tokenizer.downsample_factor)
    grid = captioned_grid(torch.stack([shown[0], expected[0], shown[1], expected[1]]),
                          ["x0.png", "a red circle", "x1.png", "a red circle"], ncol=2)
    assert list(Image.open(out).convert("RGB").getdata()) == list(grid.getdata())
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    h, w = pipe.space.sequence.grid
    assert settings["strength"] == 0.5 and settings["steps"] == 4
    assert settings["regenerated_tokens"] == [round(0.5 * h * w)] * 2


@pytest.mark.parametrize("extra, message", [
    (["--strength", "0"], "--strength must be in (0, 1]"),
    (["--strength", "1.5"], "--strength must be in (0, 1]"),
    (["--negative-prompt", "a star"], "--negative-prompt acts through classifier-free guidance"),
    (["--out", "{t}/v.txt"], "the extension picks the image format"),
])
def test_bad_options_are_one_line_and_write_nothing(extra, message, dirs, tmp_path, capsys):
    extra = [e.replace("{t}", str(tmp_path)) for e in extra]
    assert message in fails_with(_argv(dirs, tmp_path / "v.png", *extra), capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_autoregressive_model_is_refused(dirs, tmp_path, capsys):
    line = fails_with(_argv(dirs, tmp_path / "v.png", model="ar"), capsys)
    assert "`unigen img2img` needs a masked" in line and list(tmp_path.iterdir()) == []


def test_the_trajectory_starts_from_the_kept_tokens(dirs, tmp_path):
    out, steps = tmp_path / "v.png", tmp_path / "steps.png"
    assert main(_argv(dirs, out, "--strength", "0.5", "--trajectory", str(steps),
                      "--trajectory-frames", "2")) == 0
    from unigen.commands import _load_images
    from unigen.pipeline import UnifiedPipeline
    from unigen.trajectory import TrajectoryRecorder

    pipe = UnifiedPipeline.from_pretrained(dirs / "masked")
    images = _load_images([str(dirs / "x0.png"), str(dirs / "x1.png")], SIZE, "none", False)
    recorder = TrajectoryRecorder()
    pipe.image_to_image(images, "a red circle", strength=0.5, num_steps=4, callback=recorder)
    chosen, _, revealed = recorder.frames(pipe, 2)
    assert chosen == [0, 1]  # ceil(0.5 * 4) = 2 steps
    # the kept half is shown from the first step on; the redrawn half is done by the last
    assert bool((revealed[0] >= 0.5).all()) and bool((revealed[0] < 1).all())
    assert bool((revealed[-1] == 1).all())
    expected = recorder.grid(pipe, 2, ["a red circle"] * 2)
    assert list(Image.open(steps).convert("RGB").getdata()) == list(expected.getdata())
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["trajectory"] == {"path": str(steps), "frames": 2}
