"""Bad input gives one clear error line through the CLI (exit 2 when the command line or recipe
does not parse, 1 for what is found after that: docs/reliability.md) and nothing is written.
Cases already covered elsewhere are not repeated: parser-level data errors
(tests/data/test_imagefolder.py), tokenizer directory errors
(tests/tokenizers/test_image_tokenizer_persistence.py), wrong image size, unknown recipe keys and
bad command-line values (tests/test_cli.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_testkit import fails_with

from unigen.cli import main

ROOT = Path(__file__).resolve().parents[2]
UNIFIED_DEBUG = ROOT / "recipes" / "debug" / "unified_debug.yaml"




@pytest.fixture
def png(tmp_path):
    """A valid 32x32 shapes image as a PNG in the given mode."""
    from unigen.data.shapes import Scene, ShapesDataset, render

    scene = Scene.from_json(ShapesDataset("val", 1, 32)[0]["scene"])

    def make(mode: str = "RGB", name: str = "img.png") -> Path:
        path = tmp_path / name
        render(scene, 32).convert(mode).save(path)
        return path

    return make


def _caption(model: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return ["caption", "--model", str(model), "--image", str(image), "--steps", "2",
            "--out", str(out), *extra]


def test_truncated_png(tiny_model_dir, png, tmp_path, capsys):
    path = png()
    path.write_bytes(path.read_bytes()[:200])
    line = fails_with(_caption(tiny_model_dir, path, tmp_path / "c.json"), capsys)
    assert f"cannot decode image {path}" in line
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_non_rgb_images_are_refused_unless_converted(mode, tiny_model_dir, png, tmp_path, capsys):
    path = png(mode)
    line = fails_with(_caption(tiny_model_dir, path, tmp_path / "c.json"), capsys)
    assert f"image {path} has mode {mode!r}, not RGB" in line and "pass --convert" in line
    assert not (tmp_path / "c.json").exists()
    assert main(_caption(tiny_model_dir, path, tmp_path / "c.json", "--convert")) == 0
    assert len(json.loads((tmp_path / "c.json").read_text())) == 1


@pytest.mark.parametrize("prompt, message", [
    ("", "empty caption"),
    ("   ", "empty caption"),
    ("a red circle and " * 20, "text too long"),
    # bytes that are not UTF-8 reach Python's argv as lone surrogates: once a tokenizers TypeError
    (b"a \xff circle".decode("utf-8", "surrogateescape"), "caption 'a \\udcff circle' is not valid UTF-8 text"),
])
def test_empty_or_overlong_prompts(prompt, message, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    line = fails_with(["generate", "--model", str(tiny_model_dir), "--prompt", "a red circle",
                       "--prompt", prompt, "--steps", "2", "--out", str(out)], capsys)
    assert message in line and not out.exists()


def test_empty_question(tiny_model_dir, png, tmp_path, capsys):
    line = fails_with(["answer", "--model", str(tiny_model_dir), "--image", str(png()),
                       "--question", "", "--out", str(tmp_path / "a.json")], capsys)
    assert "empty question" in line


def test_unknown_characters_become_visible_unknown_tokens(tiny_pipeline):
    """Not an error: words outside the vocabulary map to <unk> (shown when decoded), and the
    sample is as reproducible as any other."""
    tok = tiny_pipeline.text_tokenizer
    ids = tok.encode("a réd círcle 🙂")
    assert tok.unk_id in ids and "<unk>" in tok.decode(ids)
    a, b = (tiny_pipeline.text_to_image(["a réd círcle 🙂"], num_steps=2, seed=3, output="tensor")
            for _ in range(2))
    assert torch.equal(a, b)


def test_broken_metadata_line_names_the_line(tmp_path, png, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.move(png(), folder / "a.png")
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a red circle"}\n'
                                           '{"file_name": "b.png", "text": \n')
    line = fails_with(["text-tokenizer", "--data", "folder", "--root", str(folder),
                       "--out", str(tmp_path / "tok")], capsys)
    assert "metadata.jsonl line 2 is not valid JSON" in line
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("old, new, expected", [
    ("    dim: 64", "    dim: sixty-four", 'bad value for "dim"'),
    ("    batch_size: 8", "    batch_size: [8]", '"batch_size"'),
])
def test_wrong_type_in_a_yaml_recipe(old, new, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    text = UNIFIED_DEBUG.read_text()
    assert old in text
    bad.write_text(text.replace(old, new))
    assert expected in fails_with(["fit", "--config", str(bad)], capsys, code=2)


def _bump_version(config: Path, key: str = "format_version") -> None:
    meta = json.loads(config.read_text())
    meta[key] = 99
    config.write_text(json.dumps(meta))


def test_tokenizer_directory_from_another_version(tokenizer_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "image_tokenizer"
    shutil.copytree(tokenizer_dirs["image_tokenizer"], old)
    _bump_version(old / "config.json")
    argv = ["fit", "--config", str(UNIFIED_DEBUG), "--trainer.max_steps", "1",
            "--model.init_args.image_tokenizer", str(old),
            "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"]]
    line = fails_with(argv, capsys)
    assert f"{old / 'config.json'} is not a unigen image tokenizer config" in line
    assert "found 99" in line


@pytest.mark.parametrize("part", ["pipeline.json", "image_tokenizer/config.json"])
def test_model_directory_from_another_version(part, tiny_model_dir, png, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _bump_version(model / part)
    line = fails_with(_caption(model, png(), tmp_path / "c.json"), capsys)
    assert str(model / part) in line and "99" in line


def _other_codebook_tokenizer(path: Path) -> None:
    """Same architecture and downsampling as the shared tiny tokenizer, 16 codes instead of 125."""
    from unigen.tokenizers.fsq import FSQTokenizer

    FSQTokenizer(levels=[4, 4], block_out_channels=[16, 16, 32], latent_channels=8,
                 norm_num_groups=8).save_pretrained(path)


def test_pipeline_with_another_codebook(tiny_model_dir, png, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _other_codebook_tokenizer(model / "image_tokenizer")
    line = fails_with(_caption(model, png(), tmp_path / "c.json"), capsys)
    assert "codebook size mismatch" in line and "125" in line and "16" in line


def test_export_of_a_checkpoint_trained_with_another_codebook(tokenizer_dirs, tmp_path, capsys):
    from unigen.training.unified_module import UnifiedModule

    tok = tmp_path / "image_tokenizer"
    shutil.copytree(tokenizer_dirs["image_tokenizer"], tok)
    module = UnifiedModule(image_tokenizer=str(tok), image_size=32, dim=32, depth=1, heads=4,
                           text_tokenizer=tokenizer_dirs["text_tokenizer"])
    module.configure_model()
    ckpt = tmp_path / "model.ckpt"
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, ckpt)
    _other_codebook_tokenizer(tok)  # the tokenizer directory was replaced since
    line = fails_with(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    assert "codebook size mismatch" in line and f"image tokenizer at {tok} has 16 codes" in line
    assert "125 image codes" in line
    assert not (tmp_path / "out").exists()


def test_resuming_with_another_codebook(tokenizer_dirs, tmp_path, monkeypatch, capsys):
    from resume_testkit import unified_case

    monkeypatch.chdir(tmp_path)
    tok = tmp_path / "image_tokenizer"
    shutil.copytree(tokenizer_dirs["image_tokenizer"], tok)
    case = unified_case({**tokenizer_dirs, "image_tokenizer": str(tok)})
    main([*case.argv(tmp_path / "run"), "--trainer.max_steps", "1"])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    _other_codebook_tokenizer(tok)
    line = fails_with([*case.argv(tmp_path / "run"), "--ckpt_path", str(last)], capsys)
    assert "codebook size mismatch" in line and "has 16 codes" in line
    assert last.read_bytes() == before


# -- option values of the model verbs: refused before the model is loaded, nothing written -------
def _generate(model: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--prompt", "a red circle", "--steps", "2",
            "--out", str(out), *extra]


@pytest.mark.parametrize("extra, message", [
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--device", "meta"], "--device 'meta': unigen runs on cpu | cuda | cuda:N | mps"),
    (["--num-per-prompt", "0"], "--num-per-prompt must be at least 1, got 0"),
    (["--num-per-prompt", "-1"], "--num-per-prompt must be at least 1, got -1"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--guidance", "-1"], "--guidance must be a finite number >= 0 (1: no guidance, 0: "
                           "unconditional), got -1"),
    (["--guidance", "nan"], "--guidance must be a finite number >= 0"),
    (["--negative-prompt", "a blue square"], "--negative-prompt acts through classifier-free "
                                             "guidance; set --guidance to a value other than 1"),
    (["--guidance", "2", "--negative-prompt", "a", "--negative-prompt", "b"],
     "--negative-prompt: give one, or one per --prompt (1); got 2"),
])
def test_generate_refuses_unusable_options(extra, message, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert message in fails_with(_generate(tiny_model_dir, out, *extra), capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("verb", ["generate", "caption", "answer", "eval", "tokenize"])
def test_cuda_without_a_gpu_is_one_line(verb, tiny_model_dir, png, tmp_path, capsys):
    argv = {"generate": _generate(tiny_model_dir, tmp_path / "g.png"),
            "caption": _caption(tiny_model_dir, png(), tmp_path / "c.json"),
            "answer": ["answer", "--model", str(tiny_model_dir), "--image", str(png()),
                       "--question", "what?", "--out", str(tmp_path / "a.json")],
            "eval": ["eval", "--model", str(tiny_model_dir), "--config",
                     str(ROOT / "recipes" / "debug" / "eval_debug.yaml"), "--out",
                     str(tmp_path / "eval")],
            "tokenize": ["tokenize", "--tokenizer", str(tiny_model_dir), "--data", "shapes",
                         "--out", str(tmp_path / "shards")]}[verb]
    line = fails_with([*argv, "--device", "cuda"], capsys)
    assert "--device cuda: no CUDA GPU is available on this machine" in line
    assert not any(p.suffix != ".png" for p in tmp_path.iterdir())  # only the input image


def test_out_that_is_a_directory(tiny_model_dir, png, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    assert "--out" in fails_with(_generate(tiny_model_dir, folder), capsys)
    line = fails_with(_caption(tiny_model_dir, png(), folder), capsys)
    assert f"--out {folder} is a directory" in line
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("name", ["clash.json", "grid", "grid.gif"])
def test_generate_out_must_name_an_image_format(name, tiny_model_dir, tmp_path, capsys):
    line = fails_with(_generate(tiny_model_dir, tmp_path / name), capsys)
    assert "the extension picks the image format" in line and ".png, .jpg, .jpeg, .webp" in line
    assert list(tmp_path.iterdir()) == []


def test_generate_writes_the_format_its_extension_names(tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    for name, fmt in (("grid.jpg", "JPEG"), ("grid.png", "PNG")):
        assert main(_generate(tiny_model_dir, tmp_path / name)) == 0
        with Image.open(tmp_path / name) as img:
            assert img.format == fmt
    settings = json.loads((tmp_path / "grid.settings.json").read_text())
    assert settings["steps"] == 2 and settings["prompts"] == ["a red circle"]
    assert "(1 image;" in capsys.readouterr().out


def test_zero_steps_are_refused_not_replaced_by_the_default(tiny_model_dir, png, tmp_path, capsys):
    for argv in (_caption(tiny_model_dir, png(), tmp_path / "c.json", "--steps", "0"),
                 ["answer", "--model", str(tiny_model_dir), "--image", str(png()), "--question",
                  "what?", "--steps", "0", "--out", str(tmp_path / "a.json")]):
        assert "--steps must be at least 1, got 0" in fails_with(argv, capsys)
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "a.json").exists()


def test_caption_and_answer_record_their_settings(tiny_model_dir, png, tmp_path):
    image = png()
    assert main(_caption(tiny_model_dir, image, tmp_path / "c.json", "--seed", "5")) == 0
    settings = json.loads((tmp_path / "c.settings.json").read_text())
    assert settings["seed"] == 5 and settings["steps"] == 2 and settings["sampler"] == "confident"
    assert settings["images"] == [str(image)] and settings["model"] == str(tiny_model_dir)
    assert main(["answer", "--model", str(tiny_model_dir), "--image", str(image), "--question",
                 "what?", "--out", str(tmp_path / "a.json")]) == 0
    settings = json.loads((tmp_path / "a.settings.json").read_text())
    assert settings["steps"] == 4 and settings["questions"] == ["what?"]  # the answer default
    assert len(json.loads((tmp_path / "a.json").read_text())) == 1


def test_export_of_a_file_that_is_not_a_checkpoint(png, tmp_path, capsys):
    path = png()
    line = fails_with(["export", "--ckpt", str(path), "--out", str(tmp_path / "out")], capsys)
    assert line == f"unigen: error: not a Lightning checkpoint: {path}"
    assert not (tmp_path / "out").exists()


def test_help_names_defaults(capsys):
    for verb in ("generate", "caption", "answer"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "cpu | cuda | cuda:N | mps (default cpu)" in text
        assert "sample i uses seed + i (default 0)" in text
        if verb != "generate":
            assert "none | resize | center_crop | pad (default none" in text
        assert "decoding steps, at least 1 (default" in text
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 1.0: no guidance; 0: unconditional)" in text and "images per prompt, at least 1 (default 1)" in text


def lightning_fails_with(argv: list[str], capsys) -> str:
    """``fails_with`` for the Lightning verbs: Lightning's loggers may still hold an earlier test's
    captured (closed) stream and print "--- Logging error ---" tracebacks there, so only the
    ``unigen:`` line and the exit code are checked."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unigen:")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("verb", ["validate", "test"])
