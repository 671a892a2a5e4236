"""The evaluation loop: :func:`evaluate_pipeline`

1. streams the data in batches; every sample ``i`` is generated with its own seed ``seed + i``
   (batch-size invariant, as the pipeline guarantees per-sample generators);
2. writes one JSON record per sample and task to ``records.jsonl`` as it goes (checker verdicts,
   generated captions and answers), and keeps only running state for image metrics (FID moments,
   KID features), checkpointed to ``metric_state.safetensors``: memory stays flat and a killed
   run continues with ``resume=True`` where it stopped;
3. computes the text/checker metrics from the records, the image metrics from their state, and
   writes ``results.json``, ``report.md``, the per-category plot and sample grids
   (:func:`unigen.metrics.write_report`).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from unigen import io
from unigen.evaluate.config import EvalConfig, TaskSettings
from unigen.evaluate.data import EvalData, build_data
from unigen.evaluate.persistence import (_SAMPLE_PNG, RECORDS_NAME, RESOURCE_OPTIONS, RUN_NAME,
                                         SAMPLES_DIR, STATE_NAME, RecordLog, _first_difference,
                                         _restore_state, _run_identity, _state_tensors,
                                         finished_task, remove_run_outputs)
from unigen.evaluate.recipe import (check_metric_options, metric_entries, metric_kind,
                                    parse_config, shared_arguments)
from unigen.evaluate.record_metrics import (RECORD, RECORD_METRICS, _feed_image_metrics,
                                            _feed_records, result_name)
from unigen.evaluate.segment_tasks import eval_task
from unigen.evaluate.tasks import TaskSpec, settings_used, untrained_tasks
from unigen.metrics import (COMPOSITIONAL, ClipEncoder, build_feature_extractor,
                            build_metric, flatten_results, write_report)
from unigen.tokenizers.base import pil_to_tensor
from unigen.visual import captioned_grid, save_png, to_pil

GRID_TILE_PIXELS = 128  # sample grids upscale images (nearest) to about this width
_RECORD_CHUNK = 256  # records fed to a metric at once when the report is computed


@dataclass
class _TaskRun:
    name: str
    settings: TaskSettings
    spec: TaskSpec
    record_metrics: list[tuple[str, str, dict[str, Any]]]  # (name, kind, kwargs), built at the end
    image_metrics: dict[str, tuple[str, Any]]  # name -> (kind, live metric)
    done: int = 0
    generated_now: int = 0
    seconds: float = 0.0
    reused_from: str | None = None  # the earlier run whose records and state this task took

    def live_metrics(self) -> dict[str, Any]:
        return {name: metric for name, (_, metric) in self.image_metrics.items()}

    @property
    def checks(self) -> set[str]:
        wanted: set[str] = set()
        for name, kind, _ in self.record_metrics:
            if kind == COMPOSITIONAL:
                wanted.add("compositional")
            elif kind == RECORD:  # a record field may come from one of the costly checks
                wanted.update(RECORD_METRICS.get(name).needs_checks)
        return wanted


def _shared_resources(cfg: EvalConfig, wanted: set[str]) -> dict[str, Any]:
    shared: dict[str, Any] = {}
    if "extractor" in wanted:
        shared["extractor"] = build_feature_extractor(cfg.resources.extractor)
    if "clip" in wanted:
        if cfg.resources.clip is None:
            raise ValueError("clip_score needs resources.clip: a local CLIP directory")
        shared["clip"] = ClipEncoder.from_pretrained(cfg.resources.clip)
    return shared


def _plan_tasks(cfg: EvalConfig, data: EvalData, device: torch.device
                ) -> tuple[list[_TaskRun], dict[str, Any]]:
    """Build every task's live (image-fed) metrics, sharing one extractor / CLIP between them,
    once the data is known to hold what every task needs."""
    for name in cfg.tasks:
        needs = eval_task(name).needs
        gap = data.first_missing(needs) if needs else None
        if gap is not None:
            raise ValueError(f"tasks.{name} needs {' and '.join(needs)} texts for every sample; "
                             f"sample {gap[0]} of data source {cfg.data['source']!r} has no "
                             f"{gap[1]}")
    plans = []
    wanted = set().union(*(shared_arguments(settings) for settings in cfg.tasks.values()))
    shared = _shared_resources(cfg, wanted)
    for name, settings in cfg.tasks.items():
        spec = eval_task(name)
        record, image = [], {}
        for metric, kwargs in metric_entries(settings):
            kind = metric_kind(metric, name)
            if kind == RECORD and RECORD_METRICS.get(metric).needs_scenes and not data.has_scenes:
                raise ValueError(f"metric {metric!r} needs scene annotations; data source "
                                 f"{cfg.data['source']!r} has none")
            if kind in spec.image_kinds:
                image[metric] = (kind, build_metric(metric, shared, **kwargs).to(device))
            else:
                record.append((metric, kind, kwargs))
        plans.append(_TaskRun(name, settings, spec, record, image))
    return plans, shared


def _check_samplers(pipe: Any, plans: Sequence[_TaskRun]) -> None:
    """Build each task's sampler as its decode will (an unset one is the pipeline's default for
    the task, so parse_config cannot), so that a bad option is one line before an earlier run's
    outputs are removed or a sample is drawn (not after the tasks before it)."""
    for plan in plans:
        used = settings_used(pipe, plan.name, plan.settings)
        if isinstance(used.get("sampler"), str) and hasattr(pipe, "make_sampler"):
            pipe.make_sampler(used["sampler"], used["sampler_kwargs"],
                              option=f"tasks.{plan.name}.sampler_kwargs")


def check_out_dir(out: str | os.PathLike) -> None:
    """Eval writes a directory of results: ``out`` must not be a file."""
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; eval writes a directory of results there")


def _resume(plans: list[_TaskRun], log: RecordLog, state_path: Path,
            skip: Collection[str] = ()) -> list[dict[str, Any]]:
    """Set each task's ``done`` count from the records (and, for tasks with image metrics, the
    checkpointed state, which may lag the records); returns the records kept. The tasks in
    ``skip`` (taken whole from an earlier run instead) keep nothing and start from 0."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in log:
        rows = by_task.setdefault(record.get("task"), [])
        if record.get("index") != len(rows):
            raise ValueError(f"{log.path} is out of order: {record.get('task')} record "
                             f"{record.get('index')} after {len(rows)} records")
        rows.append(record)
    state = io.load_safetensors(state_path) if state_path.is_file() else {}
    kept = []
    for plan in plans:
        if plan.name in skip:
            continue
        rows = by_task.get(plan.name, [])
        plan.done = len(rows)
        if plan.image_metrics:
            plan.done = min(plan.done, int(state.get(f"done/{plan.name}", torch.tensor(0))))
            if plan.done:
                _restore_state({plan.name: plan.live_metrics()}, state)
        kept += rows[:plan.done]
    return kept


