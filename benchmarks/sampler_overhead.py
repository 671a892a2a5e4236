"""The sampler's own work per masked step: unigen's MaskGIT step vs a textbook one, in one run.

A masked step samples every masked position over the whole vocabulary, ``[B, S, V]`` logits, where
an autoregressive step with a KV cache sees ``[B, 1, V]``; at 16 steps over 256 image tokens that
is 256x the autoregressive baseline's per-step sampling work, so the sampler, not only the
network, decides how far masked decoding gets ahead (issue #8's masked-vs-AR target).

The textbook step is what the first implementation did (and what most MaskGIT/Show-o code does):
a float32 copy of the logits with the mask token forbidden, a float64 softmax of the masked rows
gathered out of ``[B, S, V]``, a float64 cumulative sum of the vocabulary for the inverse-CDF draw,
a second (float32) softmax for the confidences and an argmax over every position.  unigen's step
(``unigen.sampling.categorical``) skips the copy when the model's legal bias already forbids the
mask token, shares one float32 softmax between draw and ranking, draws every position without a
data-dependent gather, and searches float64 sums of 128-token blocks instead of a ``[B, S, V]``
float64 cumulative sum.  Both rank with the same MaskGIT schedule, Gumbel noise and top-k.  With
classifier-free guidance each step also combines the conditional and unconditional log-probabilities
(``cfg_combine``: textbook masking of non-finite entries per pass vs one lerp and an in-place fix-up).

    PYTHONPATH=. python benchmarks/sampler_overhead.py --threads 1
    PYTHONPATH=. python benchmarks/sampler_overhead.py --device cuda --shapes 64x256x15488
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_device_args, median, parse_shapes, print_table, save_result, setup,
)
from unigen.sampling import build_sampler  # noqa: E402
from unigen.sampling.confidence import token_confidence  # noqa: E402
from unigen.sampling.guidance import ClassifierFreeGuidance, GuidedBatch  # noqa: E402
from unigen.sampling.rng import GeneratorArg, make_generators, rand_rows  # noqa: E402
from unigen.sampling.selection import reveal_counts, select_top_k  # noqa: E402

# batch x positions x vocabulary: the CPU unified model (6x6 image grid, 48 px) and the GPU recipes'
# 8x8 and 16x16 grids, with the shapes FSQ tokenizer's 15,360 codes plus text and special tokens
DEFAULT_SHAPES = "64x36x15488,64x64x15488"


def textbook_sample(logits: Tensor, where: Tensor, temperature: float, generator: GeneratorArg) -> Tensor:
    """Inverse-CDF sampling the plain way: float64 softmax of the gathered rows, full cumulative sum."""
    tokens = logits.argmax(-1)
    u = rand_rows(logits.shape[:-1], generator, device=logits.device, dtype=torch.float64)
    probs = torch.softmax(logits[where].double() / temperature, dim=-1)
    cdf = probs.cumsum(-1)
    drawn = torch.searchsorted(cdf, (u[where] * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    tokens[where] = drawn.clamp_max(logits.shape[-1] - 1)
    return tokens


def textbook_step(sampler, logits: Tensor, tokens: Tensor, is_masked: Tensor, step_index: int,
                  generator: GeneratorArg, editable: Tensor) -> Tensor:
    """The same MaskGIT step as ``sampler.step`` with the textbook sampling work."""
    legal = logits.to(torch.float32, copy=True)
    legal[..., sampler.mask_id] = float("-inf")
    if not torch.isfinite(legal.amax(-1)).all():
        raise ValueError("no legal token")
    probs = torch.softmax(legal, dim=-1)
    sampled = textbook_sample(legal, is_masked, sampler.temperature, generator)
    confidence = token_confidence(sampler.confidence, probs, sampled)
    target_after = sampler.target_counts(editable)[:, step_index + 1]
    num_reveal = reveal_counts(is_masked.sum(-1), target_after)
    revealed = select_top_k(sampler.ranking_score(confidence, step_index, generator), is_masked, num_reveal)
    return torch.where(revealed, sampled, tokens)


def textbook_combine(logits: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on log-probabilities with a finiteness mask per pass."""
    cond, uncond = logits.float().chunk(2)
    cond, uncond = cond.log_softmax(-1), uncond.log_softmax(-1)
    guided = uncond + scale * (cond - uncond)
    return guided.masked_fill(~(torch.isfinite(cond) & torch.isfinite(uncond)), float("-inf"))


