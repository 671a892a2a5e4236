"""``unigen inpaint``: regenerate a region of images from a prompt (``UnifiedPipeline.inpaint``;
MaskGIT's and Show-o's inpainting: the image outside the region is given, its tokens inside are
decoded, guided by the prompt).

The region is a mask image (white = regenerate, as diffusers' masks) or a pixel box; the output is
a grid with each input (the region tinted) next to its result, plus ``NAME.settings.json`` with the
settings.  Every check that needs no weights runs before the model loads.  :func:`prepare`,
:func:`finish` and :func:`add_redraw_args` serve ``unigen img2img`` too, which redraws a random
share of the tokens instead of a region.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unigen import io
from unigen.commands import (_check_fills, _check_model_args, _common_model_args, _grid_paths,
                             _guidance_args, _image_args, _input_files, _load_images, _negative_prompts,
                             _parse_sampler_args, _pipeline, _refuse_autoregressive,
                             _sampler_kwargs, _save_trajectory, _trajectory_args, _trajectory_path)

REGION_TINT = (1.0, 0.0, 1.0)  # magenta: no shapes-world or garment colour, so the region shows
TINT_ALPHA = 0.45


def add_arguments(p: argparse.ArgumentParser) -> None:
    _common_model_args(p)
    _image_args(p)
    region = p.add_mutually_exclusive_group(required=True)
    region.add_argument("--mask", action="append", default=None,
                        help="mask image, white (>= 128 grey) = regenerate, of the model's image "
                             "size or its token grid: one for every --image or one per --image "
                             "(repeatable)")
    region.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1",
                        help="regenerate this pixel box of every image (x1, y1 exclusive), e.g. "
                             "0,0,32,16 for the top half of a 32x32 image")
    p.add_argument("--invert", action="store_true",
                   help="regenerate everything outside the mask or box instead (outpainting: "
                        "the region is kept and the rest is drawn around it)")
    add_redraw_args(p, "text guiding the region", "region", fill=True)


def add_redraw_args(p: argparse.ArgumentParser, prompt_help: str, tinted_part: str,
                    fill: bool = False) -> None:
    """``--prompt``, the guidance options, ``--out`` and ``--trajectory`` of a verb that redraws
    part of its images (``inpaint``, ``img2img``); ``fill``: ``--fill`` instead of ``--prompt``
    (the region and the caption's blanks drawn together)."""
    text = p.add_mutually_exclusive_group(required=True) if fill else p
    text.add_argument("--prompt", action="append", required=not fill,
                      help=f"{prompt_help} (one for every image, or one per image)")
    if fill:
        text.add_argument("--fill", action="append", default=None, metavar="TEXT",
                          help="a caption with blanks (each standalone _ one word) filled in "
                               "the same decode as the region: UniDisc's joint infilling, for a "
                               "model trained with the joint task (one for every image, or one "
                               "per image)")
    _guidance_args(p)
    p.add_argument("--out", required=True,
                   help=f"grid image (.png, .jpg/.jpeg or .webp): each input with its "
                        f"{tinted_part} tinted, then its result; the settings go to "
                        "NAME.settings.json beside it")
    _trajectory_args(p)


def parse_box(text: str, size: int) -> tuple[int, int, int, int]:
    """``X0,Y0,X1,Y1`` as pixel bounds inside a ``size`` x ``size`` image, refused in one line
    when malformed, empty or outside it."""
    parts = text.split(",")
    try:
        x0, y0, x1, y1 = (int(v) for v in parts)
    except ValueError:
        raise ValueError(f"--box {text!r}: give four integers X0,Y0,X1,Y1 (pixels)") from None
    if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
        raise ValueError(f"--box {text!r}: need 0 <= X0 < X1 <= {size} and 0 <= Y0 < Y1 <= {size} "
                         f"(the model's images are {size}x{size}; X1, Y1 exclusive)")
    return x0, y0, x1, y1


def _per_image(values: list[Any], count: int, flag: str) -> list[Any]:
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ValueError(f"{flag}: give one, or one per --image ({count}); got {len(values)}")
    return values


def _masks(args: argparse.Namespace, size: int, mask_paths: list[str] | None) -> Any:
    """The region of each image: PIL masks from ``mask_paths`` (``--mask``, one per image), or a
    bool tensor from ``--box``."""
    import torch
    from PIL import Image, UnidentifiedImageError

    if args.box is not None:
        x0, y0, x1, y1 = parse_box(args.box, size)
        region = torch.zeros(size, size, dtype=torch.bool)
        region[y0:y1, x0:x1] = True
        return region
    from unigen.data.imagefolder import _CONVERTIBLE_MODES

    masks = []
    for path in mask_paths or []:
        try:
            with Image.open(path) as mask:
                mask.load()
                if mask.mode not in _CONVERTIBLE_MODES:  # 16-bit values would clip to 0/255
                    raise ValueError(f"--mask {path}: mode {mask.mode!r} (16/32-bit or float); "
                                     "save the mask as an 8-bit image")
                masks.append(mask.convert("L"))
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"--mask {path}: cannot read it as an image "
                             f"({type(err).__name__}: {err})") from None
    return masks


