"""Sampling speed: the masked samplers vs the autoregressive baseline at the same network size.

For each case (sampler, step count, prefix KV cache on/off, classifier-free guidance on/off) it times
text-to-image end to end (prompt tokens -> image tokens -> pixels) on one batch of shapes prompts and
reports latency, images/s, network calls and the model FLOPs per image (``flops.py``).  Masked
samplers: ``maskgit``, ``ancestral``, ``ancestral_cached`` (ancestral with
``decode(cache_unchanged=True)``, MDLM's cached sampler) and ``confident``; the baseline is
:mod:`unigen.sampling.autoregressive` with and without its KV cache.

Given trained pipeline directories (``--masked-model``, ``--ar-model``) it loads them and adds the
accuracy of the generated images next to each speed: on shapes prompts the pixel checker's
(``unigen.data.checker.check(image, caption).correct``), on Fashion-MNIST prompts
(``--prompts fashion_mnist``, class names from the test split) the class accuracy of a garment
classifier (``--classifier``, :class:`unigen.metrics.ClassAccuracy`); otherwise both networks have
random weights of the ``--size`` preset and only speed is measured (the output says so).

    python benchmarks/sampling.py --size tiny --device cpu --batch-size 64 --steps 16
    python benchmarks/sampling.py --masked-model runs/t2i_shapes/pipeline --ar-model runs/ar_shapes/pipeline
    python benchmarks/sampling.py --prompts fashion_mnist --classifier runs/classifiers/fashion_mnist \
        --masked-model runs/models/t2i_fashion_mnist_cpu --ar-model runs/models/ar_fashion_mnist_cpu
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself (a module
    # there named like a package, e.g. benchmarks/tokenizer_throughput.py, would shadow it)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from benchmarks.common import (
    SIZES, TokenizerDirs, add_common_args, autocast, build_module, comma_list, median, params_millions,
    print_table, save_result, setup, shapes_captions,
)
from benchmarks.flops import TransformerShape, ar_decode_flops, masked_decode_flops, synchronize
from unigen.diffusion.tasks import TASKS, TaskBatch, TaskInputs
from unigen.pipeline import UnifiedPipeline
from unigen.sampling import ClassifierFreeGuidance, build_sampler, decode, make_generators
from unigen.sampling.autoregressive import generate_image_tokens
from unigen.training.ar_module import AutoregressivePipeline

MASKED_SAMPLERS = ("maskgit", "ancestral", "ancestral_cached", "confident")  # the default set
KNOWN_SAMPLERS = (*MASKED_SAMPLERS, "halton")  # --samplers may also name these


@dataclass(frozen=True)
class Case:
    """One timed configuration."""

    model: str  # "masked" | "autoregressive"
    sampler: str  # a masked sampler name, or "ar"
    steps: int  # decoding step budget (autoregressive: one per image token)
    cache: bool  # masked: prefix KV cache; autoregressive: KV cache
    guidance: float  # classifier-free guidance scale (1 = off)

    @property
    def name(self) -> str:
        cache = "cache" if self.cache else "nocache"
        return f"{self.model}/{self.sampler}/{self.steps}steps/{cache}/cfg{self.guidance:g}"


def cases(samplers: list[str], step_counts: list[int], guidance: float, num_image_tokens: int,
          ar_uncached: bool, grid: str = "compact") -> list[Case]:
    """``full``: every sampler x step count x cache on/off x guidance on/off.  ``compact``: every
    sampler and step count with the cache and no guidance, plus the cache and guidance effects on the
    first sampler; the autoregressive baseline with and without guidance (and its uncached reference)."""
    scales = (1.0, guidance) if guidance != 1.0 else (1.0,)
    if grid == "full":
        out = [Case("masked", s, n, cache, g) for n in step_counts for s in samplers
               for cache in (True, False) for g in scales]
    else:
        out = [Case("masked", s, n, True, 1.0) for n in step_counts for s in samplers]
        out += [Case("masked", samplers[0], step_counts[0], cache, g) for cache in (True, False)
                for g in scales if (cache, g) != (True, 1.0)]
    out += [Case("autoregressive", "ar", num_image_tokens, True, g) for g in scales]
    if ar_uncached:
        out.append(Case("autoregressive", "ar", num_image_tokens, False, 1.0))
    return out


def t2i_batch(pipe: UnifiedPipeline, prompts: list[str]) -> TaskBatch:
    """The t2i task's layout for ``prompts`` (image segment to be generated), on the pipeline's device."""
    codes = torch.zeros(len(prompts), *pipe.space.sequence.grid, dtype=torch.long)
    tb = TASKS.get("t2i")().build(TaskInputs(codes, captions=prompts), pipe.space)
    return TaskBatch(*(x.to(pipe.device) for x in (tb.tokens, tb.target, tb.cond, tb.prefix)))


class TimedModel:
    """Wraps a decode ``model_fn`` and adds up the seconds spent in the network (synchronised), so
    the rest of a masked decode's time is the samplers' own."""

    def __init__(self, model_fn, device: torch.device) -> None:
        self.model_fn, self.device, self.seconds = model_fn, device, 0.0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        logits = self.model_fn(tokens)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return logits


def masked_tokens(pipe: UnifiedPipeline, tb: TaskBatch, case: Case, generators
                  ) -> tuple[torch.Tensor, int, int, float]:
    """``UnifiedPipeline``'s t2i decode, timing the network separately from the sampler.  Returns (tokens, network calls, rows through the network, network seconds)."""
    reuse = case.sampler == "ancestral_cached"
    sampler = build_sampler("ancestral" if reuse else case.sampler, mask_id=pipe.space.mask_id)
    guidance = ClassifierFreeGuidance(case.guidance) if case.guidance != 1.0 else None
    positions = pipe.decode_positions(tb.target)
    model_fn = TimedModel(pipe.model_fn(tb.prefix, positions, case.cache), pipe.device)
    result = decode(model_fn, tb.tokens, tb.target, sampler, num_steps=case.steps, guidance=guidance,
                    cond_mask=tb.cond & ~tb.target if guidance else None, generator=generators,
                    cache_unchanged=reuse, positions=positions)
    return result.tokens, result.num_model_calls, result.num_model_rows, model_fn.seconds


