"""Issue #5's quality targets in one timed run: tokenizers, unified model, held-out evaluation.

Text tokenizer -> FSQ image tokenizer -> unified model -> evaluation on the shapes world's held-out
compositions, every stage under its share of ``--minutes`` (so a lent GPU's ~15 minutes hold the
whole train + eval).

Stages (each timed; default shares of ``--minutes``: tokenizers 20%, unified 60%, eval 20%):

1. **tokenizer**: the word-level text tokenizer (``unigen.commands.build_text_tokenizer``), then
   the FSQ image tokenizer of ``recipes/tokenizer_fsq_shapes.yaml`` (64x64 -> 16x16 codes);
2. **unified**: ``recipes/unified_shapes.yaml`` + ``recipes/presets/gpu_bf16.yaml`` (on CUDA),
   exported as a pipeline;
3. **eval**: :func:`unigen.evaluate.evaluate_pipeline` with ``recipes/eval_shapes.yaml`` on the
   held-out split: t2i ``compositional_accuracy`` (pixel checker), ``vqa_exact_match``,
   ``caption_attribute_recall`` and ``caption_fact_precision`` (no FID: torch-fidelity and its
   Inception weights are not on the GPU image).  ``--curves`` then runs
   ``benchmarks/sampler_curves.py`` on the exported model (outside the budget).

Both fits go through unigen's LightningCLI (``unigen.cli._lightning_cli``, as ``unigen demo``
does), so the recipes are the ones ``unigen fit`` runs; the overrides are paths, ``max_steps``,
``max_time``, data-loader workers, warm-up (capped at ``--max-warmup-fraction`` of the steps) and
no validation inside the timed fits (the eval stage measures quality; validation would recompile
the compiled blocks mid-run).  Every override is listed in the JSON.  The LR schedule is a cosine
over ``max_steps``, so the step count is planned, not left to ``max_time``: a calibration fit of
``--calibration-warmup`` + ``--calibration-steps`` steps measures the step time (and the start-up
cost: building, compiling, loaders), and ``max_steps`` is set to what fits the rest of the stage
(``--tokenizer-steps`` / ``--unified-steps`` skip the calibration); ``trainer.max_time`` is the
guard.  The eval stage likewise evaluates ``--eval-calibration-samples`` first and then as many
samples as fit (at most the recipe's ``data.num_samples``).

One lent session is far shorter than the recipe's training, so a run can continue across
sessions: ``--return-model`` packs the trained pipeline (bf16 weights, both tokenizers and a
``training_history.json`` of every session so far) into ``$OUT`` as ``model.tar.partNN`` files
that the device tool brings back (``cat model.tar.part* | tar -x``), and ``--init-unified DIR``
starts the next session's unified model from it (``UnifiedModule(init_weights=DIR)``, its
tokenizers, no tokenizer fit).  Only a model of at most ``--max-parts`` parts is packed
(``recipes/presets/unified_compact.yaml`` fits in four).

Writes ``benchmarks/results/shapes_quality_<device>.json`` (or ``--out``; after every stage, with
``complete: false`` until the end), copied to ``$OUT`` with the t2i sample grid when ``OUT`` is
set.  ``--smoke`` is the same code path on the CPU with the ``recipes/debug`` recipes (seconds).

    PYTHONPATH=. python benchmarks/shapes_quality.py --device cuda --minutes 9
    PYTHONPATH=. python benchmarks/shapes_quality.py --smoke --work-dir /tmp/sq --out /tmp/sq.json
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root (see benchmarks/sampling.py)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import autocast, comma_list, result_path, save_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("tokenizer", "unified", "eval")
DEFAULT_SHARES = {"tokenizer": 0.2, "unified": 0.6, "eval": 0.2}
# issue #5: the unified model on held-out compositions
TARGETS = {
    "t2i_checker_accuracy": {"metric": "compositional_accuracy/overall", "min": 0.90},
    "vqa_exact_match": {"metric": "vqa_exact_match", "min": 0.95},
    "caption_attribute_recall": {"metric": "caption_attribute_recall", "min": 0.95},
}
REPORTED_METRICS = ("compositional_accuracy/overall", "vqa_exact_match",
                    "caption_attribute_recall", "caption_fact_precision")
# (full run, --smoke) recipes and settings
RECIPES = {
    "tokenizer": ("recipes/tokenizer_fsq_shapes.yaml", "recipes/debug/tokenizer_fsq_debug.yaml"),
    "unified": ("recipes/unified_shapes.yaml", "recipes/debug/unified_debug.yaml"),
    "eval": ("recipes/eval_shapes.yaml", "recipes/debug/eval_debug.yaml"),
}
GPU_PRESET = "recipes/presets/gpu_bf16.yaml"
TOKENIZER_GPU_PRESET = "recipes/presets/tokenizer_gpu.yaml"  # wider network, larger batch
TEXT_TOKENIZER = ({"num_samples": 20000, "vocab_size": 4096},  # `unigen text-tokenizer` defaults
                  {"num_samples": 2000, "vocab_size": 512})  # recipes/debug/unified_debug.yaml's
SAFETY = 0.9  # plan steps / samples into this fraction of what is left of a stage


# -- timing ----------------------------------------------------------------------------------------
class StepTimer(L.Callback):
    """Wall-clock time at the end of every training step and the gap before each step (the data
    loader's fetch plus Lightning's bookkeeping: large gaps mean a loader-bound run), written as
    JSON to ``path`` when training ends; prints a progress line every ``print_every_s`` seconds.
    Added to the recipe's callbacks on the command line (``--trainer.callbacks+=...``).

    The CUDA stream is synchronized only every ``sync_every`` steps and at the end: a sync on
    every step would stop the host from queueing the next step while the GPU works, and so slow
    the run it measures."""

    def __init__(self, path: str, label: str = "fit", print_every_s: float = 30.0,
                 sync_every: int = 50) -> None:
        self.path, self.label, self.print_every_s = path, label, print_every_s
        self.sync_every = sync_every
        self.times: list[float] = []
        self.gaps: list[float] = []
        self.start = 0.0
        self._printed = 0.0
        self._last_end: float | None = None

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self._printed = time.perf_counter()
        self._last_end = self.start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._last_end is not None:
            self.gaps.append(time.perf_counter() - self._last_end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = trainer.global_step >= trainer.max_steps
        if last or (self.sync_every and trainer.global_step % self.sync_every == 0):
            self._sync(pl_module)
        now = self._last_end = time.perf_counter()
        self.times.append(now - self.start)
        if self.print_every_s and now - self._printed >= self.print_every_s:
            self._printed = now
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            loss = f", loss {float(loss):.4f}" if torch.is_tensor(loss) else ""
            print(f"[{self.label}] step {trainer.global_step}/{trainer.max_steps}, "
                  f"{now - self.start:.0f} s{loss}", flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.path).write_text(json.dumps({"times": self.times, "gaps": self.gaps,
                                               "steps": trainer.global_step}))


def step_seconds(times: Sequence[float], skip: int) -> float | None:
    """Mean seconds per step after the first ``skip`` steps (compilation, cuDNN autotuning, loader
    start-up); ``times[i]`` is the end of step ``i + 1`` since training started.  ``None`` when no
    step is left to time."""
    skip = max(0, skip)
    if len(times) <= skip:
        return None
    start = times[skip - 1] if skip else 0.0
    return (times[-1] - start) / (len(times) - skip)


def plan_steps(left_s: float, overhead_s: float, step_s: float, cap: int,
               safety: float = SAFETY) -> int:
    """Optimizer steps that fit ``safety`` x (``left_s`` - ``overhead_s``) at ``step_s`` each, at
    most ``cap`` (the recipe's own max_steps) and at least 1."""
    usable = (left_s - overhead_s) * safety
    return int(max(1, min(cap, math.floor(usable / step_s) if step_s > 0 else cap)))


def plan_samples(left_s: float, fixed_s: float, per_sample_s: float, cap: int, floor: int,
                 batch_size: int, safety: float = SAFETY) -> int:
    """Evaluation samples that fit, a multiple of ``batch_size`` unless capped, within
    [``floor``, ``cap``]."""
    fit = (left_s - fixed_s) * safety / per_sample_s if per_sample_s > 0 else cap
    n = int(fit // batch_size * batch_size) if fit < cap else cap
    return max(floor, min(cap, n))


def max_time(seconds: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for ``trainer.max_time``."""
    s = max(1, int(math.ceil(seconds)))
    return f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


class Budget:
    """Each stage gets its share of the total; a stage that overran shrinks the later ones so the
    whole run stays within ``--minutes``."""

    def __init__(self, minutes: float, shares: dict[str, float]) -> None:
        self.total = minutes * 60.0
        self.shares = shares
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def for_stage(self, name: str) -> float:
        later = sum(self.shares[s] for s in STAGES[STAGES.index(name) + 1:]) * self.total
        return max(0.0, min(self.shares[name] * self.total, self.total - self.elapsed() - later))


# -- recipes ---------------------------------------------------------------------------------------
def merged_recipe(paths: Sequence[str]) -> dict[str, Any]:
    """The recipes' YAML merged (later files win, mappings merged key by key), as LightningCLI
    layers ``--config`` files; enough to read max_steps, warm-up and the logger."""
    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a.get(k), v) for k, v in b.items()}}
        return b

    out: dict[str, Any] = {}
    for path in paths:
        out = merge(out, yaml.safe_load((ROOT / path).read_text()) or {})
    return out


def dig(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    for key in dotted.split("."):
        if not isinstance(config, dict) or key not in config:
            return default
        config = config[key]
    return config


def calibration_trials(opts: argparse.Namespace, compiled: bool
                       ) -> list[tuple[str, dict[str, Any]]]:
    """The settings the unified stage calibrates before it fits (``--compile-modes``, for a
    compiled recipe, x ``--host-threads``), each as (label, {"compile": mode or None,
    "host_threads": n or None}); empty when neither option applies."""
    modes = (opts.compile_modes if compiled else None) or [None]
    threads = opts.host_threads or [None]
    if modes == [None] and threads == [None]:
        return []
    trials = []
    for mode, n in itertools.product(modes, threads):
        label = "/".join(part for part in (mode, None if n is None else f"host_threads={n}") if part)
        trials.append((label, {"compile": mode, "host_threads": n}))
    return trials


def setting_args(setting: dict[str, Any]) -> list[str]:
    """``unigen fit`` arguments of one calibration setting (:func:`calibration_trials`)."""
    args = []
    if setting["compile"] is not None:
        args += ["--model.init_args.compile", setting["compile"]]
    if setting["host_threads"] is not None:
        host = {"class_path": "unigen.training.host_threads.HostThreads",
                "init_args": {"num_threads": setting["host_threads"]}}
        args += [f"--trainer.callbacks+={json.dumps(host)}"]
    return args


def fit_args(recipes: Sequence[str], run_dir: Path, steps: int, seconds: float,
             timer: Path, label: str, extra: Sequence[str], recipe: dict[str, Any],
             export: Path | None, callbacks: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The ``unigen fit`` command line of one timed fit."""
    args = ["fit"]
    for path in recipes:
        args += ["--config", str(ROOT / path)]
    args += ["--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", str(steps),
             "--trainer.max_time", max_time(seconds), "--trainer.enable_progress_bar", "false",
             "--export_dir", str(export) if export else "null", *extra]
    logger = dig(recipe, "trainer.logger")
    if isinstance(logger, dict) and dig(logger, "init_args.save_dir"):
        args += ["--trainer.logger.init_args.save_dir", str(run_dir)]
    callback = {"class_path": "benchmarks.shapes_quality.StepTimer",
                "init_args": {"path": str(timer), "label": label}}
    args += [f"--trainer.callbacks+={json.dumps(callback)}"]
    for extra_callback in callbacks:
        args += [f"--trainer.callbacks+={json.dumps(extra_callback)}"]
    return args


def run_fit(args: list[str]) -> tuple[int, float]:
    """One LightningCLI fit in this process; (optimizer steps done, wall seconds)."""
    from unigen.cli import _lightning_cli

    start = time.perf_counter()
    cli = _lightning_cli(args)
    steps = int(cli.trainer.global_step)
    del cli
    gc.collect()  # the fit's loader workers and GPU tensors go now, not at some later collection
    return steps, time.perf_counter() - start


def timed_fit(name: str, recipes: Sequence[str], common: list[str], work: Path, budget_s: float,
              stage_start: float, steps: int | None, opts: argparse.Namespace, export: Path
              ) -> dict[str, Any]:
    """Calibrate (unless ``steps`` is given), plan max_steps into the stage's budget, fit and
    export."""
    from unigen.training.compilation import compile_mode

    recipe = merged_recipe(recipes)
    cap = int(dig(recipe, "trainer.max_steps", 10 ** 9) or 10 ** 9)
    warmup = dig(recipe, "model.init_args.warmup_steps")
    mode = compile_mode(dig(recipe, "model.init_args.compile", False))
    compiled = mode is not None
    info: dict[str, Any] = {"recipes": list(recipes), "recipe_max_steps": cap,
                            "budget_s": round(budget_s, 1), "compiled": compiled, "compile_mode": mode}
    no_val = [] if opts.validate else ["--trainer.limit_val_batches", "0",
                                       "--trainer.num_sanity_val_steps", "0"]
    left = lambda: budget_s - (time.perf_counter() - stage_start)  # noqa: E731
    if steps is None:
        timed_steps = opts.calibration_warmup + opts.calibration_steps
        profile_steps = opts.profile_steps if name == "unified" else 0
        cal_steps = timed_steps + profile_steps
        # --compile-modes / --host-threads: calibrate each setting and fit with the fastest (the
        # unified stage only)
        trials_spec = calibration_trials(opts, compiled) if name == "unified" else []

        def calibrate(label: str, mode_args: list[str]) -> tuple[int, float, list[float], Path]:
            run_dir = work / f"{name}_calibration{label}"
            timer, profile_path = run_dir / "step_times.json", run_dir / "profile.txt"
            profiler = ([{"class_path": "benchmarks.profiling.StepProfiler",
                          "init_args": {"path": str(profile_path), "first": timed_steps,
                                        "count": profile_steps}}] if profile_steps else [])
            args = fit_args(recipes, run_dir, cal_steps, max(left(), 1.0), timer,
                            f"{name} calibration{label}",
                            [*common, *mode_args, "--trainer.limit_val_batches", "0",
                             "--trainer.num_sanity_val_steps", "0"], recipe, None, profiler)
            done, wall = run_fit(args)
            return done, wall, json.loads(timer.read_text())["times"], profile_path

        if trials_spec:
            trials: dict[str, Any] = {}
            for label, setting in trials_spec:
                try:
                    result = calibrate(f"_{label}", setting_args(setting))
                except Exception as err:  # e.g. CUDA graphs refused: the other settings still run
                    print(f"=== {name}: calibration with {label} failed ({err!r})", flush=True)
                    torch._dynamo.reset()
                    trials[label] = {"error": repr(err)[:2000]}
                    continue
                trials[label] = {"result": result, "setting": setting,
                                 "step_s": step_seconds(result[2][:timed_steps], opts.calibration_warmup)}
            timed = {m: t["step_s"] for m, t in trials.items() if t.get("step_s")}
            if not timed:
                raise RuntimeError(f"{name}: every calibration trial failed: "
                                   + "; ".join(t.get("error", "too few steps") for t in trials.values()))
            best = min(timed, key=timed.get)
            done, wall, times, profile_path = trials[best]["result"]
            setting = trials[best]["setting"]
            common = [*common, *setting_args(setting)]
            if setting["compile"] is not None:
                info["compile_mode"] = setting["compile"]
            info["host_threads"] = setting["host_threads"]
            info["calibration_trials"] = {m: ({"step_s": round(t["step_s"], 5)} if t.get("step_s")
                                              else {"error": t.get("error", "too few steps")})
                                          for m, t in trials.items()}
            print(f"=== {name}: fits with {best} ("
                  + ", ".join(f"{m} {1e3 * s:.1f} ms" for m, s in timed.items()) + " a step)",
                  flush=True)
        else:
            try:
                done, wall, times, profile_path = calibrate("", [])
            except Exception as err:  # a one-shot GPU run should not die of a compiler error
                if not compiled:
                    raise
                print(f"=== {name}: calibration with torch.compile failed ({err!r}); again without",
                      flush=True)
                torch._dynamo.reset()
                info["compile_error"] = repr(err)[:2000]
                common = [*common, "--model.init_args.compile", "false"]
                compiled = info["compiled"] = False
                info["compile_mode"] = None
                done, wall, times, profile_path = calibrate("", [])
        if profile_steps and profile_path.is_file():
            info["profile"] = profile_path.read_text()
            summary = Path(f"{profile_path}.json")
            if summary.is_file():  # ms per step by kind of work: matmul, attention, loss, ...
                info["profile_by_kind"] = json.loads(summary.read_text())
        # the profiled steps run slower: plan from the timed ones (their overhead stays counted)
        step_s = step_seconds(times[:timed_steps], opts.calibration_warmup)
        if step_s is None:
            raise RuntimeError(f"{name} calibration ran {done} steps; too few to time")
        overhead = wall - step_s * done  # building, compiling, loader start-up, teardown
        if len(times) > timed_steps:  # the profiler's own cost belongs to no later fit
            overhead -= max(0.0, times[-1] - times[timed_steps - 1]
                            - step_s * (len(times) - timed_steps))
        warm = opts.calibration_warmup
        warmup_extra = max(0.0, times[warm - 1] - warm * step_s) if warm else 0.0
        # torch.compile'd blocks are reused by the next fit in this process (dynamo caches the
        # compiled code on Block.forward, not on the instance), so the real fit does not pay the
        # warm-up's extra time again; without compile it might (loader start, cuDNN), so keep it
        planned_overhead = overhead - warmup_extra if compiled else overhead
        steps = plan_steps(left(), planned_overhead, step_s, cap)
        info["calibration"] = {"steps": done, "seconds": round(wall, 2),
                               "step_s": round(step_s, 5), "overhead_s": round(overhead, 2),
                               "warmup_extra_s": round(warmup_extra, 2),
                               "planned_overhead_s": round(planned_overhead, 2),
                               "first_step_s": round(times[0], 2) if times else None}
        info["steps_from"] = "calibration"
    else:
        info["steps_from"] = "command line"
    overrides = {"max_steps": steps, "max_time_s": round(max(left(), 1.0), 1),
                 "validation": "recipe's" if opts.validate else "off"}
    extra = list(common) + no_val
    if isinstance(warmup, int) and opts.max_warmup_fraction is not None:
        capped = min(warmup, max(1, int(opts.max_warmup_fraction * steps)))
        if capped != warmup:
            extra += ["--model.init_args.warmup_steps", str(capped)]
        overrides["warmup_steps"] = capped
        info["recipe_warmup_steps"] = warmup
    timer = work / f"{name}_run" / "step_times.json"
    args = fit_args(recipes, work / f"{name}_run", steps, max(left(), 1.0), timer, name, extra,
                    recipe, export)
    print(f"=== {name}: fit {steps} steps (budget left {left():.0f} s)", flush=True)
    done, wall = run_fit(args)
    timing = json.loads(timer.read_text()) if timer.is_file() else {}
    times, gaps = timing.get("times", []), timing.get("gaps", [])
    skip = min(opts.calibration_warmup, max(0, len(times) - 1))
    measured = step_seconds(times, skip)
    gaps = gaps[skip:]
    info.update({"overrides": overrides, "command": ["unigen", *args], "steps_planned": steps,
                 "steps_done": done, "stopped_by_max_time": done < steps,
                 "fit_seconds": round(wall, 2),
                 "step_s": round(measured, 5) if measured else None,
                 # time between one step's end and the next one's start (loader fetch, hooks)
                 "between_steps_s": round(sum(gaps) / len(gaps), 5) if gaps else None,
                 "export": str(export)})
    return info


# -- eval ------------------------------------------------------------------------------------------
def eval_config(path: str, num_samples: int | None, batch_size: int | None) -> dict[str, Any]:
    from unigen.evaluate import load_eval_config

    overrides = ["tasks.t2i.fid=false"]  # FID needs torch-fidelity + Inception weights
    if num_samples is not None:
        overrides.append(f"data.num_samples={num_samples}")
    if batch_size is not None:
        overrides.append(f"batch_size={batch_size}")
    config = load_eval_config(ROOT / path, overrides)
    # the quality metrics of issue #5 in every run (a recipe may list fewer)
    wanted = {"t2i": ["compositional_accuracy"], "vqa": ["vqa_exact_match"],
              "caption": ["caption_attribute_recall", "caption_fact_precision"]}
    for task, names in wanted.items():
        metrics = config["tasks"][task].setdefault("metrics", [])
        listed = {m if isinstance(m, str) else next(iter(m)) for m in metrics}
        metrics += [m for m in names if m not in listed]
    return config


def run_eval(pipe, config: dict[str, Any], out: Path, precision: str
             ) -> tuple[dict[str, Any], float]:
    from unigen.evaluate import evaluate_pipeline

    start = time.perf_counter()
    with autocast(pipe.device, precision):
        result = evaluate_pipeline(pipe, config, out, progress=False)
    return result, time.perf_counter() - start


def timed_eval(model: Path, recipe: str, work: Path, budget_s: float, stage_start: float,
               device: torch.device, opts: argparse.Namespace) -> tuple[dict[str, Any], dict]:
    from unigen.evaluate import parse_config
    from unigen.pipeline import UnifiedPipeline

    pipe = UnifiedPipeline.from_pretrained(model, device=device)
    full = eval_config(recipe, opts.eval_samples, opts.eval_batch_size)
    # the recipe's batch size, else EvalConfig's default
    cap, batch = int(full["data"]["num_samples"]), parse_config(full).batch_size
    left = lambda: budget_s - (time.perf_counter() - stage_start)  # noqa: E731
    info: dict[str, Any] = {"recipe": recipe, "recipe_num_samples": cap, "batch_size": batch,
                            "precision": opts.eval_precision, "budget_s": round(budget_s, 1),
                            "overrides": ["tasks.t2i.fid=false"]}
    n_cal = min(opts.eval_calibration_samples, cap)
    result, wall = run_eval(pipe, eval_config(recipe, n_cal, batch), work / "eval_calibration",
                            opts.eval_precision)
    task_s = sum(t["seconds"] for t in result["metadata"]["timings"].values())
    per_sample = task_s / n_cal
    n = plan_samples(left(), wall - task_s, per_sample, cap, n_cal, batch)
    info["calibration"] = {"samples": n_cal, "seconds": round(wall, 2),
                           "per_sample_s": round(per_sample, 5),
                           "fixed_s": round(wall - task_s, 2)}
    if n > n_cal:
        print(f"=== eval: {n} held-out samples per task (budget left {left():.0f} s)", flush=True)
        result, wall = run_eval(pipe, eval_config(recipe, n, batch), work / "eval",
                                opts.eval_precision)
        out_dir = work / "eval"
    else:
        out_dir = work / "eval_calibration"
    info.update({"num_samples": n, "seconds_final": round(wall, 2), "out_dir": str(out_dir),
                 "timings": result["metadata"]["timings"],
                 "report": result["paths"].get("report"),
                 "samples_t2i": result["paths"].get("samples_t2i")})
    if n < cap:
        info["overrides"].append(f"data.num_samples={n}")
    return info, result


def targets(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, spec in TARGETS.items():
        value = metrics.get(spec["metric"])
        out[name] = {"metric": spec["metric"], "target": spec["min"], "value": value,
                     "met": value is not None and value >= spec["min"]}
    out["all_met"] = all(t["met"] for t in out.values())
    return out


# -- bringing a model back from a lent machine -------------------------------------------------------
HISTORY_FILE = "training_history.json"  # one entry per run that trained the pipeline's weights


def pack_parts(folder: Path, out: Path, part_bytes: int, prefix: str = "model.tar.part") -> list[Path]:
    """``folder`` as an uncompressed tar (bf16 weights do not compress) cut into files of at most
    ``part_bytes`` in ``out``; ``cat prefix* | tar -x`` restores it."""
    import io as _io
    import tarfile

    buffer = _io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=folder.name)
    data = buffer.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, lo in enumerate(range(0, len(data), part_bytes)):
        parts.append(out / f"{prefix}{i:02d}")
        parts[-1].write_bytes(data[lo:lo + part_bytes])
    return parts


def return_model(model: Path, work: Path, history: list[dict[str, Any]],
                 payload: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The trained pipeline with bf16 weights and its training history (earlier runs + this one),
    packed into ``$OUT`` (or ``work/returned`` without one) for ``--init-unified`` next time."""
    from unigen.pipeline import UnifiedPipeline

    unified = payload["stages"]["unified"]
    entry = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
             "unified_steps": unified["steps_done"],
             "unified_minutes": round(payload["seconds"]["unified"] / 60, 2),
             "recipes": payload["recipes"]["unified"], "metrics": payload.get("metrics")}
    history = [*history, entry]
    folder = work / "returned" / "model_bf16"
    shutil.rmtree(folder, ignore_errors=True)
    UnifiedPipeline.from_pretrained(model).save_pretrained(folder, dtype=torch.bfloat16)
    (folder / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    part_bytes = int(args.part_mb * 2**20)
    needed = math.ceil(size / part_bytes)
    info = {"bytes": size, "parts": needed, "total_unified_steps":
            sum(h["unified_steps"] for h in history), "runs": len(history)}
    if needed > args.max_parts:
        info["packed"] = False
        print(f"=== --return-model: {size / 2**20:.1f} MiB needs {needed} parts of {args.part_mb} "
              f"MiB, more than --max-parts {args.max_parts}; not packed (a smaller model, e.g. "
              "recipes/presets/unified_compact.yaml, fits)", flush=True)
        return info
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else work / "returned"
    info["packed"] = True
    info["files"] = [str(p) for p in pack_parts(folder, out, part_bytes)]
    print(f"=== --return-model: {size / 2**20:.1f} MiB in {needed} parts under {out} "
          f"({info['total_unified_steps']} unified steps over {len(history)} runs)", flush=True)
    return info


# -- driver ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    p.add_argument("--smoke", action="store_true",
                   help="CPU, recipes/debug recipes, a few steps: the code path in seconds")
    p.add_argument("--minutes", type=float, default=None,
                   help="budget of the three stages together (default 9; --smoke: 1)")
    for stage in STAGES:
        p.add_argument(f"--{stage}-share", type=float, default=DEFAULT_SHARES[stage],
                       help=f"fraction of --minutes for the {stage} stage")
    p.add_argument("--image-tokenizer", default=None,
                   help="an image tokenizer directory trained earlier: skips the tokenizer fit "
                        "(give --tokenizer-share a small value then)")
    p.add_argument("--init-unified", default=None,
                   help="a pipeline directory from an earlier run (e.g. brought back from a lent "
                        "GPU by --return-model): the unified model continues from its weights, "
                        "with its text and image tokenizers (no tokenizer fit)")
    p.add_argument("--return-model", action="store_true",
                   help="after the eval, pack the pipeline (bf16 weights + its training history) "
                        "into $OUT as model.tar.partNN files of at most --part-mb MiB")
    p.add_argument("--part-mb", type=float, default=15.0)
    p.add_argument("--max-parts", type=int, default=4,
                   help="--return-model packs nothing if it needs more parts (the device tool "
                        "brings back 8 files of 16 MiB at most)")
    p.add_argument("--tokenizer-steps", type=int, default=None,
                   help="image tokenizer max_steps (skips its calibration fit)")
    p.add_argument("--unified-steps", type=int, default=None,
                   help="unified model max_steps (skips its calibration fit)")
    p.add_argument("--calibration-warmup", type=int, default=None,
                   help="calibration steps not timed (compile, autotune; default 10, smoke 1)")
    p.add_argument("--calibration-steps", type=int, default=None,
                   help="calibration steps timed (default 30, smoke 2)")
    p.add_argument("--max-warmup-fraction", type=float, default=0.1,
                   help="cap the recipe's LR warm-up at this fraction of the planned steps")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="torch.profiler over this many unified calibration steps after the timed "
                        "ones; the operator tables go into the JSON (stages.unified.profile)")
    p.add_argument("--compile-modes", type=comma_list,
                   default=None,
                   help="torch.compile modes to calibrate the (compiled) unified model with, e.g. "
                        "default,reduce-overhead; the fit uses the fastest, the JSON lists each "
                        "mode's step time (calibration_trials)")
    p.add_argument("--host-threads", type=comma_list, default=None,
                   help="intra-op thread counts of the training process to calibrate the unified "
                        "model with, e.g. 1,16 (unigen fit's default is 1 beside a GPU: "
                        "unigen.training.host_threads); combined with --compile-modes, every pair")
    p.add_argument("--validate", action="store_true",
                   help="keep the recipes' validation inside the timed fits (default off)")
    p.add_argument("--tokenizer-recipe", action="append", default=None,
                   help="image tokenizer recipe(s), layered in order (default "
                        "tokenizer_fsq_shapes + presets/tokenizer_gpu on CUDA)")
    p.add_argument("--tokenizer-precision", default="32-true", choices=("32-true", "bf16-mixed"),
                   help="the FSQ tokenizer's precision (default its recipe's fp32; see docs)")
    p.add_argument("--unified-recipe", action="append", default=None,
                   help="unified recipe(s), layered in order (default unified_shapes + gpu_bf16)")
    p.add_argument("--eval-recipe", default=None)
    p.add_argument("--eval-samples", type=int, default=None,
                   help="most held-out samples per task (default the eval recipe's)")
    p.add_argument("--eval-batch-size", type=int, default=None)
    p.add_argument("--eval-calibration-samples", type=int, default=None,
                   help="samples of the timing pass (default 64, smoke 4)")
    p.add_argument("--eval-precision", default="32-true", choices=("32-true", "bf16-mixed"))
    p.add_argument("--num-workers", type=int, default=None,
                   help="data-loader workers (default from os.cpu_count(); smoke 0)")
    p.add_argument("--curves", action="store_true",
                   help="then benchmarks/sampler_curves.py on the exported model (not budgeted)")
    p.add_argument("--curves-samples", type=int, default=128)
    p.add_argument("--curves-args", default="",
                   help="more arguments for sampler_curves.py, one string (e.g. \"--steps 4,8,16\")")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None,
                   help="tokenizers, runs, model, eval (default runs/shapes_quality_<device>)")
    p.add_argument("--out", default=None,
                   help="JSON (default benchmarks/results/shapes_quality_<device>.json)")
    args = p.parse_args(argv)
    if args.init_unified and args.image_tokenizer:
        p.error("--init-unified brings its own image tokenizer; drop --image-tokenizer")
    from unigen.training.compilation import COMPILE_MODES

    unknown = [m for m in args.compile_modes or [] if m not in COMPILE_MODES]
    if unknown:
        p.error(f"--compile-modes takes modes of {list(COMPILE_MODES)}, got {unknown}")
    if args.host_threads:
        if not all(n.isdigit() and int(n) >= 1 for n in args.host_threads):
            p.error(f"--host-threads takes counts >= 1, got {args.host_threads}")
        args.host_threads = [int(n) for n in args.host_threads]
    if args.smoke:
        args.device = "cpu"
    defaults = {"minutes": (9.0, 1.0), "calibration_warmup": (10, 1), "calibration_steps": (30, 2),
                "eval_calibration_samples": (64, 4)}
    for key, (full, smoke) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    if args.num_workers is None:
        args.num_workers = 0 if args.smoke else min(8, (os.cpu_count() or 2) // 2)
    shares = {s: getattr(args, f"{s}_share") for s in STAGES}
    if any(v < 0 for v in shares.values()) or sum(shares.values()) > 1.0 + 1e-9:
        p.error(f"stage shares must be >= 0 and sum to at most 1, got {shares}")
    args.shares = shares
    return args


def default_recipes(args: argparse.Namespace) -> dict[str, Any]:
    pick = 1 if args.smoke else 0
    cuda = args.device == "cuda"
    unified = args.unified_recipe or ([RECIPES["unified"][pick]] + ([GPU_PRESET] if cuda else []))
    tokenizer = args.tokenizer_recipe or ([RECIPES["tokenizer"][pick]]
                                          + ([TOKENIZER_GPU_PRESET] if cuda else []))
    return {"tokenizer": tokenizer,
            "unified": unified, "eval": args.eval_recipe or RECIPES["eval"][pick]}


def copy_to_out(paths: Sequence[str | Path | None], folder: str = "") -> list[str]:
    """Copy the result files to ``$OUT`` (or its sub-folder ``folder``): what the lent GPU
    machine's tool brings back."""
    out = os.environ.get("OUT")
    copied = []
    if out:
        dest = Path(out) / folder
        dest.mkdir(parents=True, exist_ok=True)
        for path in paths:
            if path and Path(path).is_file():
                shutil.copy2(path, dest / Path(path).name)
                copied.append(str(dest / Path(path).name))
    return copied


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible to torch")
        torch.set_float32_matmul_precision("high")  # TF32 for what runs in fp32
    name = "shapes_quality_smoke" if args.smoke else "shapes_quality"
    work = Path(args.work_dir or f"runs/{name}_{device.type}")
    work.mkdir(parents=True, exist_ok=True)
    recipes = default_recipes(args)
    budget = Budget(args.minutes, args.shares)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    common = ["--seed_everything", str(args.seed), "--trainer.accelerator", accelerator,
              "--data.init_args.num_workers", str(args.num_workers)]
    payload: dict[str, Any] = {
        "complete": False, "smoke": args.smoke, "device": device.type, "minutes": args.minutes,
        "shares": args.shares, "recipes": recipes, "num_workers": args.num_workers,
        "targets_issue": "#5", "stages": {}, "seconds": {}, "work_dir": str(work)}
    out_path = result_path(name, device, args.out)

    def save() -> None:
        payload["seconds"]["total"] = round(budget.elapsed(), 2)
        save_result(name, device, payload, args.out)

    # 1. tokenizers --------------------------------------------------------------------------------
    from unigen.commands import build_text_tokenizer

    stage_start, stage_budget = time.perf_counter(), budget.for_stage("tokenizer")
    text = TEXT_TOKENIZER[1 if args.smoke else 0]
    history: list[dict[str, Any]] = []
    if args.init_unified:  # the earlier run's tokenizers: its word ids and codes
        from unigen import io

        init, _ = io.read_model_dir(args.init_unified, "--init-unified pipeline",
                                    "unpack --return-model's parts, or an --export_dir",
                                    "pipeline.json")
        text_tok = init / "text_tokenizer"
        if (init / HISTORY_FILE).is_file():
            history = json.loads((init / HISTORY_FILE).read_text())
        payload["init_unified"] = {"from": str(init), "earlier_runs": history}
        payload["stages"]["text_tokenizer"] = {"from": str(text_tok), "seconds": 0.0}
    else:
        text_tok = work / "text_tokenizer"
        print(f"=== text tokenizer ({text})", flush=True)
        build_text_tokenizer("shapes", str(text_tok), seed=args.seed, **text)
        payload["stages"]["text_tokenizer"] = {**text,
                                               "seconds": round(time.perf_counter() - stage_start, 2)}
    earlier = args.image_tokenizer or (str(Path(args.init_unified) / "image_tokenizer")
                                       if args.init_unified else None)
    if earlier:  # trained earlier (e.g. carried to a lent machine): no fit
        from unigen.tokenizers import ImageTokenizer

        image_tok = Path(earlier)
        loaded = ImageTokenizer.from_pretrained(image_tok)  # fails here, not in the unified fit
        payload["stages"]["image_tokenizer"] = {"from": str(image_tok), "steps_done": 0,
                                                "type": type(loaded).type_name,
                                                "config": loaded.config}
        del loaded
    else:
        image_tok = work / "image_tokenizer"
        payload["stages"]["image_tokenizer"] = timed_fit(
            "image_tokenizer", recipes["tokenizer"],
            [*common, "--trainer.precision", args.tokenizer_precision], work, stage_budget,
            stage_start, args.tokenizer_steps, args, image_tok)
        payload["stages"]["image_tokenizer"]["precision"] = args.tokenizer_precision
        # the trained tokenizer is small (config + safetensors): bring it back from a lent machine
        # (inside the returned pipeline with --return-model)
        if not args.return_model:
            payload["stages"]["image_tokenizer"]["copied_to_out"] = copy_to_out(
                sorted(image_tok.glob("*")), "image_tokenizer")
    payload["seconds"]["tokenizer"] = round(time.perf_counter() - stage_start, 2)
    save()

    # 2. unified model -----------------------------------------------------------------------------
    stage_start, stage_budget = time.perf_counter(), budget.for_stage("unified")
    model = work / "model"
    payload["stages"]["unified"] = timed_fit(
        "unified", recipes["unified"],
        [*common, "--model.init_args.image_tokenizer", str(image_tok),
         "--model.init_args.text_tokenizer", str(text_tok),
         *(["--model.init_args.init_weights", args.init_unified] if args.init_unified else [])],
        work, stage_budget, stage_start, args.unified_steps, args, model)
    payload["seconds"]["unified"] = round(time.perf_counter() - stage_start, 2)
    save()

    # 3. evaluation --------------------------------------------------------------------------------
    stage_start, stage_budget = time.perf_counter(), budget.for_stage("eval")
    info, result = timed_eval(model, recipes["eval"], work, stage_budget, stage_start, device, args)
    payload["stages"]["eval"] = info
    payload["seconds"]["eval"] = round(time.perf_counter() - stage_start, 2)
    metrics = result["metrics"]
    payload["metrics"] = {k: metrics.get(k) for k in REPORTED_METRICS}
    payload["metrics_all"] = metrics
    payload["per_category"] = result.get("per_category")
    payload["targets"] = targets(metrics)
    train_s = payload["seconds"]["tokenizer"] + payload["seconds"]["unified"]
    payload["training_cost"] = {"device": device.type, "minutes": round(train_s / 60, 2),
                                "unified_steps": payload["stages"]["unified"]["steps_done"],
                                "image_tokenizer_steps":
                                    payload["stages"]["image_tokenizer"]["steps_done"]}
    payload["seconds"]["stages_total"] = round(budget.elapsed(), 2)

    # the model goes back before the (unbudgeted) curves: a run killed there keeps its training
    if args.return_model:
        payload["returned_model"] = return_model(model, work, history, payload, args)
        save()
    if args.curves:  # outside the budget
        from benchmarks import sampler_curves

        start = time.perf_counter()
        curves_out = out_path.with_name(f"sampler_curves_{device.type}.json")
        curves_samples = 4 if args.smoke else args.curves_samples
        curves_args = ["--model", str(model), "--device", device.type,
                       "--precision", args.eval_precision, "--num-samples", str(curves_samples),
                       "--out", str(curves_out), "--work-dir", str(work / "curves")]
        if args.smoke:
            curves_args += ["--steps", "2,4", "--reference-steps", "4", "--thresholds", "0.9",
                            "--threshold-budget", "4", "--vqa-steps", "1,2", "--repeats", "1",
                            "--batch-size", "4", "--grid-size", "0"]
        curves_args += shlex.split(args.curves_args)
        try:  # the budgeted stages' results stand even when the (unbudgeted) curves fail
            sampler_curves.main(curves_args)
            payload["curves"] = {"json": str(curves_out), "args": curves_args}
        except Exception as err:
            print(f"=== curves failed: {err!r}", flush=True)
            payload["curves"] = {"error": repr(err)[:2000], "args": curves_args}
        payload["curves"]["seconds"] = round(time.perf_counter() - start, 2)
    payload["complete"] = True
    save()
    grid = info.get("samples_t2i")
    shown = {k: (None if v is None else round(v, 4)) for k, v in payload["metrics"].items()}
    print(f"metrics: {shown}")
    for key, t in payload["targets"].items():
        if key != "all_met":
            print(f"target {key}: {t['value']} >= {t['target']}: {t['met']}")
    print(f"seconds: {payload['seconds']}")
    # the device tool brings back 8 files: with the model's parts, only the JSONs and the grid
    copies = [out_path, grid] + ([] if args.return_model else [info.get("report")])
    if args.curves and "json" in payload["curves"]:
        copies += [payload["curves"]["json"]]
        if not args.return_model:
            copies += [Path(payload["curves"]["json"]).with_suffix(".png")]
    payload["copied_to_out"] = copy_to_out(copies)
    return payload


if __name__ == "__main__":
    main()
