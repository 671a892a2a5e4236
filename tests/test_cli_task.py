"""``unigen task``: any segment task (a further modality's) from the command line, on a tiny
untrained layout model (the shapes scene layout: t2layout, layout2i, i2layout)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from cli_testkit import fails_with

from unigen import commands
from unigen.cli import main
from unigen.modalities import ShapesLayout

LAYOUT = {"layout": {"kind": "shapes_layout"}}
SCENE = {"objects": [{"shape": "circle", "color": "red", "size": "large", "row": 0, "col": 1},
                     {"shape": "square", "color": "blue", "size": "small", "row": 2, "col": 2}]}


@pytest.fixture(scope="module")
def models(layout_text_tokenizer_dir, image_tokenizer_dir, tmp_path_factory):
    """A layout model, a model without the layout and an autoregressive one (tiny, untrained),
    two 32x32 scene images and a scene file."""
    from unigen.data.shapes import Scene, ShapesDataset, render
    from unigen.training.ar_module import AutoregressiveModule
    from unigen.training.unified_module import UnifiedModule

    root = tmp_path_factory.mktemp("task_models")
    dirs = {"text_tokenizer": str(layout_text_tokenizer_dir),
            "image_tokenizer": str(image_tokenizer_dir)}
    tiny = dict(image_size=32, dim=32, depth=1, heads=4)
    torch.manual_seed(0)
    UnifiedModule(**dirs, **tiny, modalities=LAYOUT,
                  tasks={"t2i": 1.0, "t2layout": 1.0, "layout2i": 1.0, "i2layout": 1.0}
                  ).export(root / "layout")
    UnifiedModule(**dirs, **tiny).export(root / "plain")
    AutoregressiveModule(**dirs, **tiny).export(root / "ar")
    data = ShapesDataset("val", 2, 32)
    for i in range(2):
        render(Scene.from_json(data[i]["scene"]), 32).save(root / f"x{i}.png")
    (root / "scene.json").write_text(json.dumps(SCENE))
    return root


def run(argv, capsys) -> list[str]:
    """Run the verb; its stdout lines."""
    assert main(["task", *map(str, argv)]) == 0
    return capsys.readouterr().out.strip().splitlines()


def read(path):
    return json.loads(path.read_text())


def test_help_lists_the_verb_and_the_segment_tasks(capsys):
    assert main(["--help"]) == 0
    assert "  task " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["task", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--layout VALUE layout input of layout2i" in out and "--input SEGMENT=VALUE" in out
    for line in ("i2layout (image -> layout; sampler confident)",
                 "layout2i (layout -> image; sampler maskgit)",
                 "t2layout (text -> layout; sampler maskgit)"):
        assert line in out


def test_text_to_layout_writes_rows_that_encode_reads_back(models, tmp_path, capsys):
    out = tmp_path / "plans.json"
    texts = ["a red circle above a blue square", "two stars"]
    lines = run(["--model", models / "layout", "--task", "t2layout", "--text", texts[0],
                 "--input", f"text={texts[1]}", "--num-per-input", "2", "--steps", "3",
                 "--seed", "5", "--out", out], capsys)
    rows = read(out)
    assert [r["text"] for r in rows] == [texts[0], texts[0], texts[1], texts[1]]
    assert [r["seed"] for r in rows] == [5, 6, 7, 8]
    assert ShapesLayout().encode([r["layout"] for r in rows]).shape == (4, 3, 9)
    assert lines == [f"{r['text']}: {r['layout_text']}" for r in rows]
    settings = read(tmp_path / "plans.settings.json")
    assert settings["task"] == "t2layout" and settings["sampler"] == "maskgit"
    assert (settings["seed"], settings["steps"], settings["num_per_input"]) == (5, 3, 2)
    assert settings["model"] == str(models / "layout") and settings["inputs"] == {"text": texts}
    # the same seed draws the same plans
    again = tmp_path / "again.json"
    run(["--model", models / "layout", "--task", "t2layout", "--text", texts[0], "--text", texts[1],
         "--num-per-input", "2", "--steps", "3", "--seed", "5", "--out", again], capsys)
    assert read(again) == rows


def test_layout_to_image_draws_a_grid_from_files_literals_and_rows(models, tmp_path, capsys):
    from unigen.visual import captioned_grid

    plans = tmp_path / "plans.json"  # rows as the verb writes them: each row's layout is read
    plans.write_text(json.dumps([{"text": "a", "layout": SCENE}, {"text": "b", "layout": {"objects": []}}]))
    lines_file = tmp_path / "scenes.jsonl"
    lines_file.write_text(json.dumps(SCENE) + "\n\n" + json.dumps({"objects": []}) + "\n")
    argv = ["--model", models / "layout", "--task", "layout2i", "--layout", models / "scene.json",
            "--layout", json.dumps(SCENE), "--layout", plans, "--input", f"layout={lines_file}",
            "--steps", "2", "--seed", "3"]
    out = tmp_path / "drawn.png"
    lines = run([*argv, "--out", out], capsys)
    assert lines == [f"wrote {out} (6 images; rows in {tmp_path / 'drawn.json'}, settings in "
                     f"{tmp_path / 'drawn.settings.json'})"]
    blank = captioned_grid(torch.zeros(6, 3, 32, 32), [""] * 6)
    assert Image.open(out).size == blank.size
    rows = read(tmp_path / "drawn.json")
    assert [r["image"] for r in rows] == [{"grid": str(out), "cell": i} for i in range(6)]
    codes = ShapesLayout().encode([r["layout"] for r in rows])
    assert torch.equal(codes, ShapesLayout().encode([SCENE, SCENE, SCENE, {"objects": []}, SCENE,
                                                     {"objects": []}]))
    assert rows[0]["layout_text"].startswith("a large red circle")
    settings = read(tmp_path / "drawn.settings.json")
    assert settings["task"] == "layout2i" and settings["grid"] == str(out) and settings["seed"] == 3
    assert len(settings["inputs"]["layout"]) == 4
    # seeded: the same grid again
    again = tmp_path / "again.webp"
    run([*argv, "--out", again], capsys)
    webp = tmp_path / "same.png"
    run([*argv, "--out", webp], capsys)
    assert list(Image.open(webp).getdata()) == list(Image.open(out).getdata())
    assert Image.open(again).format == "WEBP"


def test_image_to_layout_parses_images_with_the_tasks_own_sampler(models, tmp_path, capsys):
    out = tmp_path / "parsed.json"
    images = [str(models / "x0.png"), str(models / "x1.png")]
    lines = run(["--model", models / "layout", "--task", "i2layout", "--image", images[0],
                 "--image", images[1], "--steps", "2", "--out", out], capsys)
    rows = read(out)
    assert [r["image"] for r in rows] == images and [r["seed"] for r in rows] == [0, 1]
    assert ShapesLayout().encode([r["layout"] for r in rows]).shape == (2, 3, 9)
    assert lines == [f"{r['image']}: {r['layout_text']}" for r in rows]
    settings = read(tmp_path / "parsed.settings.json")
    assert settings["sampler"] == "confident"  # ImageToLayout.sampler
    assert (settings["resize"], settings["convert"]) == ("none", False)


@pytest.fixture
def two_input_task(monkeypatch):
    """A segment task given text and layout (for the unequal-count check)."""
    from unigen.diffusion.tasks import TASKS, SegmentTask

    class TextLayoutToImage(SegmentTask):
        name, given, predicted = "tl2i", ("text", "layout"), ("image",)

    monkeypatch.setitem(TASKS._items, "tl2i", TextLayoutToImage)


def error_line(argv, capsys) -> str:
    return fails_with(["task", *argv], capsys)


def test_every_error_is_one_line_before_the_weights_are_read(models, tmp_path, capsys, monkeypatch,
                                                             two_input_task):
    def no_loading(args):
        raise AssertionError("the weights were read")

    monkeypatch.setattr(commands, "_pipeline", no_loading)
    layout, scene, png = models / "layout", models / "scene.json", models / "x0.png"
    unreadable = tmp_path / "bytes.json"
    unreadable.write_bytes(b"\xff\xfe\x00bad")
    cases = [
        (["--model", layout, "--task", "nope", "--text", "a"],
         "--task nope: unknown task; the segment tasks are: i2layout (image -> layout; sampler "
         "confident); layout2i (layout -> image; sampler maskgit); t2layout"),
        (["--model", layout, "--task", "t2i", "--text", "a"],
         "--task t2i is not a segment task: run it with `unigen generate`"),
        (["--model", layout, "--task", "vqa", "--text", "a"], "run it with `unigen answer`"),
        (["--model", layout, "--task", "layout2i"],
         "task 'layout2i' is given layout: pass --layout VALUE (repeatable)"),
        (["--model", layout, "--task", "layout2i", "--layout", scene, "--text", "a"],
         "--text: task 'layout2i' is not given 'text'; it takes --layout VALUE"),
        (["--model", layout, "--task", "t2layout", "--text", "a", "--input", "image=x.png"],
         "--input image: task 't2layout' is not given 'image'; it takes --text TEXT"),
        (["--model", layout, "--task", "t2layout", "--input", "a red circle"],
         "--input expects SEGMENT=VALUE, got 'a red circle'"),
        (["--model", models / "plain", "--task", "layout2i", "--layout", scene],
         f"--model {models / 'plain'} has no 'layout' segment, which task 'layout2i' needs (its "
         "modalities: none)"),
        (["--model", models / "ar", "--task", "t2layout", "--text", "a"],
         "holds an autoregressive pipeline, which generates images from text only; `unigen task` "
         "needs a masked (unified) pipeline"),
        (["--model", layout, "--task", "tl2i", "--text", "a", "--text", "b", "--layout", scene],
         "task 'tl2i': the inputs hold different numbers of items (--text: 2, --layout: 1)"),
        (["--model", layout, "--task", "layout2i", "--layout", tmp_path / "missing.json"],
         f"--layout {tmp_path / 'missing.json'}: no such file"),
        (["--model", layout, "--task", "layout2i", "--layout", unreadable],
         f"--layout {unreadable}: cannot read the file"),
        (["--model", layout, "--task", "layout2i", "--layout", tmp_path],
         f"--layout {tmp_path}: not a file"),
        (["--model", layout, "--task", "i2layout", "--image", tmp_path / "missing.png"],
         "cannot decode image"),
        (["--model", layout, "--task", "layout2i", "--layout", '{"objects": [{"shape": "hexagon"'],
         "--layout {\"objects\": [{\"shape\": \"hexagon\": layout: sample 0 is not a shapes scene"),
        (["--model", layout, "--task", "layout2i", "--layout", json.dumps([SCENE, SCENE])],
         "layout: sample 0 is not a shapes scene (a scene dict needs an 'objects' list"),
        (["--model", layout, "--task", "layout2i", "--layout", scene, "--steps", "0"],
         "--steps must be at least 1, got 0"),
        (["--model", layout, "--task", "layout2i", "--layout", scene, "--guidance", "-1"],
         "--guidance must be a finite number >= 0"),
    ]
    for argv, message in cases:
        out = tmp_path / ("o.png" if "layout2i" in argv or "tl2i" in argv else "o.json")
        line = error_line([*argv, "--out", out], capsys)
        assert message in line, (argv, line)
    # a JSON list is one item; the error says how to give several
    line = error_line(["--model", layout, "--task", "layout2i", "--layout", json.dumps([SCENE]),
                       "--out", tmp_path / "o.png"], capsys)
    assert line.endswith("(several layout items: a .jsonl file, one a line, or repeat --layout)")
    for task, ext, message in (("layout2i", "json", "task 'layout2i' predicts an image, written as "
                                "a captioned grid; use one of .png, .jpg, .jpeg, .webp"),
                               ("i2layout", "png", "task 'i2layout' predicts layout, written as "
                                "JSON rows; give a .json path")):
        given = ["--layout", scene] if task == "layout2i" else ["--image", png]
        line = error_line(["--model", layout, "--task", task, *given, "--out",
                           tmp_path / f"o.{ext}"], capsys)
        assert message in line
    # the rows written beside a grid are NAME.json: never the layout file read (--layout or --input)
    mine = tmp_path / "plan.json"
    mine.write_text(scene.read_text())
    for given in (["--layout", mine], ["--input", f"layout={mine}"]):
        line = error_line(["--model", layout, "--task", "layout2i", *given, "--out", tmp_path / "plan.png"],
                          capsys)
        assert f"the rows file {mine} is an input of this command" in line, line
    assert mine.read_text() == scene.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bytes.json", "plan.json"]  # nothing written


def test_a_plugin_modality_from_the_docs_runs_from_the_command_line(text_tokenizer_dir,
                                                                    image_tokenizer_dir, tmp_path,
                                                                    capsys):
    """docs/extending.md's audio-code modality (1-D, decoded as lists) and its t2a task."""
    from docs_testkit import exec_doc_block

    from unigen.diffusion.tasks import TASKS
    from unigen.modalities import MODALITIES
    from unigen.tokenizers.text import TextTokenizer
    from unigen.training.unified_module import UnifiedModule

    exec_doc_block("# my_audio.py", "my_audio")
    try:
        tok = tmp_path / "tok"
        TextTokenizer.from_pretrained(text_tokenizer_dir).add_task_tokens(["t2a"]).save_pretrained(tok)
        torch.manual_seed(0)
        UnifiedModule(text_tokenizer=str(tok), image_tokenizer=str(image_tokenizer_dir),
                      image_size=32, dim=32, depth=1, heads=4, tasks={"t2a": 1.0},
                      modalities={"audio": {"kind": "audio_codes", "length": 8, "codebook": 16}}
                      ).export(tmp_path / "model")
        out = tmp_path / "audio.json"
        lines = run(["--model", tmp_path / "model", "--task", "t2a", "--text", "a red circle",
                     "--steps", "2", "--out", out], capsys)
        (row,) = read(out)
        assert len(row["audio"]) == 8 and all(0 <= c < 16 for c in row["audio"])
        assert lines == [f"a red circle: {row['audio_text']}"]
    finally:
        MODALITIES._items.pop("audio_codes")
        TASKS._items.pop("t2a")
