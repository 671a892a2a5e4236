"""Every YAML under recipes/ is parsed and instantiated; every debug recipe runs `fit` briefly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unigen.cli import instantiate_recipe, main

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
PRESET_BASE = ROOT / "recipes" / "unified_shapes.yaml"
# presets that layer on another recipe than PRESET_BASE
PRESET_BASES = {"tokenizer_gpu.yaml": ROOT / "recipes" / "tokenizer_fsq_shapes.yaml"}


def kind(path: Path) -> str:
    rel = path.relative_to(ROOT / "recipes").as_posix()
    if rel == "demo.yaml":
        return "demo"
    if rel.startswith("presets/"):
        return "preset"
    data = yaml.safe_load(path.read_text()) or {}
    if "model" in data and "data" in data:
        return "lightning"
    if Path(rel).name.startswith("eval") or rel.startswith("demo/eval"):
        return "eval"
    return "unknown"


def test_recipes_exist_and_are_all_known_kinds():
    assert len(RECIPES) >= 10
    unknown = [p.relative_to(ROOT).as_posix() for p in RECIPES if kind(p) == "unknown"]
    assert not unknown, f"recipes of no known kind: {unknown}"


@pytest.mark.parametrize("path", [p for p in RECIPES if kind(p) == "lightning"],
                         ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_lightning_recipe_instantiates(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing a recipe writes lands in the repository
    cli = instantiate_recipe(path)
    assert "dropped" not in capsys.readouterr().err  # no init_args lost on the way
    assert cli.model is not None and cli.datamodule is not None and cli.trainer is not None
    size = cli.config.data.init_args.get("image_size")
    if size is not None and "image_size" in cli.model.hparams:  # linked by the CLI, typed once
        assert cli.model.hparams.image_size == size


@pytest.mark.parametrize("path", [p for p in RECIPES if kind(p) == "preset"],
                         ids=lambda p: p.name)
def test_presets_layer_on_a_recipe(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = yaml.safe_load(path.read_text())
    assert "trainer" in text or "model" in text
    # a GPU/multi-device preset is checked on one CPU: its keys are parsed and type-checked first,
    # then these overrides let the rest build here
    cpu = ["--trainer.accelerator", "cpu", "--trainer.precision", "bf16-mixed", "--trainer.strategy",
           "auto", "--trainer.devices", "1", "--trainer.num_nodes", "1"]
    cli = instantiate_recipe(PRESET_BASES.get(path.name, PRESET_BASE), ["--config", str(path), *cpu])

    def assert_applied(preset: dict, config, where: str) -> None:
        for key, value in preset.items():
            if isinstance(value, dict):
                assert_applied(value, config[key], f"{where}.{key}")
            else:
                assert config[key] == value, f"{where}.{key}"

    assert "dropped" not in capsys.readouterr().err  # a preset keeps the base recipe's init_args
    for section in ("model", "data"):  # every value the preset sets is in the parsed config
        assert_applied(text.get(section, {}), cli.config[section], section)


def test_demo_recipe_is_valid():
    from unigen.demo import load_demo_config

    config = load_demo_config(ROOT / "recipes" / "demo.yaml")
    for key in ("image_tokenizer_recipe", "unified_recipe", "evaluation"):
        assert (ROOT / config[key]).is_file(), key


def test_demo_runs_end_to_end_prints_its_numbers_and_replaces_an_earlier_run(tmp_path, monkeypatch,
                                                                           capsys):
    """The demo's four stages on the debug recipes (seconds), twice into one folder."""
    import json

    from unigen.demo import run_demo

    monkeypatch.chdir(ROOT)  # the recipe paths are relative to the project, as in `make demo`
    out = tmp_path / "demo"
    config = tmp_path / "demo.yaml"
    config.write_text(
        f"out_dir: {out}\nseed: 0\ntext_tokenizer: {{data: shapes, num_samples: 200, vocab_size: 256}}\n"
        "image_tokenizer_recipe: recipes/debug/tokenizer_fsq_debug.yaml\n"
        "unified_recipe: recipes/debug/unified_debug.yaml\n"
        "evaluation: recipes/debug/eval_debug.yaml\n")
    first = run_demo(config)
    printed = capsys.readouterr().out
    assert "image tokenizer, last validation:" in printed and "val/psnr" in printed
    assert "unified transformer, last validation:" in printed and "val/loss" in printed
    assert "vqa_exact_match" in printed and f"wrote {out / 'eval' / 'report.md'}" in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["validation"]["image_tokenizer"]["val/psnr"] > 0
    assert saved["metrics"] == pytest.approx(first["metrics"], nan_ok=True)

    second = run_demo(config)
    printed = capsys.readouterr().out
    assert f"replacing the earlier demo run in {out / 'unified_run'}" in printed
    # no `-v1` files beside the first run's: last.ckpt is the second run's own
    names = sorted(p.name for p in (out / "unified_run" / "checkpoints").iterdir())
    assert not any("-v1" in n for n in names) and "last.ckpt" in names
    assert second["metrics"] == pytest.approx(first["metrics"], nan_ok=True)  # seeded