def _save_png(image: Tensor, path: Path) -> None:
    save_png(to_pil(image.cpu()), path)


def _load_png(path: Path) -> Tensor:
    with Image.open(path) as img:
        return pil_to_tensor(img.convert("RGB"))


def _run_task(pipe, plan: _TaskRun, cfg: EvalConfig, data: EvalData, log: RecordLog, out: Path,
              save_state: Callable[[], None], progress: bool) -> None:
    n = len(data)
    start = time.perf_counter()
    since_save = 0
    with tqdm(total=n, initial=plan.done, desc=f"eval {plan.name}", unit="sample",
              disable=not progress) as bar:
        for lo in range(plan.done, n, cfg.batch_size):
            samples = [data.sample(i) for i in range(lo, min(lo + cfg.batch_size, n))]
            seeds = [cfg.seed + s.index for s in samples]
            with torch.no_grad():
                batch = plan.spec.generate(pipe, plan.settings, samples, seeds, plan.checks)
            if batch.images is not None:
                real = torch.stack([s.image for s in samples]).to(batch.images.device)
                _feed_image_metrics(plan.image_metrics, real, batch.images,
                                    [s.prompt for s in samples])
                for name, (_, metric) in plan.image_metrics.items():
                    _add_sample_fields(batch.records, name, metric)
                for s, image in zip(samples, batch.images):
                    if s.index < cfg.grid_size:  # the grid reads these back, also after a resume
                        _save_png(image, out / SAMPLES_DIR / plan.name / f"{s.index:06d}.png")
            log.append(batch.records)
            plan.done += len(samples)
            plan.generated_now += len(samples)
            since_save += len(samples)
            if plan.image_metrics and (since_save >= cfg.checkpoint_every or plan.done == n):
                save_state()
                since_save = 0
            bar.update(len(samples))
    plan.seconds = time.perf_counter() - start


