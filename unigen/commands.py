"""Verbs of the ``unigen`` command beyond LightningCLI's fit/validate/test/predict.

Each verb is ``(one-line help, add_arguments(parser), run(args))`` in :data:`VERBS`; adding a verb is
one entry here (``unigen --help`` lists it automatically).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from unigen import io


def _load_images(paths: list[str], size: int, resize: str, convert: bool):
    import torch

    from unigen.data.imagefolder import BadSampleError, fit_image, image_to_tensor, load_image

    tensors = []
    for p in paths:
        try:
            tensors.append(image_to_tensor(fit_image(load_image(Path(p), convert), size, resize)))
        except BadSampleError as err:
            # the library's messages name its keyword arguments; here they are command-line flags
            message = str(err).replace("pass convert_mode=True to convert it", "pass --convert to "
                                       "convert it").replace("(resize='none')", "(--resize none "
                                       "does not resize; pass --resize resize, center_crop or pad)")
            raise ValueError(message if str(p) in message else f"image {p}: {message}") from None
    return torch.stack(tensors)


def check_device(device: str, allow_auto: bool = False, flag: str = "--device") -> str:
    """One clear error for a ``--device`` that cannot work here (shared by every verb that takes
    one, and by ``UnifiedPipeline.from_pretrained(device=...)`` with ``flag="device"``), before
    anything is loaded; returns it unchanged."""
    import torch

    def named(value: str, quoted: bool = False) -> str:  # how the message shows the setting
        if flag.startswith("--"):
            return f"{flag} {value!r}" if quoted else f"{flag} {value}"
        return f"{flag}={value!r}"

    if allow_auto and device == "auto":
        return device
    known = ("auto | " if allow_auto else "") + "cpu | cuda | cuda:N | mps"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{named(device, True)} is not a device; use {known}") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{named(device)}: no CUDA GPU is available on this machine "
                             f"(use {named('cpu')})")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{named(device)}: this machine has {count} CUDA GPU"
                             f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
        return device
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{named(device)}: MPS is not available on this machine "
                             f"(use {named('cpu')})")
        return device
    raise ValueError(f"{named(device, True)}: unigen runs on {known}")


def _check_positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be at least 1, got {value}")


def _check_out_file(path: str | Path, flag: str = "--out", example: str = "out.json") -> Path:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file path, e.g. {path / example}")
    return path


def _settings_path(out: Path) -> Path:
    """Where every verb records its settings: ``NAME.settings.json`` next to ``--out`` (an
    image or a JSON of results), so one rule finds them whatever the verb."""
    return out.with_suffix(".settings.json")


def _pipeline(args: argparse.Namespace):
    """The pipeline at ``--model``, of the class its ``pipeline.json`` kind names."""
    from unigen.pipeline import load_pipeline

    return load_pipeline(args.model, device=args.device)


def _model_kind(args: argparse.Namespace) -> str:
    """``--model``'s pipeline kind (``masked`` or ``autoregressive``), read before loading it."""
    from unigen.pipeline import pipeline_kind

    return pipeline_kind(args.model)


def _refuse_autoregressive(args: argparse.Namespace, verb: str) -> None:
    """Captioning and VQA need the masked model: one line, before the weights are read."""
    if _model_kind(args) == "autoregressive":
        raise ValueError(f"--model {args.model} holds an autoregressive pipeline, which generates "
                         f"images from text only; `unigen {verb}` needs a masked (unified) "
                         "pipeline")


def _common_model_args(parser: argparse.ArgumentParser, sampler: str = "maskgit",
                       steps: str = "16") -> None:
    parser.add_argument("--model", required=True, help="pipeline directory (save_pretrained / --export_dir)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default 0)")
    parser.add_argument("--steps", type=int, default=None, help=f"decoding steps, at least 1 "
                                                                f"(default {steps})")
    # None: the verb's default, resolved later (an autoregressive model refuses an explicit one)
    parser.add_argument("--sampler", default=None,
                        help=f"maskgit | ancestral | confident | remask | semi_ar | halton, or a "
                             f"plugin's (default {sampler})")
    parser.add_argument("--sampler-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a sampler option, value as YAML (repeatable), e.g. schedule=cosine "
                             "(docs/samplers.md)")


