"""``unigen generate``: text -> a captioned grid of images (``UnifiedPipeline.text_to_image``, or an
autoregressive pipeline's), plus ``NAME.settings.json`` beside it.

Its ``--guidance`` / ``--negative-prompt`` and ``--trajectory`` flags and their checks serve the
verbs that redraw part of an image too (``inpaint``, ``img2img``), the way ``img2img`` builds on
:mod:`unigen.inpaint_command`.  Every check that needs no weights runs before the model loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from unigen import io
from unigen.command_args import (GRID_FORMATS, _check_model_args, _check_out_file, _check_positive,
                                 _common_model_args, _grid_paths, _input_files, _model_kind, _parse_sampler_args,
                                 _pipeline, _sampler_kwargs, _settings_path)


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


def _generate(args: argparse.Namespace) -> None:
    """``unigen generate``: every flag checked, then the grid and its settings written."""
    from unigen.sampling.guidance import check_scale
    from unigen.trajectory import TrajectoryRecorder
    from unigen.visual import captioned_grid

    _check_model_args(args)
    _check_positive(args.num_per_prompt, "--num-per-prompt")
    _check_positive(args.candidates, "--candidates")
    check_scale(args.guidance, "--guidance", negative=False)
    out, fmt, settings = _grid_paths(args.out, _input_files(args))
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
        images, calls = pipe.text_to_image(prompts, num_steps=steps, guidance_scale=args.guidance,
                                           sampler=sampler, sampler_kwargs=kwargs, seed=args.seed,
                                           output="tensor", progress=True, candidates=args.candidates,
                                           negative_prompt=negatives, callback=recorder, return_calls=True)
        # "steps" is the budget asked for (it reproduces the grid); a decode ends once every token
        # is placed, so each image's network calls say what was actually run
        record = {"steps": steps, "network_calls": calls, "candidates": args.candidates,
                  "sampler": sampler, "sampler_kwargs": kwargs, "negative_prompts": negatives}
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
    path = _check_out_file(args.trajectory, "--trajectory", "steps.png", reads=_input_files(args))
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
