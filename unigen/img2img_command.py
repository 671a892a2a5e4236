"""``unigen img2img``: variations of images steered by a prompt (``UnifiedPipeline.image_to_image``).

A share ``--strength`` of each image's tokens, drawn at random from its seed, is masked again
and redrawn under the prompt; the rest of the image is kept (aMUSEd's image-to-image; diffusers'
``strength``).  The output is a grid with each input (the redrawn tokens tinted) next to its
result, plus ``NAME.settings.json``, as ``unigen inpaint`` writes.
"""

from __future__ import annotations

import argparse

from unigen.commands import _common_model_args, _image_args, _load_images, _pipeline, _sampler_kwargs
from unigen.inpaint_command import add_redraw_args, finish, prepare


def add_arguments(p: argparse.ArgumentParser) -> None:
    _common_model_args(p)
    _image_args(p)
    p.add_argument("--strength", type=float, default=0.6,
                   help="share of each image's tokens redrawn, in (0, 1]: low keeps the image "
                        "close, 1 redraws it all (default 0.6; the decode runs ceil(strength * "
                        "steps) steps)")
    add_redraw_args(p, "text steering the redrawn tokens", "redrawn tokens")


def run(args: argparse.Namespace) -> None:
    from unigen.trajectory import TrajectoryRecorder

    if not 0.0 < args.strength <= 1.0:
        raise ValueError(f"--strength must be in (0, 1] (the share of tokens redrawn), got "
                         f"{args.strength}")
    job = prepare(args, "img2img")
    pipe = _pipeline(args)
    sampler = args.sampler or "maskgit"
    kwargs = _sampler_kwargs(args, pipe, sampler)
    images = _load_images(args.image, pipe.image_size, args.resize, args.convert)
    steps = 16 if args.steps is None else args.steps
    recorder = None if job.trajectory is None else TrajectoryRecorder()
    results = pipe.image_to_image(images, job.prompts, strength=args.strength, num_steps=steps,
                                  guidance_scale=args.guidance, sampler=sampler,
                                  sampler_kwargs=kwargs, seed=args.seed, output="tensor",
                                  progress=True, negative_prompt=job.negatives, callback=recorder)
    # the same draw image_to_image made from each sample's seed: the tokens it redrew
    regions = pipe.random_regions(len(images), args.strength,
                                  pipe.generators(len(images), args.seed))
    finish(args, job, pipe, images, regions, results, recorder,
           {"strength": args.strength, "steps": steps, "sampler_kwargs": kwargs})