def _check_model_args(args: argparse.Namespace) -> None:
    """The checks every model verb makes before loading anything."""
    check_device(args.device)
    _check_positive(args.steps, "--steps")


def _parse_sampler_args(args: argparse.Namespace) -> dict[str, Any]:
    """``--sampler-arg`` pairs (values as YAML); their syntax only, before anything is loaded."""
    import yaml

    kwargs = {}
    for item in args.sampler_arg:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--sampler-arg expects KEY=VALUE, got {item!r}")
        try:
            kwargs[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = " ".join(str(getattr(err, "problem", None) or err).split())
            raise ValueError(f"--sampler-arg {item!r}: the value is not YAML ({problem})") from None
    return kwargs


def _sampler_kwargs(args: argparse.Namespace, pipe: Any, sampler: str) -> dict[str, Any]:
    """``--sampler-arg`` pairs, checked by building the sampler the way the pipeline will (its
    special ids filled in, ``mask_id`` refused: ``UnifiedPipeline.make_sampler``), so a bad
    option is one error line naming it before any decoding."""
    kwargs = _parse_sampler_args(args)
    pipe.make_sampler(sampler, kwargs, option="--sampler-arg")
    return kwargs


def _image_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", action="append", required=True, help="input image (repeatable)")
    parser.add_argument("--resize", default="none",
                        help="none | resize | center_crop | pad (default none: the image must have "
                             "the model's size)")
    parser.add_argument("--convert", action="store_true", help="convert grayscale/RGBA inputs to RGB")


# -- generate ---------------------------------------------------------------------------------------
# --out's extension picks the image format (PIL writes each); the settings go to NAME.settings.json
GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def _guidance_args(p: argparse.ArgumentParser) -> None:
    """``--guidance`` and ``--negative-prompt`` (``generate``, ``inpaint``)."""
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale, >= 0 (default 1.0: no guidance; 0: unconditional)")
    p.add_argument("--negative-prompt", action="append", default=None,
                   help="what guidance steers away from: one for every --prompt, or one per "
                        "--prompt, in order (repeatable; needs --guidance other than 1)")


def _generate_args(p: argparse.ArgumentParser) -> None:
    _common_model_args(p)
    p.add_argument("--out", required=True,
                   help="captioned grid image: .png, .jpg/.jpeg or .webp (the extension picks the "
                        "format); the settings go to NAME.settings.json beside it")
    p.add_argument("--prompt", action="append", required=True, help="text prompt (repeatable)")
    p.add_argument("--num-per-prompt", type=int, default=1,
                   help="images per prompt, at least 1 (default 1)")
    _guidance_args(p)
    p.add_argument("--candidates", type=int, default=1,
                   help="draw this many images per prompt and keep the one the model itself reads "
                        "the prompt from best (its caption ELBO; unigen.verification; default 1)")
    _trajectory_args(p)


def _trajectory_args(p: argparse.ArgumentParser) -> None:
    """``--trajectory`` and ``--trajectory-frames`` (``generate``, ``inpaint``, ``img2img``)."""
    p.add_argument("--trajectory", default=None, metavar="FILE",
                   help="also draw the decoding: one row per image, evenly spaced steps, revealed "
                        "tokens drawn and masked ones gray (.png, .jpg/.jpeg or .webp)")
    p.add_argument("--trajectory-frames", type=int, default=6, metavar="N",
                   help="steps shown in --trajectory, the last always among them (default 6)")


def _grid_paths(out: str) -> tuple[Path, str, Path]:
    """(grid path, its PIL format, settings path), refused up front when unusable."""
    path = _check_out_file(out, example="grid.png")
    fmt = GRID_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"--out {path}: the extension picks the image format; use one of "
                         f"{', '.join(GRID_FORMATS)}")
    settings = _settings_path(path)  # never the image itself: .json is not an image format
    _check_out_file(settings, "the settings file")
    return path, fmt, settings


