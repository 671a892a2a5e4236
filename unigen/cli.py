"""The ``unigen`` command line.

``fit | validate | test | predict`` run recipes through LightningCLI; the other verbs (generate,
caption, answer, task, eval, tokenize, text-tokenizer, export, demo) are small argparse front ends
over the library.  ``unigen --help`` lists every verb with one line each.

Plugins (:mod:`unigen.plugins`): the global option ``--plugin MODULE`` (repeatable, before or after
the verb; taken out before the verb's parser or LightningCLI sees the command line) imports a
module that registers components or verbs; ``UNIGEN_PLUGINS`` and the ``unigen.plugins`` entry
points are loaded at start for every verb.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

LIGHTNING_VERBS = {
    "fit": "train a recipe (--config recipes/<name>.yaml; resume with --ckpt_path last)",
    "validate": "run a recipe's validation loop on a checkpoint",
    "test": "run a recipe's test loop on a checkpoint",
    "predict": "run a recipe's predict loop on a checkpoint",
}


def _lightning_cli(args: Sequence[str], run: bool = True, argv_prefix: Sequence[str] = ()):
    """Build (and by default run) the LightningCLI for one verb.  ``argv_prefix`` (the global
    ``--plugin`` options) goes into ``sys.argv`` only: a re-run process loads the same plugins."""
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from unigen.errors import one_line_parser_errors

    class UnigenCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--export_dir", type=str | None, default=None,
                                help="after fit, save the trained model here (save_pretrained)")
            parser.link_arguments("data.init_args.image_size", "model.init_args.image_size",
                                  apply_on="parse")

        def _parse_ckpt_path(self) -> None:
            # LightningCLI would replace the recipe's model (class and every init_arg, command-line
            # overrides included) by the checkpoint's hyper-parameters, and only for a file path,
            # not for "last".  A checkpoint restores state; the recipe says what to build.
            sub = self.config.get("subcommand")
            if sub:
                check_checkpoint_against_recipe(self.config[sub], sub)

        def parse_arguments(self, parser, args) -> None:
            _check_config_files(args)
            # a recipe's logger leaves save_dir out (loggers_follow_root_dir); it is filled in
            # before the parsed config is validated, where a missing required argument fails
            self.config = parser.parse_args(args, _skip_validation=True)
            sub = self.config.get("subcommand")
            loggers_follow_root_dir((self.config[sub] if sub else self.config).get("trainer"))
            try:
                parser.validate(self.config)
            except (TypeError, KeyError, argparse.ArgumentError) as err:
                parser.error(str(err), err)  # as parse_args reports them: one line, exit 2

        def instantiate_trainer(self, **kwargs):
            # every recipe: atomic checkpoints, NaN guard, per-step reseeding, resumable "last"
            from unigen.training.progress import use_run_progress_bar
            from unigen.training.reliability import harden_trainer

            seed = self.config.get(str(self.subcommand), self.config).get("seed_everything")
            return use_run_progress_bar(harden_trainer(super().instantiate_trainer(**kwargs), seed))

        def before_fit(self) -> None:
            from unigen.training.reliability import check_resume_target

            check_resume_target(self.trainer, self.config[self.subcommand].get("ckpt_path"))

        def _before_evaluation(self) -> None:
            config = self.config.get(self.subcommand, {})
            # the option exists on every verb's parser, but only fit has a trained model to export
            if config.get("export_dir"):
                raise ValueError(f"--export_dir applies to fit only, not to {self.subcommand} "
                                 "(export a checkpoint with `unigen export --ckpt ... --out ...`)")
            init = config.get("model", {}).get("init_args", {}).get("init_weights")
            if not config.get("ckpt_path") and not init:  # legal in Lightning, rarely meant
                print(f"unigen: warning: {self.subcommand} without --ckpt_path uses the recipe's "
                      "freshly initialised weights", file=sys.stderr)

        before_validate = before_test = before_predict = _before_evaluation

        def after_fit(self) -> None:
            export = self.config.get(self.subcommand, {}).get("export_dir")
            if export and self.trainer.is_global_zero:
                self.model.export(export)
                print(f"exported the trained model to {export}")

    import warnings

    from unigen.training.lightning_tips import quiet_lightning_pytree_warning, quiet_lightning_tips

    quiet_lightning_tips()
    quiet_lightning_pytree_warning()
    # we pass `args` on purpose and keep sys.argv equal to them (see below)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    saved_argv = sys.argv
    # LightningCLI reads `args`; Lightning's DDP launcher re-runs sys.argv in each new process, so
    # it must hold this very command line
    sys.argv = [saved_argv[0], *argv_prefix, *args]
    try:
        with one_line_parser_errors():
                return UnigenCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                             subclass_mode_data=True, args=list(args), run=run,
                             save_config_kwargs={"overwrite": True},
                             parser_kwargs={"prog": "unigen", "allow_abbrev": False,
                                            "logger": dropped_init_args_logger()},
                             auto_configure_optimizers=False)
    finally:
        sys.argv = saved_argv


#: jsonargparse's (debug) record of init_args it drops when a class_path changes
_DROPPED = re.compile(r"Due to class_path change from '(?P<old>[^']+)' to '(?P<new>[^']+)', "
                      r"discarding init_args: (?P<args>\{.*\})\.?$", re.S)


class _DroppedInitArgsWarning(logging.Handler):
    """Turn jsonargparse's debug note that a class_path change dropped init_args into one warning
    line on stderr.  ``--data.class_path OtherModule`` over a recipe keeps only the recipe's
    init_args the new class takes; the rest (``num_val: 128`` of a shapes recipe, say) would
    otherwise vanish without a word."""

    def emit(self, record: logging.LogRecord) -> None:
        match = _DROPPED.match(record.getMessage())
        if match is None:
            return  # every other debug note of the parser
        try:
            dropped = ", ".join(f"{k}={v!r}" for k, v in ast.literal_eval(match["args"]).items())
        except (ValueError, SyntaxError):  # a value with no literal repr: show it as written
            dropped = match["args"].strip("{}")
        print(f"unigen: warning: the class_path changed from {match['old']} to {match['new']}; "
              f"the recipe's init_args it does not accept are dropped: {dropped}", file=sys.stderr)


def _check_config_files(args: Sequence[str] | None) -> None:
    """A ``--config`` file that is not UTF-8 is one line naming it (jsonargparse names only the
    codec's byte)."""
    from unigen import io

    args = list(args or [])
    for i, arg in enumerate(args):
        path = args[i + 1] if arg == "--config" and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if path is None or not os.path.isfile(path):
            continue
        io.read_utf8(path, "--config")


def dropped_init_args_logger() -> logging.Logger:
    """The logger LightningCLI's parser reports to: silent except for dropped init_args."""
    logger = logging.getLogger("unigen.cli.recipe_parser")
    if not any(isinstance(h, _DroppedInitArgsWarning) for h in logger.handlers):
        logger.addHandler(_DroppedInitArgsWarning())
    logger.setLevel(logging.DEBUG)  # the note is a debug record
    logger.propagate = False  # the parser's other debug notes stay out of the root logger
    return logger


def loggers_follow_root_dir(trainer: Any) -> None:
    """Give every logger of the parsed trainer config that has no ``save_dir`` the trainer's
    ``default_root_dir`` (the working directory if that is unset, as Lightning does).  Recipes leave
    ``save_dir`` out, so ``--trainer.default_root_dir X`` moves logs and sample grids with the
    checkpoints, and separate runs do not pile ``version_N`` folders into one directory; an explicit
    ``save_dir`` is kept."""
    if trainer is None:
        return
    import os

    loggers = trainer.get("logger")
    root = trainer.get("default_root_dir") or os.getcwd()
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = getattr(logger, "init_args", None)
        if init is not None and "save_dir" in init and init.get("save_dir") is None:
            init["save_dir"] = str(root)


def _plain(value: Any) -> Any:
    """Recipe values as a checkpoint's hyper-parameters hold them (lists, dicts, numbers)."""
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def differing_hparams(checkpoint: dict[str, Any], init_args: dict[str, Any]) -> list[str]:
    """The recipe's model arguments whose values differ from the checkpoint's hyper-parameters
    (arguments only one of them has, e.g. constructor objects, are not compared)."""
    saved = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items()
             if not k.startswith("_")}
    return sorted(k for k in saved.keys() & init_args.keys()
                  if _plain(saved[k]) != _plain(init_args[k]))


