"""Which recipe learns a task faster: held-out masked-token loss of several models on the same
samples with the same masks.

Checker accuracy sits near its floor for short CPU runs, so two recipes trained for a few hundred
steps are compared on the loss instead: every model sees the same held-out scenes, the same task
rows and, at each fixed mask rate, the same masked positions (MaskGIT's ``mask_targets``), plus one
draw over the cosine schedule (unshifted, whatever schedule a model was trained with, so a recipe
that trains at other rates is scored on the same ones).  Loss at high mask rates is where a
sampler's first steps decide a scene's layout; loss at low rates is detail.  Condition dropout
and complementary copies are off; the network runs with prefix attention when it was trained
with it.

    PYTHONPATH=. python benchmarks/heldout_loss.py --model base=runs/exp/base/checkpoints/last.ckpt \
        --model shift3=runs/exp/shift3/checkpoints/last.ckpt --task t2i --num-samples 512 --threads 2

A model is a Lightning checkpoint of ``UnifiedModule`` (``.ckpt``) or an exported pipeline
directory.  The first model is the reference: the JSON gives every other model's loss ratio to it,
and a figure next to it (same name, ``.png``) plots the losses and ratios against the mask rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_device_args, comma_list, save_result, setup  # noqa: E402

SCHEDULE = "schedule"  # the key of the draw over the (unshifted) cosine schedule


@dataclass
class Scored:
    """A network with what it needs to build task rows and score them."""

    net: Any
    image_tokenizer: Any
    space: Any
    prefix_attention: bool
    step: int | None


def load_scored(path: str, device: torch.device) -> Scored:
    """A ``UnifiedModule`` checkpoint (``.ckpt``) or a pipeline directory, in eval mode on ``device``."""
    if path.endswith(".ckpt"):
        from unigen.training.checkpoint import load_module_from_checkpoint, read_checkpoint

        module = load_module_from_checkpoint(path).to(device)
        if not hasattr(module, "space"):
            raise SystemExit(f"{path}: not a unified model checkpoint ({type(module).__name__})")
        step = read_checkpoint(path).get("global_step")
        return Scored(module.net, module.image_tokenizer, module.space,
                      bool(module.hparams.get("prefix_attention", True)), step)
    from unigen.pipeline import UnifiedPipeline

    pipe = UnifiedPipeline.from_pretrained(path, device=device)
    return Scored(pipe.transformer, pipe.image_tokenizer, pipe.space, True, None)


def parse_models(items: Sequence[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model {item!r}: expected NAME=PATH")
        if name in models:
            raise SystemExit(f"--model {name!r} given twice")
        models[name] = path
    if len(models) < 1:
        raise SystemExit("give at least one --model NAME=PATH")
    return models


def heldout_batches(split: str, num_samples: int, batch_size: int, image_size: int, seed: int
                    ) -> list[dict[str, Any]]:
    """The split's first ``num_samples`` scenes, rendered once and shared by every model."""
    from unigen.data.shapes_datamodule import ShapesDataModule

    dm = ShapesDataModule(image_size=image_size, batch_size=batch_size, num_train=batch_size,
                          num_val=batch_size, num_test=num_samples, test_split=split, seed=seed,
                          num_workers=0)
    dm.setup("test")
    return list(dm.test_dataloader())


def mask_draws(target: Tensor, rates: Sequence[float], seed: int) -> dict[str, Tensor]:
    """The masked positions of one batch at each fixed rate and over the cosine schedule, from
    generators seeded by ``seed`` alone: identical for every model whose rows have this layout."""
    from unigen.diffusion.masking import Noiser, mask_targets
    from unigen.diffusion.schedules import build_schedule

    draws = {}
    for i, rate in enumerate(rates):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        draws[f"{rate:g}"] = mask_targets(target, torch.full((len(target),), float(rate)), gen)
    gen = torch.Generator().manual_seed(seed * 1000 + len(rates))
    draws[SCHEDULE] = Noiser(build_schedule("cosine"))(target, gen)[0]
    return draws