def _generate(args: argparse.Namespace) -> None:
    from unigen.sampling.guidance import check_scale
    from unigen.trajectory import TrajectoryRecorder
    from unigen.visual import captioned_grid

    _check_model_args(args)
    _check_positive(args.num_per_prompt, "--num-per-prompt")
    _check_positive(args.candidates, "--candidates")
    check_scale(args.guidance, "--guidance", negative=False)
    out, fmt, settings = _grid_paths(args.out)
    trajectory = _trajectory_path(args, out)
    _parse_sampler_args(args)
    prompts = [p for p in args.prompt for _ in range(args.num_per_prompt)]
    recorder = None
    if _model_kind(args) == "autoregressive":
        images, record = _generate_autoregressive(args, prompts)
    else:
        negatives = _negative_prompts(args)
        if negatives is not None:  # each prompt's repeats share its negative
            negatives = [n for n in negatives for _ in range(args.num_per_prompt)]
        pipe = _pipeline(args)
        sampler = args.sampler or "maskgit"
        kwargs = _sampler_kwargs(args, pipe, sampler)
        steps = 16 if args.steps is None else args.steps
        recorder = None if trajectory is None else TrajectoryRecorder()
        images = pipe.text_to_image(prompts, num_steps=steps, guidance_scale=args.guidance,
                                    sampler=sampler, sampler_kwargs=kwargs, seed=args.seed,
                                    output="tensor", progress=True, candidates=args.candidates,
                                    negative_prompt=negatives, callback=recorder)
        record = {"steps": steps, "candidates": args.candidates, "sampler": sampler,
                  "sampler_kwargs": kwargs, "negative_prompts": negatives}
    grid = captioned_grid(images.cpu(), prompts)
    with io.atomic_path(out) as tmp:
        grid.save(tmp, format=fmt)
    if recorder is not None:
        record["trajectory"] = _save_trajectory(recorder, pipe, trajectory,
                                                args.trajectory_frames, prompts)
    io.write_json(settings, {"prompts": prompts, "seed": args.seed, "guidance": args.guidance,
                             **record, "model": str(args.model)})
    drawn = "" if recorder is None else f"; decoding steps in {trajectory[0]}"
    print(f"wrote {out} ({len(prompts)} image{'s' if len(prompts) != 1 else ''}; settings in "
          f"{settings}{drawn})")


def _save_trajectory(recorder: Any, pipe: Any, trajectory: tuple[Path, str], frames: int,
                     labels: list[str]) -> dict[str, Any]:
    """Write ``recorder``'s grid to ``--trajectory``; return what the settings record of it."""
    path, fmt = trajectory
    with io.atomic_path(path) as tmp:
        recorder.grid(pipe, frames, labels).save(tmp, format=fmt)
    return {"path": str(path), "frames": frames}


def _trajectory_path(args: argparse.Namespace, out: Path) -> tuple[Path, str] | None:
    """``--trajectory`` as (path, PIL format), refused up front when it cannot be drawn."""
    if args.trajectory is None:
        return None
    if args.trajectory_frames < 1:
        raise ValueError(f"--trajectory-frames must be >= 1, got {args.trajectory_frames}")
    if getattr(args, "candidates", 1) > 1:
        raise ValueError("--trajectory draws one decode per image; with --candidates "
                         f"{args.candidates} there are several (drop one of the two)")
    if _model_kind(args) == "autoregressive":
        raise ValueError(f"--trajectory: --model {args.model} is autoregressive; it decodes one "
                         "token at a time in raster order, with no masked steps to draw")
    path = _check_out_file(args.trajectory, "--trajectory", "steps.png")
    fmt = GRID_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"--trajectory {path}: the extension picks the image format; use one of "
                         f"{', '.join(GRID_FORMATS)}")
    if path.resolve() in (out.resolve(), _settings_path(out).resolve()):
        raise ValueError(f"--trajectory {path} is where --out's grid or settings go; give "
                         "another file")
    return path, fmt


