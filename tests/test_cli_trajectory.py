"""``unigen generate --trajectory``: the decoding drawn step by step, and the recorder behind it."""

from __future__ import annotations

import json

import pytest
from cli_testkit import fails_with
from PIL import Image

from unigen.cli import main
from unigen.trajectory import TrajectoryRecorder, frame_steps


@pytest.fixture(scope="module")
def models(cli_models):
    return cli_models


@pytest.mark.parametrize("recorded, frames, expected", [
    (8, 4, [0, 2, 5, 7]), (8, 1, [7]), (3, 6, [0, 1, 2]), (16, 2, [0, 15]),
])
def test_frames_are_evenly_spaced_and_end_at_the_last_step(recorded, frames, expected):
    assert frame_steps(recorded, frames) == expected


def test_a_recorder_that_saw_no_step_says_how_to_use_it():
    with pytest.raises(ValueError, match="callback="):
        frame_steps(0, 4)


def test_the_cli_trajectory_is_the_recorders_grid_of_the_same_decode(models, tmp_path, capsys):
    from unigen.pipeline import UnifiedPipeline

    out, steps = tmp_path / "g.png", tmp_path / "steps.png"
    argv = ["generate", "--model", models / "masked", "--prompt", "a red circle", "--prompt",
            "a blue star", "--steps", "5", "--seed", "3", "--out", out, "--trajectory", steps,
            "--trajectory-frames", "3"]
    assert main([str(a) for a in argv]) == 0
    assert capsys.readouterr().out.strip().endswith(f"; decoding steps in {steps})")
    pipe = UnifiedPipeline.from_pretrained(models / "masked")
    recorder = TrajectoryRecorder()
    pipe.text_to_image(["a red circle", "a blue star"], num_steps=5, seed=3, callback=recorder)
    chosen, images, revealed = recorder.frames(pipe, 3)
    assert chosen == [0, 2, 4] and images.shape == (3, 2, 3, 32, 32)
    assert bool((revealed[1:] >= revealed[:-1]).all()) and bool((revealed[-1] == 1).all())
    assert 0 < float(revealed[0, 0]) < 1  # the first frame is mostly gray
    expected = recorder.grid(pipe, 3, ["a red circle", "a blue star"])
    drawn = Image.open(steps)
    assert drawn.size == expected.size  # 3 columns, 2 rows
    assert list(drawn.convert("RGB").getdata()) == list(expected.convert("RGB").getdata())
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["trajectory"] == {"path": str(steps), "frames": 3}


@pytest.mark.parametrize("extra, message", [
    (["--trajectory", "{t}/s.txt"], "--trajectory {t}/s.txt: the extension picks the image format"),
    (["--trajectory", "{t}/g.png"], "is where --out's grid or settings go"),
    (["--trajectory", "{t}/s.png", "--candidates", "2"], "with --candidates 2 there are several"),
    (["--trajectory", "{t}/s.png", "--trajectory-frames", "0"], "--trajectory-frames must be >= 1"),
])
def test_bad_trajectory_options_are_one_line_and_write_nothing(extra, message, models, tmp_path,
                                                               capsys):
    extra = [e.format(t=tmp_path) for e in extra]
    line = fails_with(["generate", "--model", models / "masked", "--prompt", "a", "--steps", "2",
                       "--out", tmp_path / "g.png", *extra], capsys)
    assert message.format(t=tmp_path) in line
    assert list(tmp_path.iterdir()) == []


def test_an_autoregressive_model_has_no_steps_to_draw(models, tmp_path, capsys):
    line = fails_with(["generate", "--model", models / "ar", "--prompt", "a", "--out",
                       tmp_path / "g.png", "--trajectory", tmp_path / "s.png"], capsys)
    assert "is autoregressive" in line and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb, extra", [("caption", []),
                                          ("answer", ["--question", "what color is the star?"])])
def test_caption_and_answer_write_each_steps_partial_text(verb, extra, models, tmp_path):
    out, steps = tmp_path / "rows.json", tmp_path / "steps.json"
    argv = [verb, "--model", models / "masked", "--image", models / "x0.png", "--image",
            models / "x1.png", "--steps", "3", "--out", out, "--trajectory", steps, *extra]
    assert main([str(a) for a in argv]) == 0
    rows, drawn = json.loads(out.read_text()), json.loads(steps.read_text())
    assert [d["image"] for d in drawn] == [str(models / "x0.png"), str(models / "x1.png")]
    for row, record in zip(rows, drawn):
        assert record["steps"][0]["step"] == 1 and "_" in record["steps"][0]["text"]
        assert record["steps"][-1]["text"].endswith(row["caption" if verb == "caption" else "answer"])
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["trajectory"] == str(steps)


def test_a_text_trajectory_on_the_results_file_is_refused(models, tmp_path, capsys):
    out = tmp_path / "rows.json"
    line = fails_with(["caption", "--model", models / "masked", "--image", models / "x0.png",
                       "--out", out, "--trajectory", out], capsys)
    assert "is where --out's results or settings go" in line and list(tmp_path.iterdir()) == []


def test_a_recorder_with_no_steps_has_no_texts_either(models):
    from unigen.pipeline import UnifiedPipeline

    with pytest.raises(ValueError, match="callback="):
        TrajectoryRecorder().texts(UnifiedPipeline.from_pretrained(models / "masked"))
