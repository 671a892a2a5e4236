import subprocess
import sys
from pathlib import Path

import pytest

from unigen.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "recipes" / "debug" / "unified_debug.yaml"


def test_help_lists_every_verb(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("fit", "validate", "test", "predict", "generate", "caption", "answer", "demo",
                 "text-tokenizer", "export"):
        assert f"  {verb} " in out


def test_python_dash_m_matches_console_script():
    out = subprocess.run([sys.executable, "-m", "unigen", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout


def test_unknown_verb_is_one_line(capsys):
    assert main(["paint"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unigen: error: unknown verb 'paint'") and "\n" not in err


@pytest.mark.parametrize("override, expected", [
    (["--model.init_args.dim", "abc"], 'bad value for "dim"'),
    (["--model.init_args.not_a_key", "1"], "not_a_key"),
    (["--trainer.max_step", "3"], "unrecognized arguments"),
])
def test_bad_recipe_values_give_one_clear_line(override, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(DEBUG), *override])
    assert exc.value.code == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("unigen:")]
    assert len(err) == 1 and expected in err[0]


def test_unknown_key_inside_a_yaml_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEBUG.read_text().replace("    dim: 64", "    dim: 64\n    colour: red"))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(bad)])
    assert "colour" in capsys.readouterr().err


def test_missing_tokenizer_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(DEBUG), "--trainer.max_steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1
    assert err[-1].startswith("unigen: error:") and "runs/debug" in err[-1]


def test_generate_caption_answer_verbs(tokenizer_dirs, tmp_path, capsys):
    import json

    import torch

    from unigen.data.shapes import ShapesDataset, render
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    model = tmp_path / "model"
    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4).export(model)
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "--prompt",
                 "two blue squares", "--steps", "2", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert json.loads((tmp_path / "grid.json").read_text())["prompts"] == ["a red circle", "two blue squares"]
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "--steps", "2",
                 "--candidates", "2", "--out", str(tmp_path / "best.png")]) == 0
    assert json.loads((tmp_path / "best.json").read_text())["candidates"] == 2
    # sampler options from the command line (values as YAML), recorded next to the grid
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "--steps", "3",
                 "--sampler", "confident", "--sampler-arg", "schedule=cosine", "--sampler-arg",
                 "choice_temperature=4.5", "--sampler-arg", "temperature=1",
                 "--out", str(tmp_path / "conf.png")]) == 0
    assert json.loads((tmp_path / "conf.json").read_text())["sampler_kwargs"] == {
        "schedule": "cosine", "choice_temperature": 4.5, "temperature": 1}
    for bad, message in ((["--sampler-arg", "nope=1"], "sampler 'confident' does not take these options"),
                         (["--sampler-arg", "schedule"], "--sampler-arg expects KEY=VALUE")):
        with pytest.raises(SystemExit):
            main(["generate", "--model", str(model), "--prompt", "a", "--sampler", "confident", *bad,
                  "--out", str(tmp_path / "bad.png")])
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("unigen: error:") and message in err[-1]
    from unigen.data.shapes import Scene

    img = tmp_path / "x.png"
    render(Scene.from_json(ShapesDataset("val", 1, 32)[0]["scene"]), 32).save(img)
    assert main(["caption", "--model", str(model), "--image", str(img), "--steps", "2",
                 "--out", str(tmp_path / "c.json")]) == 0
    assert len(json.loads((tmp_path / "c.json").read_text())) == 1
    assert main(["answer", "--model", str(model), "--image", str(img), "--question",
                 "what color is the star?", "--steps", "2", "--out", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())[0]["question"] == "what color is the star?"
    big = tmp_path / "big.png"
    render(Scene(), 64).save(big)
    with pytest.raises(SystemExit):
        main(["caption", "--model", str(model), "--image", str(big), "--out", str(tmp_path / "e.json")])
    assert "not 32x32" in capsys.readouterr().err


@pytest.mark.slow
def test_plain_ddp_launch_reruns_the_same_command(tokenizer_dirs, tmp_path):
    """Lightning's DDP launcher re-runs sys.argv in the second process: it must be this command."""
    cmd = [sys.executable, "-m", "unigen", "fit", "--config", str(DEBUG),
           "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
           "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
           "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "max_steps=2" in out.stdout + out.stderr
