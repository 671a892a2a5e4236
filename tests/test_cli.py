import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_testkit import fails_with

from unigen.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "recipes" / "debug" / "unified_debug.yaml"


def test_help_lists_every_verb(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("fit", "validate", "test", "predict", "generate", "caption", "answer", "task",
                 "eval", "demo", "text-tokenizer", "tokenize", "merge-lora", "export", "inpaint",
                 "img2img", "reconstruct"):
        assert f"  {verb} " in out


def test_help_names_the_plugin_mechanisms(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: unigen [--plugin MODULE ...] <verb>")
    assert "UNIGEN_PLUGINS" in out and "`unigen.plugins` entry point" in out


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_the_package_and_its_pinned_versions(flag, capsys):
    """One version everywhere: the package's __version__, its installed metadata and pyproject."""
    import tomllib
    from importlib.metadata import version

    import torch

    assert main([flag]) == 0
    out = capsys.readouterr().out.strip()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert declared == version("unigen")
    assert out.startswith(f"unigen {declared} (torch {torch.__version__.split('+')[0]}")
    assert f"lightning {version('lightning')}" in out and "\n" not in out


def test_python_dash_m_matches_console_script():
    out = subprocess.run([sys.executable, "-m", "unigen", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout


def test_unknown_verb_is_one_line(capsys):
    assert main(["paint"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unigen: error: unknown verb 'paint'") and "\n" not in err


@pytest.mark.parametrize("argv, expected", [
    (["generate", "--prompt", "a"], "unigen generate: the following arguments are required: --model, --out"),
    (["caption", "--model", "m", "--image", "a.png", "--out", "c.json", "--steps", "two"],
     "unigen caption: argument --steps: invalid int value: 'two'"),
    (["answer", "--model", "m", "--image", "a.png", "--question", "q", "--out", "a.json", "--sampl", "x"],
     "unigen answer: ambiguous option: --sampl could match --sampler, --sampler-arg"),
    (["answer", "--model", "m", "--image", "a.png", "--question", "q", "--out", "a.json", "--y"],
     "unigen answer: unrecognized arguments: --y"),
])
def test_a_verbs_usage_error_is_one_line_without_the_usage_page(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == f"unigen: error: {expected} (unigen {argv[0]} --help lists the options)"


@pytest.mark.parametrize("override, expected", [
    (["--model.init_args.dim", "abc"], 'bad value for "dim"'),
    (["--model.init_args.not_a_key", "1"], "unknown recipe key 'model.init_args.not_a_key'"),
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
    assert "unknown recipe key 'colour' (in one of the --config files)" in capsys.readouterr().err


def test_a_recipe_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(DEBUG.read_text().replace("# Tiny", "# Tiny caf\xe9").encode("latin-1"))
    for argv in (["--config", str(latin)], [f"--config={latin}"]):
        with pytest.raises(SystemExit) as exit_:
            main(["fit", *argv])
        assert exit_.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"unigen: error: --config {latin} is not UTF-8 text (invalid continuation byte at "
                       f"byte {latin.read_bytes().index(bytes([0xe9]))})"], err


def test_missing_tokenizer_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(DEBUG), "--trainer.max_steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1
    assert err[-1].startswith("unigen: error:") and "runs/debug" in err[-1]
    # a fresh clone hits this first: the line names the command that makes the missing directory
    assert "`unigen text-tokenizer --data DATA --out runs/debug/text_tokenizer`" in err[-1]


@pytest.mark.parametrize("verb, option, default", [
    ("text-tokenizer", "--vocab-size", "default 4096"),
    ("text-tokenizer", "--kind", "default wordlevel"),
    ("text-tokenizer", "--seed", "default 0"),
])
def test_options_have_help_with_their_default(verb, option, default, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    described = out.split("options:")[1].split(f" {option} ")[1].split(" --")[0]
    assert default in described


def test_eval_help_sweep_example_is_the_documented_key(capsys):
    from unigen.evaluate import load_eval_config, parse_sweep
    from unigen.evaluate.sweep import check_sweep

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    example = out.split("--sweep KEY=V1,V2,... evaluate every combination, e.g. ")[1].split()[0]
    assert example == "t2i.guidance_scale=1,2,3"
    axes = parse_sweep([example])  # and the parser accepts it on a real recipe
    check_sweep(load_eval_config(ROOT / "recipes" / "debug" / "eval_debug.yaml"), axes)
    assert axes == {"t2i.guidance_scale": [1, 2, 3]}


def test_generate_caption_answer_verbs(tokenizer_dirs, tmp_path, capsys):
    import json

    import torch

    from unigen.data.shapes import ShapesDataset, render
    from unigen.pipeline import UnifiedPipeline
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    model = tmp_path / "model"
    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4).export(model)
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "--prompt",
                 "two blue squares", "--steps", "2", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert json.loads((tmp_path / "grid.settings.json").read_text())["prompts"] == ["a red circle", "two blue squares"]
    assert json.loads((tmp_path / "grid.settings.json").read_text())["network_calls"] == [2, 2]
    # a budget beyond the image's tokens is recorded as asked, next to the calls actually run
    tokens = UnifiedPipeline.from_pretrained(model).space.sequence.num_image_tokens
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "--steps", "100000",
                 "--out", str(tmp_path / "long.png")]) == 0
    long = json.loads((tmp_path / "long.settings.json").read_text())
    assert long["steps"] == 100000 and 1 <= long["network_calls"][0] <= tokens
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "--steps", "2",
                 "--candidates", "2", "--out", str(tmp_path / "best.png")]) == 0
    assert json.loads((tmp_path / "best.settings.json").read_text())["candidates"] == 2
    # sampler options from the command line (values as YAML), recorded next to the grid
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "--steps", "3",
                 "--sampler", "confident", "--sampler-arg", "schedule=cosine", "--sampler-arg",
                 "choice_temperature=4.5", "--sampler-arg", "temperature=1",
                 "--out", str(tmp_path / "conf.png")]) == 0
    assert json.loads((tmp_path / "conf.settings.json").read_text())["sampler_kwargs"] == {
        "schedule": "cosine", "choice_temperature": 4.5, "temperature": 1}
    for bad, message in ((["--sampler-arg", "nope=1"], "--sampler-arg nope=1: sampler 'confident' does not take this option"),
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
    before = img.read_bytes()
    for verb, extra in (("caption", []), ("answer", ["--question", "what color is the star?"])):
        line = fails_with([verb, "--model", model, "--image", img, *extra, "--out", img], capsys)
        assert f"--out {img} is an input of this command" in line
        picture = tmp_path / f"{verb}.png"  # JSON under an image's name: refused, nothing written
        line = fails_with([verb, "--model", model, "--image", img, *extra, "--out", picture], capsys)
        assert f"--out {picture}: {verb} writes its results as JSON; give a .json path" in line
        assert not picture.exists()
    assert img.read_bytes() == before


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


# errors raised while LightningCLI builds the recipe's classes: the constructor's own message
# (jsonargparse wraps it in "Does not validate against any of the Union subtypes"), exit 1
@pytest.mark.parametrize("override, expected", [
    (["--model.init_args.loss", "foo"], "loss must be one of ('ce', 'elbo'), got 'foo'"),
    (["--model.init_args.schedule", "foo"], "unknown noise schedule 'foo'"),
    (["--model.init_args.tasks", "{bogus: 1}"], "unknown task 'bogus'"),
    (["--data.init_args.batch_size", "0"], "batch_size must be positive, got 0"),
    (["--model.init_args.val_sampling", "{num_samplez: 3}"],
     "val_sampling: unknown option 'num_samplez' (did you mean 'num_samples'?)"),
    (["--model.init_args.dim", "0"], "dim must be a positive integer, got 0"),
    (["--model.init_args.depth", "0"], "depth must be a positive integer, got 0"),
    (["--trainer.max_steps", "-5"], "`max_steps` must be a non-negative integer"),
])
def test_values_a_recipe_class_rejects_give_its_message(override, expected, capsys, tmp_path,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(DEBUG), *override])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("unigen:")]
    assert len(lines) == 1 and expected in lines[0], err[-2000:]
    # (a "Traceback" of Python's logging may appear here: Lightning's log handler still writes to
    # an earlier test's captured stream; the CLI's own output is checked)
    assert "Union subtypes" not in err and "NoneType" not in err
    assert not (tmp_path / "runs").exists()


def test_an_accelerator_without_its_package_is_one_line(capsys, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("torch_xla is installed here")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(DEBUG), "--trainer.accelerator", "tpu"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "ModuleNotFoundError: Requirement" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("unigen:")]
    assert "needs a package that is not installed" in line and "torch_xla" in line


def test_union_wrapper_without_a_cause_still_names_the_real_error():
    """The fallback when jsonargparse gives no ``__cause__``: the first listed error that is not
    the ``NoneType`` alternative, with the class."""
    from unigen.errors import _first_line

    err = ValueError("Does not validate against any of the Union subtypes\nSubtypes: [<class "
                     "'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]\n"
                     "Errors:\n  - \"unknown task 'bogus'; known: t2i\"\n  - Expected a <class "
                     "'NoneType'>\nGiven value type: <class 'jsonargparse._namespace.Namespace'>\n"
                     "Given value: Namespace(class_path='my.Module', init_args=Namespace())")
    assert _first_line(err) == "unknown task 'bogus'; known: t2i (in my.Module)"


class _BadImages(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise ValueError(f"cannot decode image /data/{i:03d}.png: image file is truncated")


def test_an_error_in_a_loader_worker_is_its_own_line_not_torchs_wrapper():
    from unigen.errors import _first_line

    with pytest.raises(ValueError, match="in DataLoader worker process 0") as exc:
        next(iter(torch.utils.data.DataLoader(_BadImages(), num_workers=1)))
    assert _first_line(exc.value) == "cannot decode image /data/000.png: image file is truncated"


def test_fit_then_test_and_predict_a_checkpoint(tokenizer_dirs, tmp_path, monkeypatch, capsys):
    """``unigen test`` reports the per-task losses and sample metrics on the test split;
    ``unigen predict`` writes generated images, captions and answers with their settings."""
    import json

    monkeypatch.chdir(tmp_path)
    common = ["--config", str(DEBUG), "--model.init_args.image_tokenizer",
              tokenizer_dirs["image_tokenizer"], "--model.init_args.text_tokenizer",
              tokenizer_dirs["text_tokenizer"], "--trainer.enable_progress_bar", "false",
              "--model.init_args.val_sampling", "{num_samples: 2, num_steps: 2, text_steps: 2}",
              "--data.init_args.num_test", "4", "--data.init_args.batch_size", "4"]
    assert main(["fit", *common, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]) == 0
    ckpt = tmp_path / "runs" / "debug" / "unified" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    capsys.readouterr()
    assert main(["test", *common, "--ckpt_path", str(ckpt)]) == 0
    out = capsys.readouterr().out
    for key in ("test/loss", "test/loss_t2i", "test/loss_vqa", "test/loss_inpaint",
                "test/t2i_checker_accuracy", "test/vqa_exact_match"):
        assert key in out, out
    assert main(["predict", *common, "--ckpt_path", str(ckpt)]) == 0
    folder = tmp_path / "runs" / "debug" / "unified" / "predictions"
    assert f"wrote 4 predictions to {Path('runs/debug/unified/predictions')}" in capsys.readouterr().out
    written = json.loads((folder / "predictions.json").read_text())
    assert written["settings"]["num_steps"] == 2 and written["settings"]["checkpoint"] == str(ckpt)
    rows = written["predictions"]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    for row in rows:
        assert {"prompt", "generated", "input", "caption", "question", "answer"} <= set(row)
        assert (folder / row["generated"]).stat().st_size > 0 and (folder / row["input"]).is_file()


def test_a_model_seed_that_differs_from_the_data_seed_is_one_line(tokenizer_dirs, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(DEBUG), "--model.init_args.seed", "3", "--trainer.max_steps", "1",
              "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
              "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"]])
    assert exc.value.code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unigen:")]
    assert err == ["unigen: error: the model and the data module set 'seed' to different values; "
                   "give both the same (--model.init_args.seed V --data.init_args.seed V)"]


