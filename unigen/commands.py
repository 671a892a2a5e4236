"""Verbs of the ``unigen`` command beyond LightningCLI's fit/validate/test/predict.

Each verb is ``(one-line help, add_arguments(parser), run(args))`` in :data:`VERBS`; adding a verb is
one entry here (``unigen --help`` lists it automatically).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from unigen import io


def _load_images(paths: list[str], size: int, resize: str, convert: bool):
    import torch

    from unigen.data.imagefolder import fit_image, image_to_tensor, load_image

    return torch.stack([image_to_tensor(fit_image(load_image(Path(p), convert), size, resize))
                        for p in paths])


def _pipeline(args: argparse.Namespace):
    from unigen.pipeline import UnifiedPipeline

    return UnifiedPipeline.from_pretrained(args.model, device=args.device)


def _common_model_args(parser: argparse.ArgumentParser, sampler: str = "maskgit") -> None:
    parser.add_argument("--model", required=True, help="pipeline directory (save_pretrained / --export_dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    parser.add_argument("--steps", type=int, default=None, help="decoding steps")
    parser.add_argument("--sampler", default=sampler,
                        help=f"maskgit | ancestral | confident | remask | semi_ar (default {sampler})")
    parser.add_argument("--sampler-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a sampler option, value as YAML (repeatable), e.g. schedule=cosine "
                             "(docs/samplers.md)")
    parser.add_argument("--out", required=True, help="output file")


def _sampler_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``--sampler-arg`` pairs, checked by building the sampler (one error line names a bad one)."""
    import yaml

    from unigen.sampling import build_sampler

    kwargs = {}
    for item in args.sampler_arg:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--sampler-arg expects KEY=VALUE, got {item!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    try:
        build_sampler(args.sampler, **kwargs)
    except TypeError as err:
        raise ValueError(f"--sampler-arg: sampler {args.sampler!r} does not take these options "
                         f"({err})") from None
    return kwargs


def _image_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", action="append", required=True, help="input image (repeatable)")
    parser.add_argument("--resize", default="none", help="none | resize | center_crop | pad")
    parser.add_argument("--convert", action="store_true", help="convert grayscale/RGBA inputs to RGB")


# -- generate ---------------------------------------------------------------------------------------
def _generate_args(p: argparse.ArgumentParser) -> None:
    _common_model_args(p)
    p.add_argument("--prompt", action="append", required=True, help="text prompt (repeatable)")
    p.add_argument("--num-per-prompt", type=int, default=1)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--candidates", type=int, default=1,
                   help="draw this many images per prompt and keep the one the model itself reads "
                        "the prompt from best (its caption ELBO; unigen.verification)")


def _generate(args: argparse.Namespace) -> None:
    from unigen.visual import captioned_grid, save_png

    pipe = _pipeline(args)
    prompts = [p for p in args.prompt for _ in range(args.num_per_prompt)]
    kwargs = _sampler_kwargs(args)
    images = pipe.text_to_image(prompts, num_steps=args.steps or 16, guidance_scale=args.guidance,
                                sampler=args.sampler, sampler_kwargs=kwargs, seed=args.seed,
                                output="tensor", progress=True, candidates=args.candidates)
    out = save_png(captioned_grid(images.cpu(), prompts), args.out)
    io.write_json(out.with_suffix(".json"), {"prompts": prompts, "seed": args.seed,
                                             "steps": args.steps or 16, "guidance": args.guidance,
                                             "candidates": args.candidates,
                                             "sampler": args.sampler, "sampler_kwargs": kwargs,
                                             "model": str(args.model)})
    print(f"wrote {out} ({len(prompts)} images)")


# -- caption / answer -------------------------------------------------------------------------------
def _caption_args(p: argparse.ArgumentParser) -> None:
    from unigen.pipeline import TEXT_SAMPLER

    _common_model_args(p, TEXT_SAMPLER)
    _image_args(p)


