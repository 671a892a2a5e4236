"""Plugins: a user's module registering components, loaded by ``--plugin``, ``UNIGEN_PLUGINS`` or a
``unigen.plugins`` entry point, so that every ``unigen`` verb (and a Python registry lookup that
misses) finds them; saved folders record the module and never import it."""

from __future__ import annotations

import importlib
import importlib.metadata
import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from unigen import commands, plugins
from unigen.cli import main, split_plugin_options
from unigen.data.shards import SHARD_SOURCES
from unigen.modules.heads import HEADS
from unigen.registry import PLUGIN_HINT, Registry, defining_module
from unigen.sampling import SAMPLERS
from unigen.tokenizers.base import IMAGE_TOKENIZERS

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "recipes" / "debug" / "unified_debug.yaml"
_names = itertools.count()

HEAD_PLUGIN = '''
from torch import nn
from unigen.modules.heads import HEADS

@HEADS.register("lowrank")
class LowRankHead(nn.Module):
    def __init__(self, dim, text_size, image_size, rank=8):
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, text_size + image_size, bias=False)

    def forward(self, hidden, vocab_limit=None):
        out = self.up(self.down(hidden))
        return out if vocab_limit is None else out[..., :vocab_limit]
'''

SAMPLER_PLUGIN = '''
from unigen.sampling import SAMPLERS, MaskGITSampler

BUILT = []

@SAMPLERS.register("{name}")
class EosAwareSampler(MaskGITSampler):
    needs_special_ids = ("eos_id", "pad_id")

    def __init__(self, eos_id=None, pad_id=None, **kwargs):
        super().__init__(**kwargs)
        BUILT.append((eos_id, pad_id))
'''

VERB_PLUGIN = '''
from unigen.commands import register_verb

def add_args(p):
    p.add_argument("--name", default="world")

def run(args):
    print(f"hello, {args.name}")

register_verb("hello", "say hello (a plugin's verb)", add_args, run)
'''