def check_checkpoint_against_recipe(config: Any, verb: str) -> None:
    """``--ckpt_path FILE``: refuse a checkpoint of another model class than the recipe's (one
    line naming both), warn in one line when the recipe's model arguments differ from the
    checkpoint's.  The file is read safely and its CRCs checked (one line if it is not usable)."""
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or str(ckpt_path) in ("last", "best", "hpc") or "://" in str(ckpt_path) \
            or not Path(ckpt_path).is_file():
        return  # resolved, or reported as missing, by Lightning / check_resume_target
    from unigen.training.checkpoint import module_class_of, read_checkpoint

    checkpoint = read_checkpoint(ckpt_path)
    model = config.get("model")
    recipe_class = getattr(model, "class_path", None)
    written_by = module_class_of(checkpoint)
    if written_by and recipe_class and written_by != recipe_class:
        raise ValueError(f"checkpoint {ckpt_path} was written by {written_by}, but the recipe's "
                         f"model is {recipe_class}; use a checkpoint of this recipe's model")
    init_args = _plain(getattr(model, "init_args", None) or {})
    differ = differing_hparams(checkpoint, init_args)
    if not differ:
        return
    if verb == "fit":
        restart = ("start a new run from the weights instead (model.init_args.init_weights: an "
                   "export of the run)" if "init_weights" in init_args else
                   "start a new run from the weights instead (model.init_args.init_from: an "
                   "export of the run)" if "init_from" in init_args else
                   "start a new run instead")
        effect = ("; the optimizer and LR-scheduler state restored from the checkpoint still govern "
                  f"the resumed training (learning rate, warm-up, schedule length): to change "
                  f"them, {restart}")
    else:
        effect = ""
    print(f"unigen: warning: the recipe's model arguments differ from those saved in {ckpt_path}: "
          f"{', '.join(differ)}; the recipe's are used{effect}", file=sys.stderr)


