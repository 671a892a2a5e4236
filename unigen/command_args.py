"""The flags and checks the ``unigen`` verbs share: ``--model`` / ``--device`` / ``--seed`` /
``--steps`` / ``--sampler`` / ``--sampler-arg``, input images, output paths, and loading the
pipeline at ``--model`` (:mod:`unigen.commands` and the verb modules build on them).

Every check here runs before anything is loaded, so a bad command line is one error line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # torch is imported where it is used: `unigen --help` does not need it
    from torch import Tensor


def _load_images(paths: list[str], size: int, resize: str, convert: bool) -> Tensor:
    """The ``--image`` files as one ``[B, 3, size, size]`` batch, fitted as ``--resize`` says;
    a file that cannot be used is one error naming the flags that fix it."""
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


# arguments that name what a verb writes; every other argument naming an existing file is read
OUTPUT_ARGS = frozenset({"out", "trajectory", "codes"})


def _input_files(args: argparse.Namespace) -> list[Path]:
    """The existing files a verb's arguments name (images, masks, layouts, ``--input
    SEGMENT=FILE``): what it reads, so that no output overwrites one of them."""
    found = []
    for key, value in vars(args).items():
        if key in OUTPUT_ARGS:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, tuple):  # the task verb's inputs: (segment, flag, value)
                segment, _, item = item
                if isinstance(item, str) and segment is None:  # --input SEGMENT=VALUE
                    item = item.split("=", 1)[-1]
            if isinstance(item, str):
                item = item.split("=", 1)[-1] if key == "input" else item
                if os.path.isfile(item):
                    found.append(Path(item))
    return found


def _check_out_file(path: str | Path, flag: str = "--out", example: str = "out.json",
                    reads: Iterable[Path] = ()) -> Path:
    """``path`` as a file this verb may write, checked before any work: not a directory, not
    inside a file, a name the file system takes, and none of the files it ``reads``."""
    path = Path(path)
    try:
        name_max = os.pathconf(".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    if any(len(part.encode()) > name_max for part in path.parts):
        raise ValueError(f"{flag} {path}: a name in it is longer than this file system's "
                         f"{name_max} bytes")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file path, e.g. {path / example}")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a directory")
    if path.exists():
        for source in reads:
            if os.path.samefile(path, source):
                raise ValueError(f"{flag} {path} is an input of this command; give another file, "
                                 f"or it would be overwritten")
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


# --out's extension picks the image format (PIL writes each); the settings go to NAME.settings.json
GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def _grid_paths(out: str, reads: Iterable[Path] = ()) -> tuple[Path, str, Path]:
    """(grid path, its PIL format, settings path), refused up front when unusable."""
    reads = list(reads)
    path = _check_out_file(out, example="grid.png", reads=reads)
    fmt = GRID_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"--out {path}: the extension picks the image format; use one of "
                         f"{', '.join(GRID_FORMATS)}")
    settings = _settings_path(path)  # never the image itself: .json is not an image format
    _check_out_file(settings, "the settings file", reads=reads)
    return path, fmt, settings