def _negative_prompts(args: argparse.Namespace) -> list[str] | None:
    """``--negative-prompt`` as one string per ``--prompt``, refused in one line when it cannot
    act (shared by ``generate`` and ``inpaint``)."""
    if args.negative_prompt is None:
        return None
    if args.guidance == 1.0:
        raise ValueError("--negative-prompt acts through classifier-free guidance; set --guidance "
                         "to a value other than 1 (e.g. 2)")
    negatives = args.negative_prompt
    if len(negatives) == 1:
        negatives = negatives * len(args.prompt)
    if len(negatives) != len(args.prompt):
        raise ValueError(f"--negative-prompt: give one, or one per --prompt ({len(args.prompt)}); "
                         f"got {len(args.negative_prompt)}")
    return negatives


# what --sampler-arg may set for an autoregressive model: its token sampling
AR_SAMPLING_OPTIONS = ("temperature", "top_k")


def _generate_autoregressive(args: argparse.Namespace, prompts: list[str]) -> tuple[Any, dict]:
    """``generate`` with an autoregressive pipeline: one token per step in raster order, so the
    masked samplers' options (``--sampler``, ``--steps``, ``--candidates``) do not apply and are
    refused; ``--sampler-arg`` takes its ``temperature`` and ``top_k``."""
    given = [flag for flag, used in (("--sampler", args.sampler is not None),
                                     ("--steps", args.steps is not None),
                                     ("--candidates", args.candidates != 1),
                                     ("--negative-prompt", args.negative_prompt is not None)) if used]
    if given:
        raise ValueError(f"{given[0]}: --model {args.model} holds an autoregressive pipeline, "
                         "which decodes one image token per step (no sampler, step budget, "
                         "candidates or negative prompt; --sampler-arg takes temperature and top_k)")
    kwargs = _parse_sampler_args(args)
    unknown = sorted(set(kwargs) - set(AR_SAMPLING_OPTIONS))
    if unknown:
        raise ValueError(f"--sampler-arg {unknown[0]}: the autoregressive pipeline at {args.model} "
                         f"takes {' and '.join(AR_SAMPLING_OPTIONS)} only")
    temperature, top_k = kwargs.get("temperature", 1.0), kwargs.get("top_k")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"--sampler-arg temperature={temperature!r}: must be a number >= 0")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"--sampler-arg top_k={top_k!r}: must be an integer >= 1 (or null)")
    pipe = _pipeline(args)
    images = pipe.text_to_image(prompts, guidance_scale=args.guidance, temperature=float(temperature),
                                top_k=top_k, seed=args.seed, output="tensor")
    return images, {"kind": "autoregressive", "sampler_kwargs": kwargs}


# -- caption / answer -------------------------------------------------------------------------------
def _text_out_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True,
                   help="output JSON; the settings (seed, steps, sampler) go to NAME.settings.json "
                        "beside it")


def _caption_args(p: argparse.ArgumentParser) -> None:
    from unigen.pipeline import TEXT_SAMPLER

    _common_model_args(p, TEXT_SAMPLER, steps="the model's text length; with --fill, the most "
                                               "blanks of a text")
    _text_out_arg(p)
    _image_args(p)
    _text_trajectory_arg(p)
    p.add_argument("--fill", action="append", default=None, metavar="TEXT",
                   help="fill in the blanks of this text instead of writing a whole caption: "
                        "each standalone _ is one word to generate, e.g. 'a _ circle above a "
                        "blue _' (one for every --image, or one per --image)")


def _check_fills(fills: list[str]) -> None:
    """Every ``--fill`` text has a blank to fill (``caption``, ``inpaint``)."""
    from unigen.diffusion.tasks import BLANK

    empty = [f for f in fills if BLANK not in f.split()]
    if empty:
        raise ValueError(f"--fill {empty[0]!r} has no blank: write each word to generate as a "
                         f"standalone {BLANK} (e.g. 'a {BLANK} circle')")


def _text_trajectory_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trajectory", default=None, metavar="FILE",
                   help="also write each step's partial text per image as JSON (masked tokens "
                        "shown as _): the order the words were filled in")


def _text_settings(args: argparse.Namespace, steps: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"images": list(args.image), "seed": args.seed, "steps": steps, "sampler": args.sampler,
            "sampler_kwargs": kwargs, "resize": args.resize, "convert": args.convert,
            "trajectory": args.trajectory, "model": str(args.model)}