@pytest.mark.parametrize("path", [p for p in RECIPES if kind(p) == "eval"], ids=lambda p: p.name)
def test_eval_recipes_are_valid(path):
    import unigen.evaluate as evaluate  # a broken import fails here, it does not skip
    config = evaluate.parse_config(evaluate.load_eval_config(path))  # names checked too
    assert config.tasks and all(settings.metrics or settings.fid
                                for settings in config.tasks.values())


# recipes whose caption task learns the exhaustive shapes descriptions (issue #5's recall target)
DESCRIBING = ["unified_shapes.yaml", "understand_shapes.yaml", "unified_shapes_cpu.yaml",
              "debug/understand_debug.yaml"]


@pytest.mark.parametrize("name", DESCRIBING)
def test_recipes_caption_on_descriptions_that_fit(name, tmp_path, monkeypatch):
    from unigen.data.shapes import Scene, ShapeObject, description

    monkeypatch.chdir(tmp_path)
    model = instantiate_recipe(ROOT / "recipes" / name).model
    mixture = model.mixture
    assert mixture.tasks[mixture.names.index("caption")].text == "descriptions"
    if "t2i" in mixture.names:  # prompts stay the varied template captions
        assert mixture.tasks[mixture.names.index("t2i")].text == "captions"
    # the longest description (4 objects off the center) plus <eos>, one token per word
    four = Scene([ShapeObject("circle", "red", "small", r, c) for r, c in
                  [(0, 0), (0, 2), (2, 0), (2, 2)]])
    assert len(description(four).split()) + 1 <= model.hparams.max_text_len


UNIFIED_DEBUG = ["unified_debug.yaml", "t2i_debug.yaml", "understand_debug.yaml"]