def instantiate_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """Parse and instantiate a recipe without running it (used by tests and tools)."""
    return _lightning_cli(["--config", str(path), *overrides], run=False)


# -- verbs beyond LightningCLI ----------------------------------------------------------------------
Verb = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]


class _OneLineParser(argparse.ArgumentParser):
    """A verb's parser whose usage errors are one line (exit 2), not the usage page first."""

    def error(self, message: str):
        self.exit(2, f"unigen: error: {self.prog}: {message} ({self.prog} --help lists the options)\n")


def _verbs() -> dict[str, Verb]:
    from unigen import commands

    return commands.VERBS


def _print_help() -> None:
    from unigen import plugins

    lines = ["usage: unigen [--plugin MODULE ...] <verb> [options]   (unigen <verb> --help for a "
             "verb's options; unigen --version)", "", "verbs:"]
    for name, doc in LIGHTNING_VERBS.items():
        lines.append(f"  {name:<15} {doc}")
    for name, (doc, _, _) in _verbs().items():
        lines.append(f"  {name:<15} {doc}")
    lines += ["", f"plugins: --plugin MODULE (repeatable), {plugins.ENV_VAR}=MOD1,MOD2 or a "
              f"`{plugins.ENTRY_POINT_GROUP}` entry point import your components "
              "(docs/extending.md)"]
    loaded = plugins.loaded()
    if loaded:
        lines.append("loaded: " + ", ".join(f"{m} ({src})" for m, src in loaded.items()))
    print("\n".join(lines))


def split_plugin_options(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(modules, rest)``: the global ``--plugin MODULE`` / ``--plugin=MODULE`` options taken out
    of the command line, wherever they stand (up to a lone ``--``), and everything else in order."""
    modules: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg == "--plugin" or arg.startswith("--plugin="):
            value = arg.partition("=")[2] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            if not value or value.startswith("-"):
                raise ValueError("--plugin needs a module name, e.g. --plugin my_pkg.my_sampler")
            modules.append(value)
            i += 1 if "=" in arg else 2
            continue
        rest.append(arg)
        i += 1
    return modules, rest


def _load_plugins(modules: Sequence[str]) -> None:
    from unigen import plugins

    for module in modules:
        plugins.import_plugin(module, "--plugin")
    plugins.load_plugins()


def version_line() -> str:
    """``unigen X (torch Y, lightning Z, python W)``: what a bug report needs to name."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import unigen

    parts = []
    for package in ("torch", "lightning"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} not installed")
    return f"unigen {unigen.__version__} ({', '.join(parts)}, python {platform.python_version()})"


def main(argv: Sequence[str] | None = None) -> int:
    import os

    from unigen.plugins import PluginError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        modules, argv = split_plugin_options(argv)
        _load_plugins(modules)
    except (ValueError, PluginError) as err:
        if os.environ.get("UNIGEN_DEBUG"):
            raise
        print(f"unigen: error: {err}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return 0
    if argv[0] in ("-V", "--version"):
        print(version_line())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb in LIGHTNING_VERBS:
        _lightning_cli([verb, *rest], argv_prefix=[f"--plugin={m}" for m in modules])
        return 0
    verbs = _verbs()
    if verb not in verbs:
        known = ", ".join([*LIGHTNING_VERBS, *verbs])
        print(f"unigen: error: unknown verb {verb!r}; known verbs: {known} (a plugin's verb needs "
              "its module: --plugin MODULE, UNIGEN_PLUGINS or a `unigen.plugins` entry point)",
              file=sys.stderr)
        return 2
    doc, add_args, run = verbs[verb]
    parser = _OneLineParser(prog=f"unigen {verb}", description=doc)
    add_args(parser)
    args = parser.parse_args(rest)
    from unigen.errors import user_errors_as_one_line

    with user_errors_as_one_line():
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