def legal_model_logits(batch: int, positions: int, vocab: int, mask_id: int, device: torch.device,
                       seed: int) -> Tensor:
    """Peaked float32 logits like a trained model's, with the mask token at -inf (the legal bias)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.randn(batch, positions, vocab, generator=gen) * 4.0
    logits[..., mask_id] = float("-inf")
    return logits.to(device)


def time_steps(fn: Callable[[int], Any], num_steps: int, device: torch.device, repeats: int) -> float:
    """Median seconds over ``repeats`` runs of ``num_steps`` steps (after one warm-up run)."""
    def run() -> None:
        for i in range(num_steps):
            fn(i)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return median(times)


def measure(shape: tuple[int, int, int], num_steps: int, repeats: int, device: torch.device,
            seed: int) -> dict[str, Any]:
    batch, positions, vocab = shape
    mask_id = vocab - 1
    sampler = build_sampler("maskgit", mask_id=mask_id)
    sampler.set_timesteps(num_steps)
    logits = legal_model_logits(batch, positions, vocab, mask_id, device, seed)
    tokens = torch.full((batch, positions), mask_id, device=device)
    masked = torch.ones(batch, positions, dtype=torch.bool, device=device)

    def ours(i: int) -> None:
        sampler.step(logits, tokens, masked, i, generator=make_generators(range(batch)), editable=masked)

    def textbook(i: int) -> None:
        textbook_step(sampler, logits, tokens, masked, i, make_generators(range(batch)), masked)

    # guidance: the network returns conditional and unconditional rows, [2B, S, V]
    guided = torch.cat([logits, logits.roll(1, dims=-1)])
    guided[..., mask_id] = float("-inf")
    cfg = ClassifierFreeGuidance(3.0)
    pair = GuidedBatch(guided, "both", 3.0)

    # every step sees all positions masked: the first step's work, the most a step does
    contenders = {"textbook": textbook, "unigen": ours,
                  "cfg_textbook": lambda i: textbook_combine(guided, 3.0),
                  "cfg_unigen": lambda i: cfg.combine(guided, pair)}
    ms = {name: 1000 * time_steps(fn, num_steps, device, repeats) / num_steps for name, fn in contenders.items()}
    return {"batch": batch, "positions": positions, "vocab": vocab,
            "ms_per_step_textbook": ms["textbook"], "ms_per_step_unigen": ms["unigen"],
            "speedup": ms["textbook"] / ms["unigen"],
            "cfg_combine_ms_textbook": ms["cfg_textbook"], "cfg_combine_ms_unigen": ms["cfg_unigen"],
            "cfg_combine_speedup": ms["cfg_textbook"] / ms["cfg_unigen"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated BATCHxPOSITIONSxVOCAB")
    parser.add_argument("--steps", type=int, default=4, help="sampler steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    add_device_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    rows = [measure(shape, args.steps, args.repeats, device, args.seed) for shape in parse_shapes(args.shapes, "BATCHxPOSITIONSxVOCAB")]
    print_table(rows, ["batch", "positions", "vocab", "ms_per_step_textbook", "ms_per_step_unigen", "speedup",
                       "cfg_combine_ms_textbook", "cfg_combine_ms_unigen", "cfg_combine_speedup"])
    payload = {"settings": vars(args), "rows": rows,
               "note": "one MaskGIT step with every position masked; wall seconds, median of repeats"}
    save_result("sampler_overhead", device, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
