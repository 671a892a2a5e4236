"""``unigen demo`` / ``make demo``: the whole pipeline, end to end, on the embedded shapes data.

Stages (each a real recipe, run through the same LightningCLI as ``unigen fit``):
1. a word-level text tokenizer trained on the shapes captions / questions / answers;
2. a small FSQ image tokenizer (``recipes/demo/tokenizer_fsq.yaml``);
3. a small unified masked-diffusion transformer on all tasks (``recipes/demo/unified.yaml``);
4. evaluation on held-out compositions: a generated image grid, captions and answers, and
   ``metrics.json`` (checker accuracy for generation, exact match for VQA).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from unigen import io

DEMO_KEYS = {"out_dir", "seed", "text_tokenizer", "image_tokenizer_recipe", "unified_recipe",
             "evaluation"}


def load_demo_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demo recipe not found: {path}")
    config = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(config) - DEMO_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {path}; known: {sorted(DEMO_KEYS)}")
    missing = sorted(DEMO_KEYS - {"seed"} - set(config))
    if missing:
        raise ValueError(f"{path} is missing key(s) {missing}")
    return config


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


# the folders Lightning writes runs into: a second `make demo` would otherwise add `-v1`
# checkpoints beside the first run's and leave its `last.ckpt` in place
RUN_DIRS = ("image_tokenizer_run", "unified_run")


def _replace_earlier_runs(out: Path) -> None:
    import shutil

    for name in RUN_DIRS:
        if (out / name).is_dir():
            print(f"replacing the earlier demo run in {out / name}", flush=True)
            shutil.rmtree(out / name)


def _validation_numbers(cli: Any, prefix: str = "val/") -> dict[str, float]:
    """The last validation's logged numbers of a finished fit (what the stage reached)."""
    metrics = cli.trainer.callback_metrics
    return {k: float(v) for k, v in sorted(metrics.items())
            if k.startswith(prefix) and getattr(v, "numel", lambda: 1)() == 1}


def _print_numbers(numbers: dict[str, float]) -> None:
    for name, value in numbers.items():
        print(f"  {name:<38} {value:.4f}", flush=True)


def run_demo(config_path: str | Path, out_dir: str | None = None) -> dict[str, Any]:
    from unigen.cli import _lightning_cli
    from unigen.commands import build_text_tokenizer
    from unigen.evaluate import evaluate_pipeline, load_eval_config
    from unigen.evaluate.command import print_summary
    from unigen.metrics.report import json_safe
    from unigen.pipeline import UnifiedPipeline

    config = load_demo_config(config_path)
    out = Path(out_dir or config["out_dir"])
    seed = str(config.get("seed", 0))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    _replace_earlier_runs(out)

    _banner("1/4 text tokenizer")
    tt = dict(config["text_tokenizer"])
    build_text_tokenizer(out=str(out / "text_tokenizer"), seed=int(seed), **tt)
    timings["text_tokenizer_s"] = time.perf_counter() - start

    def fit_stage(what: str, recipe: str, name: str, run_dir: str, export: str,
                  *overrides: str) -> dict[str, float]:
        """Fit one recipe of the demo, exported to ``out/export``; its last validation numbers."""
        t0 = time.perf_counter()
        cli = _lightning_cli(["fit", "--config", recipe, "--seed_everything", seed, *overrides,
                              "--trainer.default_root_dir", str(out / run_dir),
                              "--export_dir", str(out / export)])
        timings[f"{name}_s"] = time.perf_counter() - t0
        numbers = _validation_numbers(cli)
        print(f"{what}, last validation:")
        _print_numbers(numbers)
        return numbers

    _banner("2/4 image tokenizer (FSQ)")
    tokenizer_numbers = fit_stage("image tokenizer", config["image_tokenizer_recipe"],
                                  "image_tokenizer", "image_tokenizer_run", "image_tokenizer")

    _banner("3/4 unified transformer (text-to-image, captioning, VQA)")
    unified_numbers = fit_stage("unified transformer", config["unified_recipe"], "unified",
                                "unified_run", "model",
                                "--model.init_args.image_tokenizer", str(out / "image_tokenizer"),
                                "--model.init_args.text_tokenizer", str(out / "text_tokenizer"))

    _banner("4/4 evaluation on held-out compositions")
    t0 = time.perf_counter()
    pipe = UnifiedPipeline.from_pretrained(out / "model")
    results = evaluate_pipeline(pipe, load_eval_config(config["evaluation"]), out / "eval")
    timings["evaluation_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    print_summary(results)
    summary = {"metrics": results.get("metrics", results), "timings": timings,
               "validation": {"image_tokenizer": tokenizer_numbers, "unified": unified_numbers},
               "model": str(out / "model"), "eval_dir": str(out / "eval")}
    io.write_json(out / "metrics.json", json_safe(summary))
    _banner("done")
    print(f"model:        {out / 'model'}  (unigen generate --model {out / 'model'} --prompt ...)")
    print(f"metrics:      {out / 'metrics.json'}")
    print(f"eval report:  {out / 'eval' / 'report.md'}")
    print(f"image grids:  {out / 'eval'}/*.png")
    stages = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.0f} s" for k, v in timings.items()
                       if k != "total_s")
    print(f"total time:   {timings['total_s'] / 60:.1f} min ({stages})")
    return summary