SOURCE_PLUGIN = '''
from unigen.data.shards import SHARD_SOURCES

@SHARD_SOURCES.register("{name}")
def tiny_source(root=None, split=None, image_size=32, num_samples=None, seed=0):
    rows = [{{"caption": "a zebra grazes", "question": "what grazes?", "answer": "zebra"}},
            {{"caption": "an okapi hides", "question": "", "answer": ""}}]
    return rows if num_samples is None else rows[:num_samples]
'''


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """A clean plugin state: an empty plugin folder on sys.path, no UNIGEN_PLUGINS, no entry
    points; every registry and the verb table restored afterwards."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    monkeypatch.setattr(plugins, "_imported", {})
    monkeypatch.setattr(plugins, "_entry_points_scanned", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    for registry in (HEADS, SAMPLERS, SHARD_SOURCES, IMAGE_TOKENIZERS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
    monkeypatch.setattr(commands, "VERBS", dict(commands.VERBS))
    written: list[str] = []

    def write(code: str, **fmt: str) -> str:
        name = f"unigen_test_plugin_{next(_names)}"
        (folder / f"{name}.py").write_text(textwrap.dedent(code.format(**fmt) if fmt else code))
        importlib.invalidate_caches()
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def forget(registry: Registry, name: str, module: str, monkeypatch) -> None:
    """As in a fresh process: the plugin neither imported nor registered."""
    items = dict(registry._items)
    items.pop(name)
    monkeypatch.setattr(registry, "_items", items)
    sys.modules.pop(module, None)
    monkeypatch.setattr(plugins, "_imported", {})


def error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("unigen:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def model_dir(tokenizer_dirs, tmp_path_factory):
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("plugins") / "model"
    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4).export(out)
    return out


# -- the mechanism ---------------------------------------------------------------------------------
def test_registry_miss_loads_the_environment_plugins_once(plugin_env, monkeypatch):
    module = plugin_env(SAMPLER_PLUGIN, name="env_sampler")
    assert "env_sampler" not in SAMPLERS
    monkeypatch.setenv(plugins.ENV_VAR, f" {module} , ")
    assert SAMPLERS.get("env_sampler").__module__ == module
    assert plugins.loaded() == {module: "the UNIGEN_PLUGINS environment variable"}
    assert plugins.load_plugins() == []  # idempotent


def test_unknown_name_says_how_to_load_a_plugin(plugin_env):
    with pytest.raises(KeyError) as err:
        HEADS.get("lowrank")
    assert err.value.args[0] == f"unknown output head 'lowrank'; known: separate, shared ({PLUGIN_HINT})"
    with pytest.raises(KeyError) as err:
        HEADS.get("lowrank", saved_by="my_head")
    assert err.value.args[0].endswith(
        "shared (saved by module 'my_head': pass --plugin my_head or set UNIGEN_PLUGINS=my_head)")


def test_entry_points_are_loaded(plugin_env, monkeypatch):
    module = plugin_env(SAMPLER_PLUGIN, name="ep_sampler")
    function = plugin_env("CALLS = []\ndef register():\n    CALLS.append(1)\n")
    eps = [importlib.metadata.EntryPoint("mine", module, plugins.ENTRY_POINT_GROUP),
           importlib.metadata.EntryPoint("fn", f"{function}:register", plugins.ENTRY_POINT_GROUP)]
    asked = []
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: asked.append(kw) or (eps if kw == {"group": "unigen.plugins"} else []))
    assert SAMPLERS.get("ep_sampler").__module__ == module  # a miss loads the entry points
    assert sys.modules[function].CALLS == [1]  # "module:function" is called once
    plugins.load_plugins()
    assert sys.modules[function].CALLS == [1] and len(asked) == 1


def test_a_broken_entry_point_is_one_line_naming_it(plugin_env, monkeypatch, capsys):
    eps = [importlib.metadata.EntryPoint("broken", "no_such_module_xyz", plugins.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: eps)
    assert main(["--help"]) == 2
    line = error_line(capsys)
    assert line.startswith("unigen: error: cannot import plugin module 'no_such_module_xyz' (from "
                           "entry point 'broken' of the unigen.plugins group)")
    assert "ModuleNotFoundError" in line


@pytest.mark.parametrize("argv, source", [
    (["--plugin", "no_such_module_xyz", "generate"], "--plugin"),
    (["generate", "--plugin=no_such_module_xyz"], "--plugin"),
    (["generate"], "the UNIGEN_PLUGINS environment variable"),
])
def test_a_bad_plugin_is_one_error_line(argv, source, plugin_env, monkeypatch, capsys):
    if source != "--plugin":
        monkeypatch.setenv(plugins.ENV_VAR, "no_such_module_xyz")
    assert main(argv) == 2
    assert error_line(capsys) == (f"unigen: error: cannot import plugin module 'no_such_module_xyz' "
                                  f"(from {source}): ModuleNotFoundError: No module named "
                                  f"'no_such_module_xyz' (install it, or put its folder on "
                                  f"PYTHONPATH, e.g. PYTHONPATH=. unigen ...)")


def test_a_plugin_missing_one_of_its_own_imports_names_that(plugin_env, capsys):
    module = plugin_env("import no_such_dependency_xyz\n")
    assert main(["--plugin", module, "--help"]) == 2
    assert error_line(capsys) == (f"unigen: error: cannot import plugin module {module!r} (from "
                                  "--plugin): ModuleNotFoundError: No module named "
                                  "'no_such_dependency_xyz'")


def test_a_plugin_that_fails_on_import_is_one_line(plugin_env, capsys):
    module = plugin_env("raise RuntimeError('no GPU driver\\nsecond line')\n")
    assert main(["--plugin", module, "--help"]) == 2
    assert error_line(capsys) == (f"unigen: error: cannot import plugin module {module!r} (from "
                                  "--plugin): RuntimeError: no GPU driver")


def test_plugin_option_is_taken_out_wherever_it_stands():
    assert split_plugin_options(["--plugin", "a", "fit", "--config", "x.yaml", "--plugin=b.c",
                                 "--", "--plugin", "z"]) == (
        ["a", "b.c"], ["fit", "--config", "x.yaml", "--", "--plugin", "z"])
    for bad in (["--plugin"], ["fit", "--plugin", "--config"], ["--plugin="]):
        with pytest.raises(ValueError, match="--plugin needs a module name"):
            split_plugin_options(bad)


def test_registry_does_not_import_plugins_at_import_time():
    code = "import sys, unigen.registry; assert 'unigen.plugins' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_defining_module_skips_unigen_and_main():
    assert defining_module(HEADS.get("shared")) is None
    assert defining_module(type("X", (), {"__module__": "__main__"})) is None
    assert defining_module(type("X", (), {"__module__": "my_pkg.heads"})) == "my_pkg.heads"


# -- every verb finds plugin components --------------------------------------------------------------
def test_a_new_verb_from_a_plugin(plugin_env, monkeypatch, capsys):
    module = plugin_env(VERB_PLUGIN)
    assert main(["hello"]) == 2
    line = error_line(capsys)
    assert line.startswith("unigen: error: unknown verb 'hello'") and "--plugin MODULE" in line
    assert main(["--plugin", module, "hello", "--name", "plugins"]) == 0
    assert capsys.readouterr().out.strip() == "hello, plugins"
    assert main(["hello", "--plugin", module]) == 0  # after the verb too
    assert capsys.readouterr().out.strip() == "hello, world"
    assert main(["--plugin", module, "--help"]) == 0
    out = capsys.readouterr().out
    assert "  hello " in out and f"loaded: {module} (--plugin)" in out


def test_a_new_verb_from_the_environment_in_a_fresh_process(plugin_env, tmp_path):
    module = plugin_env(VERB_PLUGIN)
    env = {**__import__("os").environ, plugins.ENV_VAR: module,
           "PYTHONPATH": str(tmp_path / "plugins")}
    out = subprocess.run([sys.executable, "-m", "unigen", "hello", "--name", "env"], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hello, env"


def test_text_tokenizer_reads_a_registered_shard_source(plugin_env, tmp_path, capsys):
    module = plugin_env(SOURCE_PLUGIN, name="zoo")
    out = tmp_path / "tok"
    with pytest.raises(SystemExit) as exc:
        main(["text-tokenizer", "--data", "zoo", "--out", str(out)])
    assert exc.value.code == 1
    line = error_line(capsys)
    assert line.startswith("unigen: error: --data: unknown shard source 'zoo'; known: fashion_mnist, "
                           "folder, shapes (a custom one must be imported first")
    assert main(["--plugin", module, "text-tokenizer", "--data", "zoo", "--vocab-size", "64",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err  # progress: the items read, then the training step
    assert "reading zoo texts" in err and "training a wordlevel text tokenizer on 4 texts" in err
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"zebra", "okapi", "grazes", "hides"} <= set(vocab)
    # and the same source for `unigen tokenize` is the same registry entry
    assert SHARD_SOURCES.get("zoo").__module__ == module


def test_text_tokenizer_uses_a_data_sets_texts_method(plugin_env):
    module = plugin_env('''
        from unigen.data.shards import SHARD_SOURCES

        class Texts:
            def __len__(self):
                raise AssertionError("texts() is enough")
            def texts(self):
                return ["a quokka smiles"]

        @SHARD_SOURCES.register("quokka")
        def source(root=None, seed=0, **kw):
            assert root is None and seed == 3
            return Texts()
    ''')
    plugins.import_plugin(module)
    assert commands.text_corpus("quokka", seed=3) == ["a quokka smiles"]


def test_builtin_text_corpora_are_unchanged():
    from unigen.data.fashion_mnist import CLASS_NAMES, QUESTION
    from unigen.data.shapes import corpus, vocabulary_words

    assert commands.text_corpus("shapes", num_samples=5, seed=1) == [
        *corpus("train", 5, 1), " ".join(vocabulary_words())]
    texts = commands.text_corpus("fashion_mnist")
    assert texts[-len(CLASS_NAMES) - 1:] == [QUESTION, *CLASS_NAMES]
    with pytest.raises(ValueError, match=r"^--data folder needs --root DIR"):
        commands.text_corpus("folder")


def test_a_plugin_head_saved_in_a_pipeline(plugin_env, tokenizer_dirs, tmp_path, monkeypatch,
                                           capsys):
    from unigen.pipeline import UnifiedPipeline
    from unigen.training.unified_module import UnifiedModule

    module = plugin_env(HEAD_PLUGIN)
    plugins.import_plugin(module)
    model = tmp_path / "model"
    torch.manual_seed(0)
    UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4, head="lowrank").export(model)
    assert json.loads((model / "pipeline.json").read_text())["modules"] == {"head": module}
    assert json.loads((model / "transformer" / "config.json").read_text())["head"] == "lowrank"

    forget(HEADS, "lowrank", module, monkeypatch)
    generate = ["generate", "--model", str(model), "--prompt", "a red circle", "--steps", "2",
                "--out", str(tmp_path / "grid.png")]
    with pytest.raises(SystemExit) as exc:
        main(generate)
    assert exc.value.code == 1
    assert error_line(capsys) == (
        f"unigen: error: unknown output head 'lowrank'; known: separate, shared (saved by module "
        f"{module!r}: pass --plugin {module} or set UNIGEN_PLUGINS={module}), named in "
        f"{model / 'transformer' / 'config.json'}")
    assert module not in sys.modules  # the saved folder never imports code
    assert main(["--plugin", module, *generate]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0

    forget(HEADS, "lowrank", module, monkeypatch)
    monkeypatch.setenv(plugins.ENV_VAR, module)
    assert UnifiedPipeline.from_pretrained(model).transformer.config["head"] == "lowrank"


def test_a_plugin_image_tokenizer_through_export_and_fit(plugin_env, tokenizer_dirs, tmp_path,
                                                         monkeypatch, capsys):
    from unigen.training.unified_module import UnifiedModule

    module = plugin_env('''
        import sys
        from unigen.tokenizers.base import register_tokenizer
        from unigen.tokenizers.fsq import FSQTokenizer

        ARGV = []

        @register_tokenizer("plugfsq")
        class PlugFSQ(FSQTokenizer):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                ARGV.append(list(sys.argv))
    ''')
    plugins.import_plugin(module)
    tok = tmp_path / "image_tokenizer"
    sys.modules[module].PlugFSQ(levels=[5, 5, 5], block_out_channels=[16, 16, 32], latent_channels=8,
                                norm_num_groups=8).save_pretrained(tok)
    saved = json.loads((tok / "config.json").read_text())
    assert (saved["type"], saved["module"]) == ("plugfsq", module)
    model = tmp_path / "model"
    UnifiedModule(text_tokenizer=tokenizer_dirs["text_tokenizer"], image_tokenizer=str(tok), image_size=32, dim=32, depth=1,
                  heads=4).export(model)

    forget(IMAGE_TOKENIZERS, "plugfsq", module, monkeypatch)
    caption = ["generate", "--model", str(model), "--prompt", "a", "--steps", "1",
               "--out", str(tmp_path / "g.png")]
    with pytest.raises(SystemExit):
        main(caption)
    line = error_line(capsys)
    assert line.startswith("unigen: error: unknown image tokenizer 'plugfsq'; known: ")
    assert f"(saved by module {module!r}: pass --plugin {module} or set UNIGEN_PLUGINS={module})" in line
    assert main([*caption, "--plugin", module]) == 0

    # the unified fit loads the plugin tokenizer; --plugin never reaches LightningCLI's parser but
    # stays in sys.argv (Lightning's DDP launcher re-runs it in each new process)
    forget(IMAGE_TOKENIZERS, "plugfsq", module, monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--plugin", module, "--config", str(DEBUG),
                 "--model.init_args.image_tokenizer", str(tok),
                 "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
                 "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                 "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false",
                 "--model.init_args.val_sampling", "null"]) == 0
    argv = sys.modules[module].ARGV[-1]
    assert argv[1:4] == [f"--plugin={module}", "fit", "--config"]


def test_the_pipeline_asks_the_sampler_for_its_special_ids(plugin_env, model_dir, tmp_path,
                                                           monkeypatch):
    from unigen.pipeline import UnifiedPipeline

    module = plugin_env(SAMPLER_PLUGIN, name="eos_aware")
    monkeypatch.setenv(plugins.ENV_VAR, module)
    assert main(["generate", "--model", str(model_dir), "--prompt", "a red circle", "--steps", "2",
                 "--sampler", "eos_aware", "--out", str(tmp_path / "g.png")]) == 0
    pipe = UnifiedPipeline.from_pretrained(model_dir)
    assert sys.modules[module].BUILT[-1] == (pipe.space.eos_id, pipe.space.pad_id)
    semi = pipe.make_sampler("semi_ar", {"pad_id": 7})
    assert (semi.eos_id, semi.pad_id) == (pipe.space.eos_id, 7)  # a given id is kept
    assert pipe.make_sampler("maskgit").mask_id == pipe.space.mask_id

    class Odd(SAMPLERS.get("maskgit")):
        needs_special_ids = ("bos_id",)

    SAMPLERS.register("odd")(Odd)
    with pytest.raises(ValueError, match="sampler 'odd' asks for the special id 'bos_id'"):
        pipe.make_sampler("odd")
