"""Verbs of the ``unigen`` command beyond LightningCLI's fit/validate/test/predict.

Each verb is ``(one-line help, add_arguments(parser), run(args))`` in :data:`VERBS`; adding a verb is
one entry here (``unigen --help`` lists it automatically).  This module holds the table, the thin
verbs (export, demo, eval, merge-lora) and :func:`register_verb`; the others live in modules of
their own, which share the flags and checks of :mod:`unigen.command_args`:

- :mod:`unigen.generate_command`: ``generate`` (and the guidance / trajectory flags it shares);
- :mod:`unigen.text_commands`: ``caption`` and ``answer``;
- :mod:`unigen.tokenizer_commands`: ``text-tokenizer`` and ``tokenize``;
- ``inpaint``, ``img2img``, ``task``, ``reconstruct``: ``unigen.<verb>_command``, imported when
  the verb runs.

Every name these moved out of here is still importable from here (plugins and the verb modules
import them from ``unigen.commands``).  A test that stubs one must patch the module that calls it.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

# the shared flags and the verbs moved out of here, re-exported (see __all__); at the top they
# import no more than this module did (the rest inside their functions), so `unigen --help` does
# not slow down
from unigen.command_args import (GRID_FORMATS, _check_model_args, _check_out_file, _check_positive,
                                 _common_model_args, _grid_paths, _image_args, _input_files,
                                 _load_images, _model_kind, _parse_sampler_args, _pipeline,
                                 _refuse_autoregressive, _sampler_kwargs, _settings_path,
                                 check_device)
from unigen.generate_command import (AR_SAMPLING_OPTIONS, _generate, _generate_args,
                                     _generate_autoregressive, _guidance_args, _negative_prompts,
                                     _save_trajectory, _trajectory_args, _trajectory_path)
from unigen.text_commands import (_answer, _answer_args, _caption, _caption_args, _check_fills,
                                  _read_images_for, _text_out_arg, _text_recorder, _text_settings,
                                  _text_trajectory_arg, _write_text_trajectory)
from unigen.tokenizer_commands import (_TEXTS_WITHOUT_IMAGES, TEXT_FIELDS, Wrap,
                                       _fashion_mnist_texts, _shapes_texts, _text_tokenizer,
                                       _text_tokenizer_args, _tokenize, _tokenize_args,
                                       build_text_tokenizer, image_tokenizer_path, text_corpus,
                                       tokenize_data)


# -- verbs in modules of their own: inpaint, img2img, task, reconstruct ----------------------------
def _module_verb(module: str) -> tuple[Callable[[argparse.ArgumentParser], None],
                                      Callable[[argparse.Namespace], None]]:
    """``(add_arguments, run)`` of a verb whose module (``add_arguments(p)``, ``run(args)``) is
    imported only when the verb is used, so ``unigen --help`` stays fast."""
    import importlib

    def add_arguments(p: argparse.ArgumentParser) -> None:
        importlib.import_module(module).add_arguments(p)

    def run(args: argparse.Namespace) -> None:
        importlib.import_module(module).run(args)

    return add_arguments, run


# -- export -----------------------------------------------------------------------------------------
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint of a UnifiedModule or TokenizerModule")
    p.add_argument("--out", required=True, help="output directory")


def export_checkpoint(ckpt: str, out: str) -> None:
    """Turn a training checkpoint into a ``save_pretrained`` directory (no pickle is executed)."""
    import torch

    from unigen.training.checkpoint import load_module_from_checkpoint
    module = load_module_from_checkpoint(ckpt)
    for name, tensor in module.state_dict().items():  # a diverged run's weights draw nothing
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{ckpt}: weight {name!r} holds NaN or infinite values (the run diverged "
                             "before this checkpoint); export an earlier one")
    with torch.no_grad():
        module.export(out)


def _export(args: argparse.Namespace) -> None:
    export_checkpoint(args.ckpt, args.out)
    print(f"exported {args.ckpt} to {args.out}")


# -- demo -------------------------------------------------------------------------------------------
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="recipes/demo.yaml", help="demo recipe")
    p.add_argument("--out", default=None, help="override the recipe's out_dir")


def _demo(args: argparse.Namespace) -> None:
    from unigen.demo import run_demo

    run_demo(args.config, args.out)


# -- eval -------------------------------------------------------------------------------------------
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="pipeline directory (save_pretrained / --export_dir)")
    p.add_argument("--config", required=True, help="eval recipe (recipes/eval_*.yaml)")
    p.add_argument("--out", default=None, help="output directory (default: the recipe's out_dir)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set a recipe key, e.g. data.num_samples=64 or t2i.num_steps=8 (repeatable)")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="evaluate every combination, e.g. t2i.guidance_scale=1,2,3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--no-reuse", action="store_true",
                   help="a sweep regenerates every task at every point (by default a task an "
                        "earlier point computed identically is taken from it)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _eval(args: argparse.Namespace) -> None:
    from unigen.evaluate import evaluate_model, print_summary

    check_device(args.device, allow_auto=True)
    print_summary(evaluate_model(args.model, args.config, args.out, args.override, args.sweep,
                                 args.resume, args.device, not args.no_progress,
                                 reuse=not args.no_reuse))


# -- merge-lora -------------------------------------------------------------------------------------
def _merge_lora_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="base pipeline directory the adapter was trained on")
    p.add_argument("--adapter", required=True, help="LoRA adapter directory (adapter_config.json)")
    p.add_argument("--out", required=True, help="output pipeline directory (adapter merged)")
    p.add_argument("--no-check-base", action="store_true",
                   help="merge even if the base weights differ from the adapter's base")


def _merge_lora(args: argparse.Namespace) -> None:
    from unigen.training.finetune import merge_adapter_into_pipeline

    merged = merge_adapter_into_pipeline(args.model, args.adapter, args.out, not args.no_check_base)
    print(f"merged {len(merged)} LoRA layers of {args.adapter} into {args.model}; wrote {args.out}")


# the verbs of the modules imported above are used as they are; the _module_verb ones import this
# module themselves, so they are imported only when their verb runs
VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[Any], None]]] = {
    "generate": ("text -> images: write a captioned PNG grid (+ JSON of the settings)",
                 _generate_args, _generate),
    "caption": ("images -> captions (JSON)", _caption_args, _caption),
    "answer": ("images + questions -> answers (JSON)", _answer_args, _answer),
    "inpaint": ("images + a region (mask or box) + text -> the region redrawn: a PNG grid (+ JSON)",
                *_module_verb("unigen.inpaint_command")),
    "img2img": ("images + text -> variations: a share (--strength) of the tokens redrawn: a PNG "
                "grid (+ JSON)", *_module_verb("unigen.img2img_command")),
    "task": ("run a segment task (a further modality's: t2layout, layout2i, i2layout, ...): "
             "JSON rows or a captioned grid", *_module_verb("unigen.task_command")),
    "text-tokenizer": ("train a text tokenizer on a data set's captions/questions/answers",
                       _text_tokenizer_args, _text_tokenizer),
    "tokenize": ("encode a data set with an image tokenizer into resumable litdata shards",
                 _tokenize_args, _tokenize),
    "reconstruct": ("images through an image tokenizer and back: an original | reconstruction "
                    "grid (+ JSON: PSNR, SSIM)", *_module_verb("unigen.reconstruct_command")),
    "merge-lora": ("merge a LoRA adapter into its base pipeline (a plain pipeline directory)",
                   _merge_lora_args, _merge_lora),
    "export": ("turn a fit checkpoint into a save_pretrained directory", _export_args, _export),
    "eval": ("generate with a model, score it (recipes/eval_*.yaml): results.json, report.md, plots",
             _eval_args, _eval),
    "demo": ("run the end-to-end demo recipe (tokenizer -> unified model -> samples + metrics)",
             _demo_args, _demo),
}


def register_verb(name: str, doc: str, add_args: Callable[[argparse.ArgumentParser], None],
                  run: Callable[[Any], None]) -> None:
    """Add a verb (plugins / other modules)."""
    if name in VERBS:
        raise ValueError(f"verb {name!r} already exists")
    VERBS[name] = (doc, add_args, run)



__all__ = [
    "VERBS", "export_checkpoint", "register_verb",
    # moved out of here (private ones included: the verb modules and plugins import them)
    "AR_SAMPLING_OPTIONS", "GRID_FORMATS", "TEXT_FIELDS", "Wrap", "_TEXTS_WITHOUT_IMAGES",
    "_answer", "_answer_args", "_caption", "_caption_args", "_check_fills", "_check_model_args",
    "_check_out_file", "_check_positive", "_common_model_args", "_fashion_mnist_texts",
    "_generate", "_generate_args", "_generate_autoregressive", "_grid_paths", "_guidance_args",
    "_image_args", "_input_files", "_load_images", "_model_kind", "_negative_prompts", "_parse_sampler_args",
    "_pipeline", "_read_images_for", "_refuse_autoregressive", "_sampler_kwargs",
    "_save_trajectory", "_settings_path", "_shapes_texts", "_text_out_arg", "_text_recorder",
    "_text_settings", "_text_tokenizer", "_text_tokenizer_args", "_text_trajectory_arg",
    "_tokenize", "_tokenize_args", "_trajectory_args", "_trajectory_path",
    "_write_text_trajectory", "build_text_tokenizer", "check_device", "image_tokenizer_path",
    "text_corpus", "tokenize_data",
]