def _reuse_sources(plans: list[_TaskRun], identity: Mapping[str, Any],
                   reuse_from: Mapping[str, Path], num_samples: int, grid_count: int, out: Path
                   ) -> dict[str, tuple[str, Path, list[dict[str, Any]], dict[str, Tensor]]]:
    """Per task, the first of the earlier runs ``reuse_from`` (name -> folder) that finished it as
    this run would compute it (:func:`finished_task`), with the sample images its grid needs:
    ``task -> (name, folder, records, metric state)``."""
    found = {}
    for plan in plans:
        for name, source in reuse_from.items():
            if source.resolve() == out.resolve():
                continue
            taken = finished_task(source, plan.name, identity["task_sha1"][plan.name],
                                  num_samples, plan.live_metrics())
            if taken is None:
                continue
            if plan.spec.grid_from_generated and not all(
                    (source / SAMPLES_DIR / plan.name / f"{i:06d}.png").is_file()
                    for i in range(grid_count)):
                continue
            found[plan.name] = (name, source, *taken)
            break
    return found


def _reuse_task(plan: _TaskRun, name: str, source: Path, records: list[dict[str, Any]],
                state: Mapping[str, Tensor], log: RecordLog, out: Path) -> None:
    """Take a task whole from the earlier run ``source``: its records, its image-metric state (the
    caller checkpoints it) and its grid's sample images, so this folder is complete and resumes
    like one that generated the task itself."""
    if plan.image_metrics:
        _restore_state({plan.name: plan.live_metrics()}, state)
    folder = source / SAMPLES_DIR / plan.name
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and _SAMPLE_PNG.fullmatch(path.name):
                target = out / SAMPLES_DIR / plan.name / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    log.append(records)
    plan.done = len(records)
    plan.reused_from = name


def _add_sample_fields(records: list[dict[str, Any]], name: str, metric: Any) -> None:
    """Merge a metric's per-sample verdicts (``sample_fields()``, see :mod:`unigen.metrics.base`)
    into the batch's records."""
    sample_fields = getattr(metric, "sample_fields", None)
    if sample_fields is None:
        return
    fields = sample_fields()
    if len(fields) != len(records):
        raise RuntimeError(f"metric {name}: sample_fields() gave {len(fields)} entries for a batch "
                           f"of {len(records)} samples")
    for record, extra in zip(records, fields):
        clash = set(record) & set(extra)
        if clash:
            raise RuntimeError(f"metric {name}: sample field(s) {sorted(clash)} already in the record")
        record.update(extra)


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _compute(plans: list[_TaskRun], log: RecordLog) -> tuple[dict[str, Any], dict[str, float]]:
    """Every metric's value; record-fed metrics stream the JSONL in chunks."""
    results: dict[str, Any] = {}
    per_category: dict[str, float] = {}
    for plan in plans:
        metrics = [(name, kind, RECORD_METRICS.get(name)(**kwargs) if kind == RECORD
                    else build_metric(name, None, **kwargs))
                   for name, kind, kwargs in plan.record_metrics]
        for chunk in _chunks((r for r in log if r["task"] == plan.name), _RECORD_CHUNK):
            for _, kind, metric in metrics:
                _feed_records(metric, kind, chunk)
        for name, kind, metric in metrics:
            _store(results, name, plan.name, metric.compute())
            if kind == COMPOSITIONAL and (plan.name == "t2i" or not per_category):
                per_category = metric.per_category()  # one plot: t2i's, else the first task's
        for name, (_, metric) in plan.image_metrics.items():
            with warnings.catch_warnings():
                # all of a resumed run's images may come from restored state: no update() call
                warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                _store(results, name, plan.name, metric.compute())
    return results, per_category