# -- the model verbs build their sampler the way the pipeline does; any pipeline kind loads -------
@pytest.fixture(scope="module")
def model_dirs(cli_models):
    """A masked and an autoregressive pipeline directory (tiny, untrained) and a 32x32 image."""
    return cli_models


one_error_line = fails_with


def test_a_plugin_sampler_that_requires_a_special_id_runs_from_the_command_line(model_dirs, tmp_path,
                                                                              monkeypatch):
    import json

    from unigen.sampling import SAMPLERS, MaskGITSampler

    built = []

    class NeedsEos(MaskGITSampler):
        needs_special_ids = ("eos_id",)

        def __init__(self, eos_id: int, **kwargs) -> None:  # required: no default
            super().__init__(**kwargs)
            built.append(eos_id)

    monkeypatch.setitem(SAMPLERS._items, "needs_eos", NeedsEos)
    out = tmp_path / "g.png"
    assert main(["generate", "--model", str(model_dirs / "masked"), "--prompt", "a red circle",
                 "--steps", "2", "--sampler", "needs_eos", "--sampler-arg", "temperature=0",
                 "--out", str(out)]) == 0
    assert built and set(built) == {4}  # the vocabulary's <eos>, for the check and the decode
    assert json.loads(out.with_suffix(".settings.json").read_text())["sampler_kwargs"] == {"temperature": 0}