def _caption(args: argparse.Namespace) -> None:
    pipe = _pipeline(args)
    images = _load_images(args.image, pipe.image_size, args.resize, args.convert)
    captions = pipe.caption(images, num_steps=args.steps, sampler=args.sampler, seed=args.seed,
                            sampler_kwargs=_sampler_kwargs(args), progress=True)
    rows = [{"image": p, "caption": c} for p, c in zip(args.image, captions)]
    io.write_json(args.out, rows)
    for row in rows:
        print(f"{row['image']}: {row['caption']}")


def _answer_args(p: argparse.ArgumentParser) -> None:
    from unigen.pipeline import TEXT_SAMPLER

    _common_model_args(p, TEXT_SAMPLER)
    _image_args(p)
    p.add_argument("--question", action="append", required=True,
                   help="question (one for all images, or one per image)")


def _answer(args: argparse.Namespace) -> None:
    pipe = _pipeline(args)
    images = _load_images(args.image, pipe.image_size, args.resize, args.convert)
    questions = args.question * len(args.image) if len(args.question) == 1 else args.question
    answers = pipe.answer(images, questions, num_steps=args.steps, sampler=args.sampler,
                          seed=args.seed, sampler_kwargs=_sampler_kwargs(args), progress=True)
    rows = [{"image": p, "question": q, "answer": a} for p, q, a in zip(args.image, questions, answers)]
    io.write_json(args.out, rows)
    for row in rows:
        print(f"{row['image']}: {row['question']} -> {row['answer']}")


# -- text tokenizer ---------------------------------------------------------------------------------
def _text_tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="shapes", help="shapes | folder | fashion_mnist")
    p.add_argument("--root", default=None, help="image folder with metadata.jsonl (--data folder)")
    p.add_argument("--num-samples", type=int, default=20000, help="shapes samples to read text from")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--kind", default="wordlevel", help="wordlevel | bpe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")


def text_corpus(data: str, root: str | None = None, num_samples: int = 20000, seed: int = 0) -> list[str]:
    """All text of a data set: captions, questions and answers."""
    if data == "shapes":
        from unigen.data.shapes import corpus, vocabulary_words

        # the exhaustive word list guarantees every template word is in the vocabulary
        return [*corpus("train", num_samples, seed), " ".join(vocabulary_words())]
    if data == "folder":
        from unigen.data.imagefolder import ImageFolderDataset

        if not root:
            raise ValueError("--data folder needs --root DIR (a folder with metadata.jsonl)")
        return ImageFolderDataset(root).texts()
    if data == "fashion_mnist":
        from unigen.data.fashion_mnist import CAPTION_TEMPLATES, CLASS_NAMES, QUESTION, caption_for

        captions = [caption_for(label, t) for label in range(len(CLASS_NAMES))
                    for t in range(len(CAPTION_TEMPLATES))]
        return [*captions, QUESTION, *CLASS_NAMES]
    raise ValueError(f"unknown --data {data!r}; known: shapes, folder, fashion_mnist")


def build_text_tokenizer(data: str, out: str, root: str | None = None, num_samples: int = 20000,
                         vocab_size: int = 4096, kind: str = "wordlevel", seed: int = 0):
    from unigen.tokenizers.text import TextTokenizer

    tok = TextTokenizer.train(text_corpus(data, root, num_samples, seed), vocab_size=vocab_size,
                              kind=kind)
    tok.save_pretrained(out)
    return tok


def _text_tokenizer(args: argparse.Namespace) -> None:
    tok = build_text_tokenizer(args.data, args.out, args.root, args.num_samples, args.vocab_size,
                               args.kind, args.seed)
    print(f"wrote a {tok.kind} text tokenizer with {tok.vocab_size} ids to {args.out}")


# -- export -----------------------------------------------------------------------------------------
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint of a UnifiedModule or TokenizerModule")
    p.add_argument("--out", required=True, help="output directory")