def _text_recorder(args: argparse.Namespace) -> Any:
    """A :class:`~unigen.trajectory.TrajectoryRecorder` when ``--trajectory`` asks for one."""
    from unigen.trajectory import TrajectoryRecorder

    return None if args.trajectory is None else TrajectoryRecorder()


def _write_text_trajectory(args: argparse.Namespace, pipe: Any, recorder: Any) -> None:
    """``--trajectory``: each image's partial text after every step, as JSON rows."""
    if recorder is not None:
        io.write_json(args.trajectory, [{"image": path, "steps": steps} for path, steps
                                        in zip(args.image, recorder.texts(pipe))])


def _read_images_for(args: argparse.Namespace, verb: str) -> tuple[Path, Path, Any, dict, Any]:
    """What caption and answer share: the checks that need no weights, then the pipeline, its
    text sampler's options and the images: ``(out, settings path, pipe, sampler kwargs, images)``."""
    from unigen.pipeline import TEXT_SAMPLER

    _check_model_args(args)
    out = _check_out_file(args.out)
    settings = _check_out_file(_settings_path(out), "the settings file")
    if args.trajectory is not None:
        trajectory = _check_out_file(args.trajectory, "--trajectory", "steps.json")
        if trajectory.resolve() in (out.resolve(), settings.resolve()):
            raise ValueError(f"--trajectory {trajectory} is where --out's results or settings go; "
                             "give another file")
    _parse_sampler_args(args)
    _refuse_autoregressive(args, verb)
    pipe = _pipeline(args)
    args.sampler = args.sampler or TEXT_SAMPLER
    kwargs = _sampler_kwargs(args, pipe, args.sampler)
    images = _load_images(args.image, pipe.image_size, args.resize, args.convert)
    return out, settings, pipe, kwargs, images


def _caption(args: argparse.Namespace) -> None:
    fills = None
    if args.fill is not None:  # checked before the model loads
        fills = args.fill * len(args.image) if len(args.fill) == 1 else args.fill
        if len(fills) != len(args.image):
            raise ValueError(f"--fill: give one, or one per --image ({len(args.image)}); got "
                             f"{len(args.fill)}")
        _check_fills(fills)
    out, settings, pipe, kwargs, images = _read_images_for(args, "caption")
    recorder = _text_recorder(args)
    if args.fill is None:
        steps = pipe.space.sequence.max_text_len if args.steps is None else args.steps
        captions = pipe.caption(images, num_steps=steps, sampler=args.sampler, seed=args.seed,
                                sampler_kwargs=kwargs, progress=True, callback=recorder)
        rows = [{"image": p, "caption": c} for p, c in zip(args.image, captions)]
    else:
        steps = args.steps
        captions = pipe.infill(images, fills, num_steps=steps, sampler=args.sampler,
                               seed=args.seed, sampler_kwargs=kwargs, progress=True,
                               callback=recorder, output="codes").texts
        rows = [{"image": p, "fill": f, "caption": c}
                for p, f, c in zip(args.image, fills, captions)]
    io.write_json(out, rows)
    _write_text_trajectory(args, pipe, recorder)
    io.write_json(settings, {**_text_settings(args, steps, kwargs), "fill": fills})
    for row in rows:
        print(f"{row['image']}: {row['caption']}")


def _answer_args(p: argparse.ArgumentParser) -> None:
    from unigen.pipeline import ANSWER_STEPS, TEXT_SAMPLER

    _common_model_args(p, TEXT_SAMPLER, steps=str(ANSWER_STEPS))
    _text_out_arg(p)
    _image_args(p)
    _text_trajectory_arg(p)
    p.add_argument("--question", action="append", required=True,
                   help="question (one for all images, or one per image)")