def _store(results: dict[str, Any], metric: str, task: str, value: Any) -> None:
    """``results[result_name(metric, task)] = value``; a qualified metric's own values (``kid``,
    ``kid_std``) become ``kid/<task>`` and ``kid_std/<task>``, its other parts stay below
    (``compositional_accuracy/<task>/overall``)."""
    key = result_name(metric, task)
    if key == metric or not isinstance(value, Mapping):
        results[key] = value
        return
    own = [k for k in value if k == metric or k.startswith(f"{metric}_")]
    for k in own:
        results[f"{k}/{task}"] = value[k]
    rest = {k: v for k, v in value.items() if k not in own}
    if rest:
        results[key] = rest


def _write_grids(plans: list[_TaskRun], cfg: EvalConfig, data: EvalData, log: RecordLog,
                 out: Path) -> list[Path]:
    count = min(cfg.grid_size, len(data))
    if not count:
        return []
    wanted = {p.name: [] for p in plans}
    for record in log:
        if record["index"] < count:
            wanted[record["task"]].append(record)
    paths = []
    for plan in plans:
        records = wanted[plan.name]
        if plan.spec.grid_from_generated:
            images = torch.cat([_load_png(out / SAMPLES_DIR / plan.name / f"{r['index']:06d}.png")
                                for r in records])
        else:
            images = torch.stack([data.sample(r["index"]).image for r in records])
        texts = [plan.spec.grid_text(r) for r in records]
        scale = max(1, GRID_TILE_PIXELS // images.shape[-1])  # room for texts under small images
        paths.append(save_png(captioned_grid(images, texts, scale=scale),
                              out / f"samples_{plan.name}.png"))
    return paths


def _own_resources(plans: list[_TaskRun]) -> dict[str, Any]:
    """``{"<task>/<metric>": describe()}`` of the metrics given their own network in the recipe
    (``{name: class_accuracy, classifier: DIR}``), which ``resources:`` does not list."""
    return {f"{p.name}/{name}": metric.describe() for p in plans
            for name, (_, metric) in p.image_metrics.items()
            if any(k in RESOURCE_OPTIONS for k in dict(metric_entries(p.settings))[name])
            and callable(getattr(metric, "describe", None))}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def evaluate_pipeline(pipe, config: Mapping[str, Any] | EvalConfig, out_dir: str | os.PathLike,
                      progress: bool = True, resume: bool = False,
                      metadata: Mapping[str, Any] | None = None,
                      reuse_from: Mapping[str, str | os.PathLike]
                      | Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """Evaluate ``pipe`` (a :class:`unigen.pipeline.UnifiedPipeline`) as ``config`` (an eval recipe
    mapping, see :class:`EvalConfig`) says, writing everything into ``out_dir``.

    ``resume=True`` continues a run killed in ``out_dir`` (same recipe and model, else an error);
    otherwise an earlier run there is replaced. ``metadata`` is added to results.json (e.g. the
    model directory). ``reuse_from`` names finished runs (folders, or ``{name: folder}``; a sweep
    passes its earlier points): a task that one of them computed exactly as this run would (same
    task identity in its ``run.json``, see :func:`unigen.evaluate.persistence.task_identities`) is
    not generated again; its records, metric state and sample images are taken from the first
    such run, and ``metadata.reused`` names that run per task. Returns ``{"metrics": flat metric
    values, "per_category": {...}, "metadata": {...}, "paths": {name: path}}``.

    Example (the demo's quick check)::

        evaluate_pipeline(pipe, {"data": {"source": "shapes", "split": "heldout",
                                          "num_samples": 16},
                                 "tasks": {"t2i": {"num_steps": 16, "guidance_scale": 2.0,
                                                   "metrics": ["compositional_accuracy"]},
                                           "caption": {"metrics": ["caption_fact_precision"]},
                                           "vqa": {"metrics": ["vqa_exact_match"]}}}, "runs/eval")
    """
    cfg = parse_config(config)
    if cfg.sweep:
        raise ValueError("this recipe has a sweep: block; run it with sweep_pipeline "
                         "(or `unigen eval`), or remove the block")
    out = Path(out_dir)
    data = build_data(cfg.data, pipe.image_size)
    check_metric_options(cfg, len(data))  # a folder's size is known only now
    plans, shared = _plan_tasks(cfg, data, pipe.device)
    _check_samplers(pipe, plans)
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)  # only once the run can start: a refusal leaves nothing
    log, state_path, run_path = RecordLog(out / RECORDS_NAME), out / STATE_NAME, out / RUN_NAME
    identity = _run_identity(cfg, pipe, {p.name: p.live_metrics() for p in plans})
    if not isinstance(reuse_from, Mapping):
        reuse_from = {str(folder): folder for folder in reuse_from}
    sources = _reuse_sources(plans, identity, {k: Path(v) for k, v in reuse_from.items()},
                             len(data), min(cfg.grid_size, len(data)), out)
    kept: list[dict[str, Any]] = []
    resuming = resume and run_path.is_file()
    if resuming:
        saved = io.read_json(run_path, "eval run")
        if saved.get("model_sha1") != identity["model_sha1"]:
            raise ValueError(f"cannot resume {out}: it was evaluated with other model weights")
        if saved.get("recipe_sha1") != identity["recipe_sha1"]:
            where = _first_difference(saved.get("recipe"), identity["recipe"])
            raise ValueError(f"cannot resume {out}: the recipe differs from the earlier run at "
                             f"{where!r}")
        if saved.get("resources_sha1") != identity["resources_sha1"]:
            where = _first_difference(saved.get("resources"), identity["resources"])
            raise ValueError(f"cannot resume {out}: the metrics' networks differ from the earlier "
                             f"run's at {where!r} (other weights: start over without --resume)")
        kept = _resume(plans, log, state_path, skip=sources)
    # a new run removes everything an earlier one wrote there (and nothing else); a resumed one
    # keeps what it continues from and writes the results, report and grids anew
    remove_run_outputs(out, resuming)
    io.write_json(run_path, identity)
    log.rewrite(kept)  # drops a torn line and records beyond the checkpointed state
    restored = {p.name: p.done for p in plans}

    def save_state() -> None:
        live = {p.name: p.live_metrics() for p in plans if p.image_metrics}
        io.save_safetensors(_state_tensors(live, {p.name: p.done for p in plans}), state_path)

    for plan in plans:
        if plan.name in sources:
            _reuse_task(plan, *sources[plan.name], log, out)
            if plan.image_metrics:
                save_state()
        else:
            _run_task(pipe, plan, cfg, data, log, out, save_state, progress)
    results, per_category = _compute(plans, log)
    meta = {
        **(metadata or {}),
        "data": dict(cfg.data, image_size=pipe.image_size, num_samples=len(data)),
        "tasks": {p.name: settings_used(pipe, p.name, p.settings) for p in plans},
        "seed": cfg.seed, "batch_size": cfg.batch_size, "device": _device_name(pipe.device),
        "model_sha1": identity["model_sha1"],
        "resources": {**{k: v.describe() for k, v in shared.items()}, **_own_resources(plans)},
        "resumed_samples": {k: v for k, v in restored.items() if v},
        "timings": {p.name: {"seconds": round(p.seconds, 3), "generated": p.generated_now,
                             "samples_per_second": round(p.generated_now / p.seconds, 3)
                             if p.seconds > 0 and p.generated_now else None}
                    for p in plans},
    }
    untrained = untrained_tasks(pipe, [p.name for p in plans])
    if untrained:  # scored all the same: the numbers say what an untrained task gives
        meta["untrained_tasks"] = untrained
    reused = {p.name: p.reused_from for p in plans if p.reused_from is not None}
    if reused:  # these tasks' numbers come from the named run's records and metric state
        meta["reused"] = reused
    paths = write_report(out, results, meta, per_category)
    grids = _write_grids(plans, cfg, data, log, out)
    if grids:
        report = paths["report"]
        links = "".join(f"![{p.stem}]({p.name})\n" for p in grids)
        io.write_text(report, report.read_text() + f"\n## Samples\n\n{links}")
        paths.update({p.stem: p for p in grids})
    saved = io.read_json(paths["results"], "results")
    return {"metrics": flatten_results(results), "per_category": per_category,  # recipe order
            "metadata": saved["metadata"], "paths": {k: str(v) for k, v in paths.items()}}