def test_lightning_verbs_name_a_file_that_is_not_a_checkpoint(verb, png, tokenizer_dirs, tmp_path,
                                                                capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = png()
    line = lightning_fails_with([verb, "--config", str(UNIFIED_DEBUG), "--ckpt_path", str(path),
                       "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
                       "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"]], capsys)
    assert line == f"unigen: error: not a Lightning checkpoint: {path}"


@pytest.mark.parametrize("verb", ["validate", "test", "predict"])
def test_export_dir_is_refused_outside_fit(verb, tokenizer_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = lightning_fails_with([verb, "--config", str(UNIFIED_DEBUG), "--export_dir", str(tmp_path / "m"),
                       "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
                       "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
                       "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
                       "--trainer.limit_predict_batches", "1"], capsys)
    assert line.startswith(f"unigen: error: --export_dir applies to fit only, not to {verb}")
    assert not (tmp_path / "m").exists()


def test_validate_without_a_checkpoint_warns_that_the_weights_are_fresh(tokenizer_dirs, tmp_path,
                                                                         capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["validate", "--config", str(UNIFIED_DEBUG), "--trainer.limit_val_batches", "1",
            "--model.init_args.val_sampling", "{}",
            "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
            "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"]]
    main(args)
    warning = "unigen: warning: validate without --ckpt_path uses the recipe's freshly initialised"
    assert warning in capsys.readouterr().err


def test_a_save_never_replaces_the_users_own_files(tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("hi")
    line = fails_with(["text-tokenizer", "--num-samples", "20", "--vocab-size", "128", "--out",
                       str(folder)], capsys)
    assert f"cannot save to {folder}: the directory is not empty" in line
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "sub"]
    afile = tmp_path / "a.png"
    afile.write_bytes(b"png")
    line = fails_with(["text-tokenizer", "--num-samples", "20", "--vocab-size", "128", "--out",
                       str(afile)], capsys)
    assert f"cannot save to {afile}: it is a file" in line and afile.read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "mine"]