@pytest.mark.parametrize("name", UNIFIED_DEBUG)
def test_unified_debug_recipes_fit(name, tokenizer_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "recipes" / "debug" / name
    main(["fit", "--config", str(recipe),
          "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
          "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
          "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
          "--export_dir", str(tmp_path / "model")])
    logs = list(tmp_path.rglob("metrics.csv"))
    assert logs and "train/loss" in logs[0].read_text()
    assert list(tmp_path.rglob("config.yaml")), "the CLI saves the config next to the run"
    assert list(tmp_path.rglob("samples/*.png")), "validation writes sample grids"
    from unigen.pipeline import UnifiedPipeline

    pipe = UnifiedPipeline.from_pretrained(tmp_path / "model")
    assert pipe.image_size == 32


def test_recipe_metrics_are_logged_at_validation(tokenizer_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "recipes" / "debug" / "unified_debug.yaml"
    main(["fit", "--config", str(recipe),
          "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
          "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
          "--model.init_args.val_sampling",
          "{num_samples: 4, num_steps: 2, metrics: [vqa_exact_match, bleu4, compositional_accuracy]}",
          "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"])
    header = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    for key in ("val/vqa_exact_match", "val/bleu4", "val/compositional_accuracy/overall"):
        assert key in header, header


def test_tokenizer_metrics_are_refused_at_unified_validation():
    from unigen.training.validation_sampling import build_recipe_metrics

    with pytest.raises(ValueError, match="scores tokenizers"):
        build_recipe_metrics(["psnr"], None)


def _loggers(path: Path) -> list[dict]:
    logger = ((yaml.safe_load(path.read_text()) or {}).get("trainer") or {}).get("logger")
    return [lg for lg in (logger if isinstance(logger, list) else [logger]) if isinstance(lg, dict)]


def test_recipe_loggers_leave_save_dir_to_default_root_dir():
    """A hard-coded save_dir keeps logs and sample grids in the recipe's folder when a run is
    moved with --trainer.default_root_dir; `unigen fit` fills it in from default_root_dir."""
    fixed = [p.relative_to(ROOT).as_posix() for p in RECIPES for lg in _loggers(p)
             if "save_dir" in (lg.get("init_args") or {})]
    assert not fixed, f"recipes with a hard-coded logger save_dir: {fixed}"
    assert any(_loggers(p) for p in RECIPES), "no recipe configures a logger: is the scan wrong?"


@pytest.mark.parametrize("name,artifacts", [
    ("unified_debug.yaml", ("logs/version_0/metrics.csv", "logs/version_0/samples/*.png")),
    ("tokenizer_fsq_debug.yaml", ("tensorboard/version_0/events.*",
                                  "tensorboard/version_0/reconstructions/*.png"))])
def test_logs_and_grids_follow_default_root_dir(name, artifacts, tokenizer_dirs, tmp_path,
                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    tokenizers = (["--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
                   "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"]]
                  if name.startswith("unified") else ["--data.init_args.num_train", "32"])
    for run in ("one", "two"):
        main(["fit", "--config", str(ROOT / "recipes" / "debug" / name), *tokenizers,
              "--data.init_args.image_size", "16", "--trainer.max_steps", "2",
              "--trainer.val_check_interval", "2", "--trainer.default_root_dir", run])
        for pattern in artifacts:
            assert list((tmp_path / run).glob(pattern)), (run, pattern)
    # (the tokenizer recipe's export_dir is its own setting, left as it is)
    assert not list(tmp_path.glob("runs/**/version_*")), "no logs in the recipe's own folder"


def test_an_explicit_logger_save_dir_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = instantiate_recipe(ROOT / "recipes" / "debug" / "tokenizer_fsq_debug.yaml",
                             ["--trainer.default_root_dir", "run",
                              "--trainer.logger.init_args.save_dir", "elsewhere"])
    assert cli.trainer.logger.save_dir == "elsewhere"
    cli = instantiate_recipe(ROOT / "recipes" / "debug" / "tokenizer_fsq_debug.yaml",
                             ["--trainer.default_root_dir", "run"])
    assert cli.trainer.logger.save_dir == "run"


def test_changing_class_path_names_the_init_args_it_drops(tmp_path, monkeypatch, capsys):
    """jsonargparse keeps only the init_args the new class takes; the rest must not vanish
    unannounced."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    cli = instantiate_recipe(ROOT / "recipes" / "debug" / "unified_debug.yaml", [
        "--data.class_path", "unigen.data.imagefolder.ImageFolderDataModule",
        "--data.init_args.root", str(tmp_path / "images")])
    assert type(cli.datamodule).__name__ == "ImageFolderDataModule"
    lines = [line for line in capsys.readouterr().err.splitlines() if "dropped" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("unigen: warning: the class_path changed from "
                               "unigen.data.shapes_datamodule.ShapesDataModule to "
                               "unigen.data.imagefolder.ImageFolderDataModule;")
    dropped = lines[0].rpartition("dropped: ")[2]
    names = {item.split("=")[0] for item in dropped.split(", ")}
    assert {"num_train", "num_val"} <= names
    assert "batch_size" not in names and "image_size" not in names  # carried over, not dropped