@torch.no_grad()
def score(model: Scored, task_name: str, task_kwargs: dict[str, Any], batches: list[dict[str, Any]],
          rates: Sequence[float], seed: int, device: torch.device) -> tuple[dict[str, float], str]:
    """Mean cross-entropy over the masked targets at each rate; and a fingerprint of the masks."""
    from unigen.diffusion.tasks import TASKS, TaskInputs
    from unigen.transfer import to_device

    task = TASKS.get(task_name)(**task_kwargs)
    totals: dict[str, list[float]] = {}
    fingerprint = 0
    for b, batch in enumerate(batches):
        image = batch["image"].to(device)
        codes = model.image_tokenizer.encode(image)
        inputs = TaskInputs(codes, batch.get("caption"), batch.get("question"), batch.get("answer"),
                            batch.get("description"))
        tb = task.build(inputs, model.space)
        prefix = tb.prefix if model.prefix_attention else None
        for key, masked in mask_draws(tb.target, rates, seed + b).items():
            fingerprint = (fingerprint * 31 + int(masked.nonzero().sum())) % (2 ** 61 - 1)
            inputs_masked = tb.tokens.masked_fill(to_device(masked, device), model.space.mask_id)
            hidden = model.net.hidden_states(inputs_masked, prefix)
            rows, cols = (to_device(x, device) for x in masked.nonzero(as_tuple=True))
            logits = model.net.logits(hidden[rows, cols], model.net.modality[cols]).float()
            ce = torch.nn.functional.cross_entropy(logits, tb.tokens[rows, cols], reduction="sum")
            total = totals.setdefault(key, [0.0, 0.0])
            total[0] += float(ce)
            total[1] += len(rows)
    return {key: s / n for key, (s, n) in totals.items()}, f"{fingerprint:x}"


def compare(losses: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each model's loss over the first model's, per rate (below 1: better than the reference)."""
    names = list(losses)
    ref = losses[names[0]]
    return {name: {key: value / ref[key] for key, value in losses[name].items()} for name in names[1:]}


def plot(losses: dict[str, dict[str, float]], path: Path) -> Path:
    """Two panels: each model's loss against the mask rate, and its ratio to the reference (the
    first model), the draw over the schedule left out (it has no one rate)."""
    from unigen.metrics.report import Panel, plot_panels

    names = list(losses)
    rates = [key for key in losses[names[0]] if key != SCHEDULE]
    xs = [float(r) for r in rates]
    absolute = {name: (xs, [losses[name][r] for r in rates]) for name in names}
    # the reference too (at 1), so each model keeps its colour in both panels
    ratios = {names[0]: (xs, [1.0] * len(xs)),
              **{name: (xs, [row[r] for r in rates]) for name, row in compare(losses).items()}}
    panels = [Panel("held-out masked-token loss", "mask rate", "loss (nats)", absolute),
              Panel(f"loss over {names[0]}'s", "mask rate", "ratio (below 1: better)", ratios)]
    return plot_panels(panels if len(names) > 1 else panels[:1], path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="a .ckpt or pipeline directory (repeatable; the first is the reference)")
    p.add_argument("--task", default="t2i", help="registered task whose targets are scored")
    p.add_argument("--task-kwargs", default="{}", help="JSON keyword arguments of the task")
    p.add_argument("--split", default="heldout", help="shapes split: heldout | val | train")
    p.add_argument("--data-seed", type=int, default=0, help="which scenes (the world's seed)")
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--rates", default="0.25,0.5,0.75,0.9,1", help="fixed mask rates, comma-separated")
    p.add_argument("--name", default="heldout_loss", help="result file stem")
    add_device_args(p)
    args = p.parse_args(argv)
    models = parse_models(args.model)
    rates = [float(r) for r in comma_list(args.rates)]
    if not rates or not all(0.0 < r <= 1.0 for r in rates):
        raise SystemExit(f"--rates {args.rates!r}: every rate must lie in (0, 1]")
    task_kwargs = json.loads(args.task_kwargs)
    device = setup(args)
    batches = heldout_batches(args.split, args.num_samples, args.batch_size, args.image_size,
                              args.data_seed)
    losses: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, Any]] = {}
    fingerprints = set()
    for name, path in models.items():
        start = time.perf_counter()
        model = load_scored(path, device)
        losses[name], fingerprint = score(model, args.task, task_kwargs, batches, rates, args.seed, device)
        fingerprints.add(fingerprint)
        runs[name] = {"path": path, "step": model.step, "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses[name].items()), flush=True)
    if len(fingerprints) != 1:
        raise SystemExit("the models' task rows differ in layout (text length, image grid), so their "
                         "masks differ: compare models of one layout")
    ratios = compare(losses)
    for name, row in ratios.items():
        print(f"{name} / {next(iter(models))}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    payload = {"settings": {"task": args.task, "task_kwargs": task_kwargs, "split": args.split,
                            "data_seed": args.data_seed,
                            "num_samples": sum(len(b["image"]) for b in batches),
                            "rates": rates, "schedule_draw": "cosine, unshifted, stratified times",
                            "mask_seed": args.seed, "reference": next(iter(models))},
               "models": runs, "loss": losses, "ratio_to_reference": ratios}
    path = save_result(args.name, device, payload, args.out)
    payload["plot"] = str(plot(losses, path.with_suffix(".png")))
    print(f"wrote {payload['plot']}")
    return payload


if __name__ == "__main__":
    main()