def _answer(args: argparse.Namespace) -> None:
    from unigen.pipeline import ANSWER_STEPS

    out, settings, pipe, kwargs, images = _read_images_for(args, "answer")
    questions = args.question * len(args.image) if len(args.question) == 1 else args.question
    steps = ANSWER_STEPS if args.steps is None else args.steps
    recorder = _text_recorder(args)
    answers = pipe.answer(images, questions, num_steps=steps, sampler=args.sampler,
                          seed=args.seed, sampler_kwargs=kwargs, progress=True, callback=recorder)
    rows = [{"image": p, "question": q, "answer": a} for p, q, a in zip(args.image, questions, answers)]
    io.write_json(out, rows)
    _write_text_trajectory(args, pipe, recorder)
    io.write_json(settings, {**_text_settings(args, steps, kwargs), "questions": questions})
    for row in rows:
        print(f"{row['image']}: {row['question']} -> {row['answer']}")


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


# -- text tokenizer ---------------------------------------------------------------------------------
def _text_tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="shapes",
                   help="a registered shard source: shapes | folder | fashion_mnist, or a plugin's "
                        "(docs/extending.md; default shapes)")
    p.add_argument("--root", default=None, help="image folder with metadata.jsonl (--data folder)")
    p.add_argument("--num-samples", type=int, default=20000,
                   help="samples to read text from (shapes; sources without texts(); default 20000)")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="vocabulary size, control tokens included (--task-token ids come on top; default 4096)")
    p.add_argument("--kind", default="wordlevel",
                   help="wordlevel (one id per word) | bpe (subwords) (default wordlevel)")
    p.add_argument("--seed", type=int, default=0,
                   help="data set seed: which scenes/items the texts come from (default 0)")
    p.add_argument("--task-token", action="append", default=[], metavar="NAME",
                   help="add the <NAME> token of a task beyond the built-in six (repeatable; "
                        "docs/extending.md, \"A task\")")
    p.add_argument("--out", required=True, help="output directory")


Wrap = Callable[[Iterable[int]], Iterable[int]]  # wraps the item indices read (a progress bar)


def _shapes_texts(root: str | None, num_samples: int, seed: int, items: Wrap) -> list[str]:
    from unigen.data.shapes import corpus, vocabulary_words

    # the exhaustive word list guarantees every template word is in the vocabulary
    return [*corpus("train", num_samples, seed, items), " ".join(vocabulary_words())]


def _fashion_mnist_texts(root: str | None, num_samples: int, seed: int, items: Wrap) -> list[str]:
    from unigen.data.fashion_mnist import CAPTION_TEMPLATES, CLASS_NAMES, QUESTION, caption_for

    captions = [caption_for(label, t) for label in range(len(CLASS_NAMES))
                for t in range(len(CAPTION_TEMPLATES))]
    return [*captions, QUESTION, *CLASS_NAMES]


# built-in sources whose text is known without building the data set (rendering the shapes world,
# reading the Fashion-MNIST files)
_TEXTS_WITHOUT_IMAGES: dict[str, Callable[[str | None, int, int, Wrap], list[str]]] = {
    "shapes": _shapes_texts, "fashion_mnist": _fashion_mnist_texts}
TEXT_FIELDS = ("caption", "description", "question", "answer")


def text_corpus(data: str, root: str | None = None, num_samples: int = 20000, seed: int = 0,
                progress: bool = False) -> list[str]:
    """All text of a data set: captions, questions and answers.  ``data`` is any source of
    :data:`unigen.data.shards.SHARD_SOURCES` (the ``unigen tokenize --data`` names, plugins'
    included): the corpus is its data set's ``texts()`` when it has one, else the non-empty
    ``caption``, ``description``, ``question`` and ``answer`` of its first ``num_samples`` items.
    ``progress``: a bar over the items read (rendering 20,000 shapes scenes takes ~20 s)."""
    from functools import partial

    from tqdm.auto import tqdm

    from unigen.data.shards import SHARD_SOURCES

    items: Wrap = partial(tqdm, desc=f"reading {data} texts", unit="item", disable=not progress,
                          leave=False)

    try:
        source = SHARD_SOURCES.get(data)
    except KeyError as err:
        raise ValueError(f"--data: {err.args[0]}") from None
    if data in _TEXTS_WITHOUT_IMAGES:
        return _TEXTS_WITHOUT_IMAGES[data](root, num_samples, seed, items)
    options = {"seed": seed, **({"root": root} if root is not None else {})}
    dataset = source(**options)
    if callable(getattr(dataset, "texts", None)):
        return list(dataset.texts())
    texts = []
    for i in items(range(min(num_samples, len(dataset)))):
        item = dataset[i]
        if not isinstance(item, dict):
            raise ValueError(f"--data {data}: items must be dicts with text fields "
                             f"({', '.join(TEXT_FIELDS)}), got {type(item).__name__}")
        texts += [item[k] for k in TEXT_FIELDS if isinstance(item.get(k), str) and item[k]]
    if not texts:
        raise ValueError(f"--data {data}: its items hold no text ({', '.join(TEXT_FIELDS)})")
    return texts


