"""Best-of-K text to image with the model as its own verifier: which reading picks the right image.

For each held-out prompt the model draws K candidates (candidate 0 is the plain call's image), the
shapes checker grades every one, and each selection rule picks one:

* ``plain``: candidate 0 (no selection; what ``candidates=1`` returns);
* ``elbo``: the highest ELBO of the prompt as the candidate's caption (``caption_elbo``, what
  ``UnifiedPipeline.text_to_image(candidates=K)`` uses);
* ``contrastive``: the highest share of the prompt in a softmax over the prompt and C contrast
  captions (train-split captions, one fixed bank; ``contrastive_caption_score``);
* ``oracle``: any candidate the checker passes (the ceiling no rule can beat).

Accuracy and empty images per rule come from one set of candidates, so the rules are compared on
the same images (paired).  Per-sample candidates, verdicts and scores go into the JSON.

    PYTHONPATH=. python benchmarks/self_verification.py --model runs/models/unified_shapes \\
        --num-samples 128 --candidates 4
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.common import print_table, save_result  # noqa: E402
from unigen.data.checker import check  # noqa: E402
from unigen.evaluate.data import ShapesEvalData  # noqa: E402
from unigen.pipeline import UnifiedPipeline  # noqa: E402
from unigen.verification import caption_elbo, contrastive_caption_score  # noqa: E402

MASK_SEED_OFFSET = 1_000_003  # the verification masks' seeds: apart from the sampling seeds


def candidates_for(pipe: UnifiedPipeline, prompts: list[str], seeds: list[int], k: int,
                   sampling: dict[str, Any]) -> list[torch.Tensor]:
    """K code grids per prompt: repeated calls on the same per-sample generators, as
    ``text_to_image(candidates=K)`` draws them."""
    generators = pipe.generators(len(prompts), seeds)
    return [pipe.text_to_image(prompts, generator=generators, output="codes", **sampling)
            for _ in range(k)]


def grade(pipe: UnifiedPipeline, codes: torch.Tensor, prompts: list[str]) -> tuple[list[bool], list[bool]]:
    """The checker's verdict and whether it found no object, per image."""
    images = pipe.image_tokenizer.decode(codes).float().clamp(0, 1).cpu()
    results = [check(image, prompt) for image, prompt in zip(images, prompts)]
    return [r.correct for r in results], [not r.detections for r in results]


def pick(scores: torch.Tensor) -> list[int]:
    return scores.argmax(dim=0).tolist()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a unified pipeline directory (unigen export)")
    parser.add_argument("--num-samples", type=int, default=128, help="held-out prompts")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--verify-masks", type=int, default=4)
    parser.add_argument("--contrast", type=int, default=15, help="contrast captions (train split)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i, as unigen eval")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None,
                        help="result JSON (default benchmarks/results/self_verification_<device>.json)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.candidates < 2:
        raise SystemExit("--candidates must be >= 2: one candidate leaves nothing to choose")
    device = torch.device(args.device)
    pipe = UnifiedPipeline.from_pretrained(args.model, device=device)
    size = pipe.image_size
    heldout = ShapesEvalData(size, "heldout", args.num_samples, seed=0)
    bank = [ShapesEvalData(size, "train", args.contrast, seed=1).sample(i).prompt
            for i in range(args.contrast)]
    sampling = dict(num_steps=args.steps, guidance_scale=args.guidance)
    samples = []
    for start in range(0, args.num_samples, args.batch_size):
        idx = list(range(start, min(start + args.batch_size, args.num_samples)))
        prompts = [heldout.sample(i).prompt for i in idx]
        seeds = [args.seed + i for i in idx]
        drawn = candidates_for(pipe, prompts, seeds, args.candidates, sampling)
        graded = [grade(pipe, codes, prompts) for codes in drawn]
        mask_seeds = [s + MASK_SEED_OFFSET for s in seeds]
        contrast = [[c] * len(idx) for c in bank]
        elbo = torch.stack([caption_elbo(pipe.transformer, pipe.space, codes, prompts,
                                         pipe.generators(len(idx), mask_seeds), args.verify_masks)
                            for codes in drawn]).cpu()
        contrastive = torch.stack([contrastive_caption_score(
            pipe.transformer, pipe.space, codes, prompts, contrast,
            pipe.generators(len(idx), mask_seeds), args.verify_masks) for codes in drawn]).cpu()
        by_elbo, by_contrast = pick(elbo), pick(contrastive)
        for row, i in enumerate(idx):
            samples.append({"index": i, "prompt": prompts[row],
                            "correct": [g[0][row] for g in graded], "empty": [g[1][row] for g in graded],
                            "elbo": elbo[:, row].tolist(), "contrastive": contrastive[:, row].tolist(),
                            "pick_elbo": by_elbo[row], "pick_contrastive": by_contrast[row]})
        print(f"{len(samples)}/{args.num_samples} prompts", flush=True)
    n = len(samples)
    rules = {"plain": lambda s: 0, "elbo": lambda s: s["pick_elbo"],
             "contrastive": lambda s: s["pick_contrastive"]}
    rows = [{"rule": name, "accuracy": sum(s["correct"][rule(s)] for s in samples) / n,
             "empty_images": sum(s["empty"][rule(s)] for s in samples) / n} for name, rule in rules.items()]
    rows.append({"rule": "oracle", "accuracy": sum(any(s["correct"]) for s in samples) / n,
                 "empty_images": None})
    for row in rows[1:3]:
        name = row["rule"]
        row["wins_over_plain"] = sum(s["correct"][rules[name](s)] and not s["correct"][0] for s in samples)
        row["losses_to_plain"] = sum(s["correct"][0] and not s["correct"][rules[name](s)] for s in samples)
    print_table(rows, ["rule", "accuracy", "empty_images", "wins_over_plain", "losses_to_plain"])
    payload = {"settings": vars(args), "contrast_bank": bank, "rows": rows, "samples": samples,
               "note": "held-out prompts of the shapes world; every rule picks among the same "
                       "candidates (candidate 0 = the plain call's image)"}
    save_result("self_verification", device, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
