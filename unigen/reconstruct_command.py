"""``unigen reconstruct``: what an image tokenizer does to your images (encode -> codes -> decode).

The output is a grid with each image next to its reconstruction, captioned with its PSNR, plus
``NAME.settings.json`` with the tokenizer, the per-image PSNR / SSIM / distinct codes and their
means; ``--codes`` also saves the codes so they can be decoded later.  Every check that needs no
weights (flags, output paths, the image files themselves) runs before the tokenizer loads.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from unigen import io
from unigen.metrics.report import json_safe
from unigen.commands import (_check_out_file, _check_positive, _grid_paths, _input_files, _load_images,
                             check_device, image_tokenizer_path)

CODES_SUFFIX = ".safetensors"
CODES_KEY = "codes"  # the tensor's name in the --codes file: int64 [N, h, w]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="image tokenizer directory (or a pipeline directory: its image_tokenizer/)")
    p.add_argument("--image", action="append", required=True, help="input image (repeatable)")
    p.add_argument("--out", required=True,
                   help="grid image (.png, .jpg/.jpeg or .webp): each image next to its "
                        "reconstruction; the settings and per-image PSNR / SSIM go to "
                        "NAME.settings.json beside it (PSNR null: an exact reconstruction)")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="bring every image to N x N pixels, a multiple of the tokenizer's "
                        "downsample factor (default: the first image's size, which every image "
                        "must then have)")
    # not commands._image_args: its --resize help speaks of the model's size, and here the size
    # is --image-size or the first image's
    p.add_argument("--resize", default="none",
                   help="none | resize | center_crop | pad: how an image of another size reaches "
                        "--image-size (default none: it must have that size)")
    p.add_argument("--convert", action="store_true", help="convert grayscale/RGBA inputs to RGB")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:N | mps (default auto: cuda when there is one)")
    p.add_argument("--codes", default=None, metavar="FILE.safetensors",
                   help=f"also save the codes (int64 [N, h, w], tensor {CODES_KEY!r}) to decode "
                        "them later")


def _codes_path(codes: str | None) -> Path | None:
    if codes is None:
        return None
    path = _check_out_file(codes, "--codes", f"codes{CODES_SUFFIX}")
    if path.suffix.lower() != CODES_SUFFIX:
        raise ValueError(f"--codes {path}: the codes are written as safetensors; give a path "
                         f"ending in {CODES_SUFFIX}")
    return path


def _own_size(path: str) -> tuple[int, int] | None:
    """An image file's (width, height) as it will be decoded (EXIF rotation applied), read from
    its header; None when it cannot be read, which ``_load_images`` then reports."""
    from PIL import ExifTags, Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
            rotated = img.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
    except (OSError, UnidentifiedImageError, SyntaxError):
        return None
    return (h, w) if rotated else (w, h)


def _image_size(paths: list[str], resize: str) -> int:
    """The size every image is brought to when ``--image-size`` is not given: the first image's,
    which every other image must then share (resizing them all to whichever came first would
    make the result depend on the order of the flags)."""
    first = _own_size(paths[0])
    if first is None:
        return 0  # unreadable: _load_images names the file and why
    how = "pass --image-size N" + ("" if resize != "none" else
                                   " with --resize resize, center_crop or pad")
    if first[0] != first[1]:
        raise ValueError(f"--image {paths[0]} is {first[0]}x{first[1]}, not square; {how} to "
                         "bring the images to N x N")
    for path in paths[1:]:
        size = _own_size(path)
        if size is not None and size != first:
            raise ValueError(f"--image {path} is {size[0]}x{size[1]}, but the first image "
                             f"({paths[0]}) is {first[0]}x{first[1]}; without --image-size every "
                             f"image must have the first one's size ({how} to bring them to one)")
    return first[0]


def _check_multiple(size: int, factor: int, given: bool) -> None:
    if size % factor:
        source = "--image-size" if given else "the images' size"
        raise ValueError(f"{source} {size} is not a multiple of the tokenizer's downsample factor "
                         f"{factor}; pass --image-size N with N a multiple of {factor} (and "
                         "--resize resize, center_crop or pad)")


def per_image_metrics(reconstructions: Any, originals: Any) -> tuple[list[float], list[float]]:
    """PSNR (dB) and SSIM of each image pair, with the metrics tokenizer training logs
    (:mod:`unigen.metrics.reconstruction`), one image at a time: their ``compute`` averages a
    batch."""
    from unigen.metrics.reconstruction import PSNR, SSIM

    psnr, ssim = [], []
    for rec, orig in zip(reconstructions, originals):
        for values, metric in ((psnr, PSNR()), (ssim, SSIM())):
            metric.update(rec[None], orig[None])
            values.append(float(metric.compute()))
    return psnr, ssim


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def run(args: argparse.Namespace) -> None:
    import torch

    from unigen.data.imagefolder import RESIZE_POLICIES
    from unigen.tokenizers.base import ImageTokenizer
    from unigen.visual import captioned_grid

    check_device(args.device, allow_auto=True)
    _check_positive(args.image_size, "--image-size")
    if args.resize not in RESIZE_POLICIES:  # before the size probe, which suggests a policy
        raise ValueError(f"--resize {args.resize!r}: use one of none, resize, center_crop, pad")
    out, fmt, settings = _grid_paths(args.out, _input_files(args))
    codes_path = _codes_path(args.codes)
    size = args.image_size or _image_size(args.image, args.resize)
    # the images load before the weights, so a missing or unreadable one costs no loading
    images = _load_images(args.image, size, args.resize, args.convert)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer_dir = image_tokenizer_path(args.tokenizer)
    tok = ImageTokenizer.from_pretrained(tokenizer_dir, map_location=device)
    _check_multiple(size, tok.downsample_factor, args.image_size is not None)
    with torch.inference_mode():
        codes = tok.encode(images.to(device))
        reconstructions = tok.decode(codes).float().cpu()
        psnr, ssim = per_image_metrics(reconstructions, images)
    codes = codes.cpu()
    names = [Path(p).name for p in args.image]
    tiles = torch.stack([t for pair in zip(images, reconstructions) for t in pair])
    labels = [text for name, db in zip(names, psnr)
              for text in (name, f"recon {db:.1f} dB" if math.isfinite(db) else "recon exact")]
    grid = captioned_grid(tiles, labels, ncol=2)
    rows = [{"image": path, "psnr": p, "ssim": s, "distinct_codes": int(c.unique().numel())}
            for path, p, s, c in zip(args.image, psnr, ssim, codes)]
    with io.atomic_path(out) as tmp:
        grid.save(tmp, format=fmt)
    if codes_path is not None:
        io.save_safetensors({CODES_KEY: codes.long()}, codes_path)
    # an exact reconstruction has infinite PSNR, which JSON cannot hold: it is written as null
    io.write_json(settings, json_safe({
        "tokenizer": str(args.tokenizer), "tokenizer_dir": str(tokenizer_dir),
        "tokenizer_type": type(tok).type_name or type(tok).__name__,
        "codebook_size": int(tok.codebook_size), "downsample_factor": int(tok.downsample_factor),
        "image_size": size, "code_grid": list(codes.shape[1:]), "resize": args.resize,
        "convert": args.convert, "device": device, "codes": None if codes_path is None else
        str(codes_path), "results": rows, "mean_psnr": _mean(psnr), "mean_ssim": _mean(ssim),
        "mean_distinct_codes": _mean([r["distinct_codes"] for r in rows])}))
    n = len(images)
    also = "" if codes_path is None else f"; codes in {codes_path}"
    print(f"wrote {out} ({n} image{'s' if n != 1 else ''}, mean {_mean(psnr):.1f} dB PSNR, SSIM "
          f"{_mean(ssim):.2f}; settings in {settings}{also})")