def build_text_tokenizer(data: str, out: str, root: str | None = None, num_samples: int = 20000,
                         vocab_size: int = 4096, kind: str = "wordlevel", seed: int = 0,
                         task_tokens: Sequence[str] = (), progress: bool = False):
    import sys

    from unigen.tokenizers.text import TextTokenizer

    texts = text_corpus(data, root, num_samples, seed, progress)
    if progress:
        print(f"training a {kind} text tokenizer on {len(texts)} texts", file=sys.stderr)
    tok = TextTokenizer.train(texts, vocab_size=vocab_size, kind=kind, task_tokens=task_tokens)
    tok.save_pretrained(out)
    return tok


def _text_tokenizer(args: argparse.Namespace) -> None:
    tok = build_text_tokenizer(args.data, args.out, args.root, args.num_samples, args.vocab_size,
                               args.kind, args.seed, args.task_token, progress=True)
    extra = f" (task tokens added: {', '.join(tok.extra_tasks)})" if tok.extra_tasks else ""
    print(f"wrote a {tok.kind} text tokenizer with {tok.vocab_size} ids to {args.out}{extra}")


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


# -- tokenize (pretokenized shards) -----------------------------------------------------------------
def _tokenize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True,
                   help="image tokenizer directory (or a pipeline directory: its image_tokenizer/)")
    p.add_argument("--data", required=True, help="shapes | folder | fashion_mnist")
    p.add_argument("--root", default=None, help="image folder (--data folder) or IDX folder (fashion_mnist)")
    p.add_argument("--split", default=None, help="shapes: train|val|heldout; fashion_mnist: train|test")
    p.add_argument("--image-size", type=int, default=None, help="default: 64 (shapes, folder), 32 (fashion_mnist)")
    p.add_argument("--num-samples", type=int, default=None, help="first N samples (shapes default 10000)")
    p.add_argument("--seed", type=int, default=0, help="data set seed (shapes scenes, fashion_mnist subset)")
    p.add_argument("--shard-size", type=int, default=4096, help="samples per shard (one litdata chunk)")
    p.add_argument("--batch-size", type=int, default=64, help="images encoded at once")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", required=True, help="shard directory (rerun the same command to resume)")
    p.add_argument("--grid", default=None, help="reconstruction grid PNG (default OUT/reconstructions.png)")


def image_tokenizer_path(tokenizer: str | Path) -> Path:
    """What a ``--tokenizer`` names: an image tokenizer directory, or a pipeline directory (its
    ``pipeline.json`` says so), whose tokenizer is its ``image_tokenizer/`` (``tokenize``,
    ``reconstruct``)."""
    path = Path(tokenizer)
    if (path / "pipeline.json").is_file():
        return path / "image_tokenizer"
    return path


def tokenize_data(tokenizer: str, data: str, out: str, root: str | None = None,
                  split: str | None = None, image_size: int | None = None,
                  num_samples: int | None = None, seed: int = 0, shard_size: int = 4096,
                  batch_size: int = 64, num_workers: int = 0, device: str = "cpu",
                  grid: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Encode a data set with an image tokenizer into litdata shards (:mod:`unigen.data.shards`)."""
    import torch

    from unigen.data.shards import SHARD_SOURCES, write_shards
    from unigen.tokenizers.base import ImageTokenizer

    path = image_tokenizer_path(tokenizer)
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
    check_device(args.device, allow_auto=True)
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