def tinted(images: Any, regions: Any, factor: int) -> Any:
    """``images`` [B, 3, H, W] with the token ``regions`` [B, h, w] blended towards the tint."""
    import torch
    from einops import repeat

    pixels = repeat(regions, "b h w -> b 1 (h fh) (w fw)", fh=factor, fw=factor).to(images.dtype)
    tint = torch.tensor(REGION_TINT, dtype=images.dtype).view(1, 3, 1, 1)
    return images * (1 - TINT_ALPHA * pixels) + tint * (TINT_ALPHA * pixels)


@dataclass
class RedrawJob:
    """What ``inpaint`` and ``img2img`` share once their options are checked: where the outputs
    go and the per-image prompts."""

    out: Path
    fmt: str
    settings: Path
    trajectory: tuple[Path, str] | None
    prompts: list[str]
    negatives: list[str] | None


def prepare(args: argparse.Namespace, verb: str) -> RedrawJob:
    """The checks of a verb that redraws part of its images, all before any weight loads."""
    from unigen.sampling.guidance import check_scale

    _check_model_args(args)
    check_scale(args.guidance, "--guidance", negative=False)
    out, fmt, settings = _grid_paths(args.out, _input_files(args))
    _refuse_autoregressive(args, verb)
    trajectory = _trajectory_path(args, out)
    _parse_sampler_args(args)
    fills = getattr(args, "fill", None)
    if fills is not None:
        if args.negative_prompt is not None:
            raise ValueError("--negative-prompt steers a --prompt; --fill has none to steer")
        _check_fills(fills)
    prompts = _per_image(args.prompt if fills is None else fills, len(args.image),
                         "--prompt" if fills is None else "--fill")
    negatives = _negative_prompts(args)
    if negatives is not None:
        negatives = _per_image(negatives, len(args.image), "--negative-prompt")
    return RedrawJob(out, fmt, settings, trajectory, prompts, negatives)


def finish(args: argparse.Namespace, job: RedrawJob, pipe: Any, images: Any, regions: Any,
           results: Any, recorder: Any, record: dict[str, Any],
           labels: list[str] | None = None) -> None:
    """Write the grid (each input with its redrawn tokens tinted, then its result captioned with
    ``labels``, by default the prompts), the trajectory when asked, and the settings (``record``
    plus what every such verb records)."""
    import torch

    from unigen.visual import captioned_grid

    shown = tinted(images, regions, pipe.image_tokenizer.downsample_factor)
    tiles = torch.stack([t for pair in zip(shown, results.cpu()) for t in pair])
    labels = labels or job.prompts
    captions = [text for path, label in zip(args.image, labels) for text in (Path(path).name, label)]
    with io.atomic_path(job.out) as tmp:
        captioned_grid(tiles, captions, ncol=2).save(tmp, format=job.fmt)
    drawn = None if recorder is None else _save_trajectory(recorder, pipe, job.trajectory,
                                                             args.trajectory_frames, labels)
    io.write_json(job.settings, {
        "images": list(args.image), **record, "trajectory": drawn, "prompts": job.prompts,
        "negative_prompts": job.negatives, "guidance": args.guidance, "seed": args.seed,
        "sampler": args.sampler or "maskgit", "resize": args.resize, "convert": args.convert,
        "regenerated_tokens": [int(r.sum()) for r in regions], "model": str(args.model)})
    also = "" if job.trajectory is None else f"; decoding steps in {job.trajectory[0]}"
    print(f"wrote {job.out} ({len(images)} image{'s' if len(images) != 1 else ''}; settings in "
          f"{job.settings}{also})")


def run(args: argparse.Namespace) -> None:
    from unigen.trajectory import TrajectoryRecorder

    job = prepare(args, "inpaint")
    # the masks' count and files are checked before any weight loads
    mask_paths = None if args.mask is None else _per_image(args.mask, len(args.image), "--mask")
    for path in mask_paths or []:
        if not Path(path).is_file():
            raise ValueError(f"--mask {path}: no such file")
    pipe = _pipeline(args)
    sampler = args.sampler or "maskgit"
    kwargs = _sampler_kwargs(args, pipe, sampler)
    images = _load_images(args.image, pipe.image_size, args.resize, args.convert)
    masks = _masks(args, pipe.image_size, mask_paths)
    try:
        regions = pipe.inpaint_regions(masks, len(images))
    except ValueError as err:
        raise ValueError(f"--{'box' if args.box is not None else 'mask'}: {err}") from None
    if args.invert:
        regions = ~regions
        full = [path for path, region in zip(args.image, regions) if not region.any()]
        if full:
            raise ValueError(f"--invert: the {'box' if args.box is not None else 'mask'} covers "
                             f"all of {full[0]}, so nothing outside it is left to regenerate")
    steps = 16 if args.steps is None else args.steps
    recorder = None if job.trajectory is None else TrajectoryRecorder()
    record = {"masks": args.mask, "box": args.box, "invert": args.invert, "steps": steps,
              "sampler_kwargs": kwargs}
    options = dict(num_steps=steps, guidance_scale=args.guidance, sampler=sampler,
                   sampler_kwargs=kwargs, seed=args.seed, output="tensor", progress=True,
                   callback=recorder)
    if args.fill is None:
        results = pipe.inpaint(images, regions, job.prompts, negative_prompt=job.negatives,
                               **options)
        finish(args, job, pipe, images, regions, results, recorder, record)
    else:  # the region and the caption's blanks in one decode
        filled = pipe.infill(images, job.prompts, mask=regions, **options)
        finish(args, job, pipe, images, regions, filled.images, recorder,
               {**record, "fill": job.prompts, "filled": filled.texts}, labels=filled.texts)