def export_checkpoint(ckpt: str, out: str) -> None:
    """Turn a training checkpoint into a ``save_pretrained`` directory (no pickle is executed)."""
    import torch

    from unigen.training.checkpoint import load_module_from_checkpoint

    module = load_module_from_checkpoint(ckpt)
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
                   help="evaluate every combination, e.g. guidance_scale=1,2,3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _eval(args: argparse.Namespace) -> None:
    from unigen.evaluate import evaluate_model, print_summary

    print_summary(evaluate_model(args.model, args.config, args.out, args.override, args.sweep,
                                 args.resume, args.device, not args.no_progress))


# -- tokenize (pretokenized shards) -----------------------------------------------------------------
def _tokenize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True,
                   help="image tokenizer directory (or a pipeline directory: its image_tokenizer/)")
    p.add_argument("--data", required=True, help="shapes | folder | fashion_mnist")
    p.add_argument("--root", default=None, help="image folder (--data folder) or IDX folder (fashion_mnist)")
    p.add_argument("--split", default=None, help="shapes: train|val|test|heldout; fashion_mnist: train|test")
    p.add_argument("--image-size", type=int, default=None, help="default: 64 (shapes, folder), 32 (fashion_mnist)")
    p.add_argument("--num-samples", type=int, default=None, help="first N samples (shapes default 10000)")
    p.add_argument("--seed", type=int, default=0, help="data set seed (shapes scenes, fashion_mnist subset)")
    p.add_argument("--shard-size", type=int, default=4096, help="samples per shard (one litdata chunk)")
    p.add_argument("--batch-size", type=int, default=64, help="images encoded at once")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", required=True, help="shard directory (rerun the same command to resume)")
    p.add_argument("--grid", default=None, help="reconstruction grid PNG (default OUT/reconstructions.png)")


def tokenize_data(tokenizer: str, data: str, out: str, root: str | None = None,
                  split: str | None = None, image_size: int | None = None,
                  num_samples: int | None = None, seed: int = 0, shard_size: int = 4096,
                  batch_size: int = 64, num_workers: int = 0, device: str = "cpu",
                  grid: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Encode a data set with an image tokenizer into litdata shards (:mod:`unigen.data.shards`)."""
    import torch

    from unigen.data.shards import SHARD_SOURCES, write_shards
    from unigen.tokenizers.base import ImageTokenizer

    path = Path(tokenizer)
    if (path / "pipeline.json").is_file():  # a pipeline directory names its tokenizer
        path = path / "image_tokenizer"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = ImageTokenizer.from_pretrained(path, map_location=device)
    given = {"root": root, "split": split, "image_size": image_size, "num_samples": num_samples}
    options = {"seed": seed, **{k: v for k, v in given.items() if v is not None}}
    dataset = SHARD_SOURCES.get(data)(**options)
    size = int(dataset[0]["image"].shape[-1])
    source = {"data": data, **options, "image_size": size}
    return write_shards(dataset, tok, out, size, shard_size, batch_size, num_workers, source,
                        grid, progress=progress)


def _tokenize(args: argparse.Namespace) -> None:
    m = tokenize_data(args.tokenizer, args.data, args.out, args.root, args.split, args.image_size,
                      args.num_samples, args.seed, args.shard_size, args.batch_size,
                      args.num_workers, args.device, args.grid)
    h, w = m["grid"]
    print(f"wrote {m['num_samples']} samples ({h}x{w} codes of {m['tokenizer']['codebook_size']}) "
          f"in {m['num_shards']} shards to {args.out}; look at {args.grid or Path(args.out) / 'reconstructions.png'}")


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


VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[Any], None]]] = {
    "generate": ("text -> images: write a captioned PNG grid (+ JSON of the settings)",
                 _generate_args, _generate),
    "caption": ("images -> captions (JSON)", _caption_args, _caption),
    "answer": ("images + questions -> answers (JSON)", _answer_args, _answer),
    "text-tokenizer": ("train a text tokenizer on a data set's captions/questions/answers",
                       _text_tokenizer_args, _text_tokenizer),
    "tokenize": ("encode a data set with an image tokenizer into resumable litdata shards",
                 _tokenize_args, _tokenize),
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