@pytest.mark.parametrize("edit, message", [
    (lambda c: {**c, "bogus": 1}, "not a transformer config this unigen builds"),
    (lambda c: {**c, "sequence": {**c["sequence"], "bogus": 1}}, "not a transformer config this unigen builds"),
    (lambda c: [c], "must hold a JSON object, got a JSON array"),
])
def test_an_edited_transformer_config_is_one_line_naming_the_file(edit, message, tiny_model_dir, tmp_path,
                                                                  capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config_file = model / "transformer" / "config.json"
    config_file.write_text(json.dumps(edit(json.loads(config_file.read_text()))))
    line = fails_with(["generate", "--model", str(model), "--prompt", "a red circle", "--steps", "2",
                       "--out", str(tmp_path / "g.png")], capsys)
    assert str(config_file) in line and message in line, line


def test_a_config_that_is_not_utf8_names_the_file(tiny_model_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config_file = model / "transformer" / "config.json"
    config_file.write_bytes(b"\xff" + config_file.read_bytes())
    line = fails_with(["generate", "--model", str(model), "--prompt", "a red circle", "--steps", "2",
                       "--out", str(tmp_path / "g.png")], capsys)
    assert f"transformer config file {config_file} is not UTF-8 text" in line, line


def test_export_of_a_diverged_checkpoint_is_refused(tokenizer_dirs, tmp_path, capsys):
    """Weights that went NaN draw nothing: exporting them once succeeded with rc 0."""
    from unigen.training.unified_module import UnifiedModule

    module = UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4)
    module.configure_model()
    with torch.no_grad():
        module.net.blocks[0].mlp.down.weight[0, 0] = float("nan")
    ckpt = tmp_path / "model.ckpt"
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, ckpt)
    line = fails_with(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    assert f"{ckpt}: weight 'net.blocks.0.mlp.down.weight' holds NaN or infinite values" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda m: {**m, "trained_task": ["t2i"]}, "has unknown keys ['trained_task']; this unigen reads"),
    (lambda m: {**m, "format_version": True}, "has format version True; this unigen reads 1 (the integer)"),
    (lambda m: {**m, "image_size": 64}, "says image_size 64, but its transformer and image tokenizer make 32x32"),
])
def test_an_edited_pipeline_json_is_refused_not_ignored(edit, message, tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    meta_file = model / "pipeline.json"
    meta_file.write_text(json.dumps(edit(json.loads(meta_file.read_text()))))
    line = fails_with(["generate", "--model", str(model), "--prompt", "a red circle", "--steps", "2",
                       "--out", str(tmp_path / "g.png")], capsys)
    assert str(meta_file) in line and message in line, line