@pytest.mark.parametrize("extra, message", [
    (["--sampler-arg", "mask_id=3"], "--sampler-arg: mask_id is set from the vocabulary"),
    (["--sampler", "confident", "--sampler-arg", "threshold=abc"],
     "--sampler-arg threshold='abc': sampler 'confident' cannot use this value (could not "
     "convert string to float: 'abc')"),
    (["--sampler", "semi_ar", "--sampler-arg", "block_length=0"],
     "--sampler-arg block_length=0: sampler 'semi_ar' cannot use this value"),
    (["--sampler-arg", "schedule=[1"], "--sampler-arg 'schedule=[1': the value is not YAML"),
])
def test_sampler_options_are_one_line_naming_the_option(extra, message, model_dirs, tmp_path, capsys):
    for verb in (["generate", "--prompt", "a"], ["caption", "--image", str(model_dirs / "x.png")]):
        argv = [*verb, "--model", str(model_dirs / "masked"), "--steps", "2", *extra,
                "--out", str(tmp_path / ("g.png" if verb[0] == "generate" else "c.json"))]
        assert message in one_error_line(argv, capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_autoregressive_export_generates_and_refuses_what_it_cannot_do(model_dirs, tmp_path,
                                                                         capsys):
    import json

    ar = str(model_dirs / "ar")
    out = tmp_path / "g.png"
    assert main(["generate", "--model", ar, "--prompt", "a red circle", "--prompt", "a star",
                 "--guidance", "2", "--sampler-arg", "temperature=0.5", "--sampler-arg", "top_k=8",
                 "--out", str(out)]) == 0
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["kind"] == "autoregressive" and settings["guidance"] == 2.0
    assert settings["sampler_kwargs"] == {"temperature": 0.5, "top_k": 8}
    for extra, message in ((["--steps", "4"], "--steps: --model"),
                           (["--sampler", "maskgit"], "--sampler: --model"),
                           (["--candidates", "2"], "--candidates: --model"),
                           (["--guidance", "2", "--negative-prompt", "a star"],
                            "--negative-prompt: --model"),
                           (["--sampler-arg", "threshold=1"], "--sampler-arg threshold: the "
                                                               "autoregressive pipeline"),
                           (["--sampler-arg", "top_k=0"], "--sampler-arg top_k=0: must be")):
        line = one_error_line(["generate", "--model", ar, "--prompt", "a", *extra,
                               "--out", str(tmp_path / "bad.png")], capsys)
        assert message in line, line
    for verb, extra in (("caption", []), ("answer", ["--question", "what?"])):
        line = one_error_line([verb, "--model", ar, "--image", str(model_dirs / "x.png"), *extra,
                               "--out", str(tmp_path / "t.json")], capsys)
        assert "holds an autoregressive pipeline, which generates images from text only" in line
        assert f"`unigen {verb}` needs a masked (unified) pipeline" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "g.settings.json"]


def test_text_tokenizer_refuses_a_sample_count_below_one(tmp_path, capsys):
    line = fails_with(["text-tokenizer", "--data", "shapes", "--num-samples", "-5", "--out", tmp_path / "t"], capsys)
    assert line == "unigen: error: --num-samples must be at least 1, got -5"
    assert not (tmp_path / "t").exists()