def ar_tokens(pipe: AutoregressivePipeline, tb: TaskBatch, case: Case, generators, top_k: int | None
              ) -> tuple[torch.Tensor, int, int]:
    guidance = ClassifierFreeGuidance(case.guidance) if case.guidance != 1.0 else None
    result = generate_image_tokens(pipe.transformer, tb.tokens, mask_id=pipe.space.mask_id, temperature=1.0,
                                   top_k=top_k, generator=generators, guidance=guidance, cond_mask=tb.cond,
                                   use_cache=case.cache)
    return result.tokens, result.num_model_calls, result.num_model_rows


def case_flops(pipe: UnifiedPipeline, tb: TaskBatch, case: Case, calls: int, rows: int) -> float:
    """Model FLOPs of one image under ``case`` (analytic, ``flops.py``)."""
    shape, seq = TransformerShape.of(pipe.transformer), pipe.space.sequence
    if case.model == "autoregressive":
        total = ar_decode_flops(shape, seq.image.start, seq.num_image_tokens, rows // calls, case.cache)
    else:
        decoded = int(pipe.decode_positions(tb.target).numel())  # the pipeline's logits: that segment only
        total = masked_decode_flops(shape, int(tb.prefix[0].sum()), rows // calls, calls, case.cache, decoded)
    return total / len(tb.tokens)


def load_or_build(kind: str, path: str | None, dirs: TokenizerDirs | None, args, device) -> tuple[Any, bool]:
    """A trained pipeline from ``path``, or one with random weights of the size preset."""
    if path:
        cls = UnifiedPipeline if kind == "masked" else AutoregressivePipeline
        return cls.from_pretrained(path, device=device), True
    size = SIZES[args.size]
    module = build_module(kind, dirs, size, args.image_size or size.image_size, args.seed)
    pipe = module.to_pipeline().to(device)
    pipe.transformer.eval()
    return pipe, False


def accuracy(images: torch.Tensor, prompts: list[str], classifier: Any = None) -> float:
    """The fraction of images that show their prompt: the shapes pixel checker's verdict, or with a
    ``classifier`` (a loaded :class:`~unigen.metrics.ClassAccuracy`) the class it names."""
    if classifier is not None:
        classifier.reset()
        classifier.update(images.float().cpu(), prompts)
        return float(classifier.compute()["class_accuracy"])
    from unigen.data.checker import check

    ok = [check(image, prompt).correct for image, prompt in zip(images.float().cpu(), prompts)]
    return sum(ok) / len(ok)


def benchmark_prompts(kind: str, num: int, split: str, seed: int) -> list[str]:
    """``num`` prompts: shapes captions of ``split``, or Fashion-MNIST captions of a seeded subset of
    the test split (its class names in the data set's caption templates)."""
    if kind == "fashion_mnist":
        from unigen.data.fashion_mnist import FashionMNISTDataset, caption_for

        data = FashionMNISTDataset(split="test", num_samples=num, seed=seed)
        return [caption_for(int(label), int(t)) for label, t in zip(data.labels, data.templates)]
    return shapes_captions(num, split=split, seed=seed)


def run_case(pipe, case: Case, prompts: list[str], args, device, trained: bool,
             classifier: Any = None) -> dict[str, Any]:
    latencies, cpu_latencies, token_latencies, network = [], [], [], []
    images = calls = rows = None
    for run in range(args.warmup + args.repeats):
        generators = make_generators(range(args.seed, args.seed + len(prompts)))
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.inference_mode(), autocast(device, args.precision):
            tb = t2i_batch(pipe, prompts)
            if case.model == "masked":
                tokens, calls, rows, network_s = masked_tokens(pipe, tb, case, generators)
            else:
                tokens, calls, rows = ar_tokens(pipe, tb, case, generators, args.ar_top_k)
                network_s = None  # the decoder interleaves network and sampling in one loop
            synchronize(device)
            token_done = time.perf_counter()
            images = pipe.image_tokenizer.decode(pipe.space.image_codes(tokens))
        synchronize(device)
        if run >= args.warmup:
            latencies.append(time.perf_counter() - start)
            cpu_latencies.append(time.process_time() - cpu_start)
            token_latencies.append(token_done - start)
            network.append(network_s)
    latency = median(latencies)
    return {"case": case.name, **asdict(case), "calls": calls, "rows": rows, "latency_s": latency,
            "cpu_latency_s": median(cpu_latencies),
            "token_latency_s": median(token_latencies),
            "network_s": None if network[0] is None else median(network),
            "images_per_s": len(prompts) / latency,
            "model_gflops_per_image": case_flops(pipe, tb, case, calls, rows) / 1e9,
            "checker_accuracy": accuracy(images, prompts, classifier) if trained else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--image-size", type=int, default=None, help="random-weight models: default the preset's")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--steps", default="16", help="masked step counts, comma-separated")
    parser.add_argument("--samplers", default=",".join(MASKED_SAMPLERS), help="masked samplers, comma-separated")
    parser.add_argument("--grid", default="compact", choices=("compact", "full"),
                        help="which combinations of sampler, cache and guidance to time (see cases())")
    parser.add_argument("--guidance", type=float, default=3.0, help="CFG scale of the guided cases (1 = none)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--split", default="val", help="shapes split the prompts come from")
    parser.add_argument("--prompts", default="shapes", choices=("shapes", "fashion_mnist"),
                        help="prompt source; fashion_mnist scores images with --classifier")
    parser.add_argument("--classifier", default=None,
                        help="garment classifier directory (classifier recipe's export_dir): the "
                             "accuracy of --prompts fashion_mnist")
    parser.add_argument("--ar-top-k", type=int, default=None)
    parser.add_argument("--no-ar-uncached", action="store_true", help="skip the uncached AR reference (slow)")
    parser.add_argument("--masked-model", default=None, help="trained UnifiedPipeline directory")
    parser.add_argument("--ar-model", default=None, help="trained AutoregressivePipeline directory")
    args = parser.parse_args(argv)
    device = setup(args)
    if args.prompts == "fashion_mnist" and not args.classifier:
        raise SystemExit("--prompts fashion_mnist needs --classifier (the shapes checker cannot "
                         "score garments)")
    if args.classifier and args.prompts != "fashion_mnist":
        raise SystemExit("--classifier scores --prompts fashion_mnist; shapes prompts are scored by "
                         "the pixel checker")
    samplers = comma_list(args.samplers)
    unknown = sorted(set(samplers) - set(KNOWN_SAMPLERS))
    if unknown:
        raise SystemExit(f"unknown --samplers {unknown}; choose from {list(KNOWN_SAMPLERS)}")

    dirs = None if (args.masked_model and args.ar_model) else TokenizerDirs(SIZES[args.size].fsq_levels)
    masked, masked_trained = load_or_build("masked", args.masked_model, dirs, args, device)
    ar, ar_trained = load_or_build("autoregressive", args.ar_model, dirs, args, device)
    if masked.space.sequence != ar.space.sequence:
        raise SystemExit(f"the two models lay out sequences differently ({masked.space.sequence} vs "
                         f"{ar.space.sequence}): compare models of one image size and text length")
    weights = {"masked": "trained" if masked_trained else "random",
               "autoregressive": "trained" if ar_trained else "random"}
    if "random" in weights.values():
        print(f"weights: {weights} -- random weights measure speed only (no checker accuracy)")
    prompts = benchmark_prompts(args.prompts, args.batch_size, args.split, args.seed)
    classifier = None
    if args.classifier and "trained" in weights.values():
        from unigen.metrics import ClassAccuracy

        classifier = ClassAccuracy(args.classifier)
    seq = masked.space.sequence
    print(f"masked {params_millions(masked.transformer)}M / autoregressive {params_millions(ar.transformer)}M "
          f"parameters, {seq.num_image_tokens} image tokens, batch {args.batch_size}, {device}, {args.precision}")

    rows = []
    step_counts = [int(s) for s in args.steps.split(",")]
    for case in cases(samplers, step_counts, args.guidance, seq.num_image_tokens, not args.no_ar_uncached,
                      args.grid):
        pipe = masked if case.model == "masked" else ar
        trained = masked_trained if case.model == "masked" else ar_trained
        rows.append(run_case(pipe, case, prompts, args, device, trained, classifier))
        print(f"  {case.name}: {rows[-1]['images_per_s']:.3g} images/s")
    baseline = {r["guidance"]: r for r in rows if r["model"] == "autoregressive" and r["cache"]}
    for r in rows:
        r["speed_vs_ar_cached"] = r["images_per_s"] / baseline[r["guidance"]]["images_per_s"]
        # from this process's CPU time: steadier than the wall clock on a shared CPU (CPU runs only)
        r["speed_vs_ar_cached_cpu_time"] = baseline[r["guidance"]]["cpu_latency_s"] / r["cpu_latency_s"]
    print_table(rows, ["case", "calls", "latency_s", "cpu_latency_s", "network_s", "images_per_s",
                       "speed_vs_ar_cached", "speed_vs_ar_cached_cpu_time", "model_gflops_per_image",
                       "checker_accuracy"])
    payload = {"settings": {"size": args.size, "batch_size": args.batch_size, "steps": step_counts,
                            "guidance": args.guidance, "grid": args.grid, "precision": args.precision,
                            "split": args.split, "prompts": args.prompts,
                            "accuracy": ("class accuracy" if classifier is not None else "pixel checker"),
                            "classifier": args.classifier,
                            "repeats": args.repeats, "warmup": args.warmup,
                            "ar_top_k": args.ar_top_k,
                            "num_image_tokens": seq.num_image_tokens, "sequence_length": seq.length,
                            "weights": weights, "masked_model": args.masked_model, "ar_model": args.ar_model,
                            "parameters_millions": {"masked": params_millions(masked.transformer),
                                                    "autoregressive": params_millions(ar.transformer)}},
               "note": ("random weights: speed only" if "random" in weights.values() else
                        "trained models: speed and checker accuracy"),
               "results": rows}
    save_result("sampling", device, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
