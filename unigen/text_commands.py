"""``unigen caption`` and ``unigen answer``: images -> captions (or a text's blanks filled in,
``--fill``), images + questions -> answers, as JSON rows, plus ``NAME.settings.json`` beside them
and, with ``--trajectory``, each step's partial text.

Both read images with a masked pipeline and decode text (``UnifiedPipeline.caption``, ``infill``,
``answer``); every check that needs no weights runs before the model loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from unigen import io
from unigen.command_args import (GRID_FORMATS, _check_model_args, _check_out_file, _common_model_args,
                                 _image_args, _input_files, _load_images, _parse_sampler_args, _pipeline,
                                 _refuse_autoregressive, _sampler_kwargs, _settings_path)


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
    reads = _input_files(args)
    out = _check_out_file(args.out, reads=reads)
    if out.suffix.lower() in GRID_FORMATS:  # JSON under an image's name opens as a broken image
        raise ValueError(f"--out {out}: {verb} writes its results as JSON; give a .json path")
    settings = _check_out_file(_settings_path(out), "the settings file", reads=reads)
    if args.trajectory is not None:
        trajectory = _check_out_file(args.trajectory, "--trajectory", "steps.json", reads=reads)
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
    """``unigen caption``: a caption (or the ``--fill`` text's blanks filled) per image, as JSON
    rows, with the settings beside them."""
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
    """``unigen answer``: an answer per image and question, as JSON rows, with the settings
    beside them."""
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
