"""Quality of one trained image tokenizer: PSNR, SSIM, codebook usage and perplexity on a data
split, and, on the shapes world, what the pixel checker still reads after encode + decode (on
Fashion-MNIST, with ``--classifier``, what a garment classifier still recognises).

The checker part is the ceiling a unified model can reach on text-to-image: a generated image is at
best a tokenizer reconstruction, so if the checker fails on reconstructions of real scenes, no
amount of transformer training fixes it.  It scores each scene's caption (GenEval-style query) and
the full scene (every object's shape, color, size and cell) on originals and reconstructions.

    PYTHONPATH=. python benchmarks/tokenizer_quality.py --tokenizer runs/tokenizers/fsq_shapes_cpu \
        --data shapes --image-size 48 --split heldout --num-samples 512
    PYTHONPATH=. python benchmarks/tokenizer_quality.py --tokenizer runs/tokenizers/fsq_fashion_mnist \
        --data fashion_mnist --image-size 32 --classifier runs/classifiers/fashion_mnist
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder heads sys.path and would shadow Hugging Face `tokenizers`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks.common import save_result  # noqa: E402
from unigen.data import checker, shapes  # noqa: E402
from unigen.metrics.reconstruction import PSNR, SSIM  # noqa: E402
from unigen.tokenizers import ImageTokenizer  # noqa: E402
from unigen.tokenizers.codebook_metrics import CodebookUsage  # noqa: E402


def shapes_images(split: str, num: int, size: int, seed: int) -> tuple[Tensor, list[shapes.Scene], list[str]]:
    """``num`` scenes of a shapes split, rendered at ``size``, with one caption each."""
    dataset = shapes.ShapesDataset(split=split, num_samples=num, image_size=size, seed=seed)
    samples = [dataset[i] for i in range(num)]
    scenes = [shapes.Scene.from_json(s["scene"]) for s in samples]
    return torch.stack([s["image"] for s in samples]), scenes, [s["caption"] for s in samples]


def fashion_images(num: int, size: int, root: str | None) -> tuple[Tensor, Tensor]:
    """The first ``num`` test images and their labels."""
    from unigen.data.fashion_mnist import FashionMNISTDataset

    dataset = FashionMNISTDataset(root=root, split="test", image_size=size)
    n = min(num, len(dataset))
    return (torch.stack([dataset.image(i) for i in range(n)]),
            torch.as_tensor(dataset.labels[:n]).long())


@torch.inference_mode()
def classifier_accuracy(classifier: Any, images: Tensor, labels: Tensor, batch_size: int) -> float:
    """Fraction of ``images`` that ``classifier`` (a domain classifier extractor) puts in their
    labelled class: on reconstructions, the ceiling of a class-conditional model's class accuracy."""
    predicted = torch.cat([classifier(b).logits.argmax(-1) for b in images.split(batch_size)])
    return float((predicted == labels).float().mean())


@torch.inference_mode()
def reconstruct(tokenizer: ImageTokenizer, images: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    codes = torch.cat([tokenizer.encode(b) for b in images.split(batch_size)])
    recon = torch.cat([tokenizer.decode(c) for c in codes.split(batch_size)])
    return codes, recon.clamp(0, 1)


def checker_scores(images: Tensor, scenes: list[shapes.Scene], captions: list[str]) -> dict[str, float]:
    """Fraction of images whose caption query holds, and whose whole scene is read back exactly."""
    caption_ok = [checker.check(img, cap).correct for img, cap in zip(images, captions)]
    scene_ok = [checker.check(img, scene).correct for img, scene in zip(images, scenes)]
    return {"caption_query_accuracy": float(np.mean(caption_ok)),
            "scene_accuracy": float(np.mean(scene_ok))}


@torch.inference_mode()
def evaluate(tokenizer: ImageTokenizer, images: Tensor, batch_size: int) -> tuple[dict[str, Any], Tensor]:
    """Reconstruction scores of one timed encode + decode pass over ``images``, and the
    reconstructions (clamped to [0, 1], as an image file would hold them)."""
    start = time.perf_counter()
    codes, recon = reconstruct(tokenizer, images, batch_size)
    seconds = time.perf_counter() - start
    usage = CodebookUsage(tokenizer.codebook_size)
    usage.update(codes)
    stats = usage.compute()
    psnr, ssim = PSNR(), SSIM()
    for metric in (psnr, ssim):
        metric.update(recon, images)
    return {"psnr_db": round(float(psnr.compute()), 2), "ssim": round(float(ssim.compute()), 4),
            "codebook_usage": round(float(stats["usage"]), 4),
            "perplexity": round(float(stats["perplexity"]), 1),
            "codebook_size": tokenizer.codebook_size,
            "latent_grid": list(codes.shape[1:]),
            "encode_decode_images_per_s": round(len(images) / seconds, 1)}, recon


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="directory written by save_pretrained")
    parser.add_argument("--data", choices=("shapes", "fashion_mnist"), default="shapes")
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--split", default="heldout", help="shapes split (train, val, heldout)")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--root", default=None, help="Fashion-MNIST folder (default: Debian's)")
    parser.add_argument("--classifier", default=None,
                        help="Fashion-MNIST: domain classifier directory; scores its accuracy on "
                             "the originals and the reconstructions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = ImageTokenizer.from_pretrained(args.tokenizer).eval()
    result: dict[str, Any] = {"tokenizer": str(args.tokenizer), "config": tokenizer.config,
                              "data": args.data, "image_size": args.image_size}
    if args.data == "shapes":
        images, scenes, captions = shapes_images(args.split, args.num_samples, args.image_size, args.seed)
        result["split"] = args.split
        result["reconstruction"], recon = evaluate(tokenizer, images, args.batch_size)
        result["checker"] = {"originals": checker_scores(images, scenes, captions),
                             "reconstructions": checker_scores(recon, scenes, captions)}
    else:
        images, labels = fashion_images(args.num_samples, args.image_size, args.root)
        result["split"] = "test"
        result["reconstruction"], recon = evaluate(tokenizer, images, args.batch_size)
        if args.classifier:
            from unigen.metrics import DomainClassifierExtractor

            classifier = DomainClassifierExtractor(args.classifier)
            result["classifier"] = {"path": str(args.classifier), **{
                where: {"accuracy": classifier_accuracy(classifier, x, labels, args.batch_size)}
                for where, x in (("originals", images), ("reconstructions", recon))}}
    result["num_samples"] = len(images)
    name = f"tokenizer_quality_{args.data}_{args.image_size}"
    save_result(name, torch.device("cpu"), result, args.out)
    for key, value in result["reconstruction"].items():
        print(f"{key:>28}: {value}")
    for judge in ("checker", "classifier"):
        for where, scores in result.get(judge, {}).items():
            if isinstance(scores, dict):
                print(f"{judge + ' on ' + where:>28}: "
                      + ", ".join(f"{k}={v:.3f}" for k, v in scores.items()))
    return result


if __name__ == "__main__":
    main()
