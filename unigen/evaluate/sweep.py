"""Sweeps: a grid of settings, one evaluation per point, metric-vs-parameter curves.
:func:`sweep_pipeline` runs the grid (e.g. guidance scale x steps, as in the MaskGIT / Show-o
trade-off plots) and plots each metric against each numeric parameter. A point generates only
the tasks whose identity (settings, data, seed, model, metric networks: everything that decides
their outputs) no earlier point had; it takes the others' records, metric state and sample images
from the earliest point that computed them.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from unigen.evaluate.loop import evaluate_pipeline
from unigen.evaluate.persistence import POINTS_DIR, remove_run_outputs
from unigen.evaluate.recipe import (_split_assignment, metric_entries, parse_config,
                                    setting_paths, with_setting)
from unigen.evaluate.record_metrics import result_name
from unigen.evaluate.segment_tasks import eval_task_names
from unigen.metrics import METRICS, Sweep, write_report


def parse_sweep(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["guidance_scale=1,2,3", "t2i.num_steps=4,8"]`` -> ``{key: [values]}`` (YAML scalars)."""
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, values = _split_assignment(item, "--sweep")
        parsed = [yaml.safe_load(v) for v in values.split(",") if v.strip()]
        if not parsed:
            raise ValueError(f"--sweep {key} lists no values")
        if key in axes:
            raise ValueError(f"--sweep {key} is given twice")
        axes[key] = parsed
    return axes


def _is_headline(name: str) -> bool:
    """Metrics worth a curve: not per-category entries, spreads or secondary aggregates (an
    ``/overall`` aggregate, a per-task ``<metric>/<task>`` value or one of the values a metric
    names in ``headline_values``, ``precision_recall/recall``, is a headline)."""
    parts = name.split("/")
    if parts[0].endswith("_std") or name.endswith("_std") or "category" in parts[1:]:
        return False
    own = getattr(METRICS.get(parts[0]), "headline_values", ()) if parts[0] in METRICS else ()
    qualifiers = {"overall", *eval_task_names(), *own}
    return len([p for p in parts[1:] if p not in qualifiers]) == 0


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def _point_label(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def sweep_curves(axes: Mapping[str, Sequence[Any]], points: Sequence[Mapping[str, Any]],
                 metrics: Sequence[Mapping[str, float]],
                 affects: Callable[[str, str], bool] = lambda axis, metric: True) -> list[Sweep]:
    """One :class:`unigen.metrics.Sweep` per (headline metric, numeric axis that ``affects`` it):
    the metric against that axis, one line per combination of the other axes' values (e.g. one
    per sampler)."""
    numeric = [k for k, vs in axes.items()
               if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs)]
    names = [m for m in metrics[0] if _is_headline(m)] if metrics else []
    sweeps = []
    for axis in numeric:
        xs = sorted(set(axes[axis]))
        for metric in (m for m in names if affects(axis, m)):
            series: dict[str, list[float]] = {}
            for point, values in zip(points, metrics):
                # axes that cannot change this metric would only draw identical lines
                rest = {k: v for k, v in point.items() if k != axis and affects(k, metric)}
                label = _point_label(rest) or metric
                series.setdefault(label, [float("nan")] * len(xs))[xs.index(point[axis])] = \
                    values[metric]
            sweeps.append(Sweep(_safe(f"{metric}_vs_{axis}"), axis, metric, xs, series))
    return sweeps


def _affects(config: Mapping[str, Any]) -> Callable[[str, str], bool]:
    """Whether sweep axis ``key`` can change metric ``flat_name``: a setting of one task only
    changes that task's metrics."""
    cfg = parse_config(config)
    task_of = {result_name(name, task): task for task, settings in cfg.tasks.items()
               for name, _ in metric_entries(settings)}

    def owner(flat_name: str) -> str | None:
        # a flat name is a result name or extends one: "compositional_accuracy/overall"
        return next((task for key, task in task_of.items()
                     if flat_name == key or flat_name.startswith(f"{key}/")), None)

    def affects(key: str, flat_name: str) -> bool:
        paths = setting_paths(config, key)
        if not all(p[0] == "tasks" and len(p) > 1 for p in paths):
            return True
        return owner(flat_name) in {p[1] for p in paths}

    return affects


def check_sweep(config: Mapping[str, Any], axes: Mapping[str, Sequence[Any]]) -> None:
    """Fail before anything runs if an axis is empty, repeats a value or makes a bad recipe."""
    if not axes:
        raise ValueError("a sweep needs at least one axis (--sweep KEY=V1,V2 or a sweep: block)")
    base = {k: v for k, v in config.items() if k != "sweep"}
    seen: dict[tuple, str] = {}
    for key in axes:  # t2i.num_steps and tasks.t2i.num_steps are one setting
        for path in map(tuple, setting_paths(base, key)):
            if path in seen:
                raise ValueError(f"sweep axes {seen[path]!r} and {key!r} set the same recipe key "
                                 f"{'.'.join(map(str, path))!r}; sweep it once")
            seen[path] = key
    for key, values in axes.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"sweep axis {key!r} must list values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"sweep axis {key!r} repeats a value: {list(values)}")
        for value in values:
            parse_config(with_setting(base, key, value))


def _remove_stale_points(points_dir: Path, wanted: set[str]) -> None:
    """A new sweep replaces an earlier one: the point folders of a grid that is not this one lose
    the files eval wrote there (and go when nothing else is left), so ``points/`` holds this
    sweep's points only; files eval did not write are kept."""
    if not points_dir.is_dir():
        return
    for folder in sorted(points_dir.iterdir()):
        if folder.is_dir() and folder.name not in wanted:
            remove_run_outputs(folder)
            if not any(folder.iterdir()):
                folder.rmdir()


def sweep_pipeline(pipe, config: Mapping[str, Any], out_dir: str | os.PathLike,
                   axes: Mapping[str, Sequence[Any]] | None = None, progress: bool = True,
                   resume: bool = False, metadata: Mapping[str, Any] | None = None,
                   reuse: bool = True) -> dict[str, Any]:
    """Evaluate every point of the grid ``axes`` (default: the recipe's ``sweep:`` block; keys as in
    :func:`setting_paths`) into ``out_dir/points/<point>``; ``out_dir`` gets the summary:
    results.json, report.md and one ``sweep_<metric>_vs_<parameter>.png`` per numeric axis.

    A task that an earlier point computed exactly as this point would (every setting, data, seed,
    model and metric network that decides its outputs equal: its task identity, see
    :func:`unigen.evaluate.persistence.task_identities`) is not generated again
    (``reuse=False``: every point generates every task): the point takes that task's records,
    metric state and sample images from the earliest such point, so its folder is complete and
    resumable, and its results name the point in ``metadata.reused``; the summary's ``points``
    entries list the reused tasks too. A sweep of ``t2i.*`` keys thus generates caption and VQA
    once."""
    base = dict(config)
    recipe_axes = base.pop("sweep", None) or {}
    axes = dict(recipe_axes if axes is None else axes)
    check_sweep(base, axes)
    out = Path(out_dir)
    grid = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    labels = [_safe(f"{number:03d}_" + "_".join(f"{k}-{v}" for k, v in point.items()))
              for number, point in enumerate(grid)]
    if not resume:
        _remove_stale_points(out / POINTS_DIR, set(labels))
    points, results, runs = [], [], []
    finished: dict[str, Path] = {}  # earlier points of this sweep: "points/<label>" -> folder
    for point, label in zip(grid, labels):
        point_config = base
        for key, value in point.items():
            point_config = with_setting(point_config, key, value)
        name = f"{POINTS_DIR}/{label}"
        run = evaluate_pipeline(pipe, point_config, out / POINTS_DIR / label, progress, resume,
                                metadata, reuse_from=dict(finished) if reuse else {})
        finished[name] = out / POINTS_DIR / label
        points.append(point)
        results.append(run["metrics"])
        entry = {"point": point, "dir": name}
        if run["metadata"].get("reused"):
            entry["reused"] = dict(run["metadata"]["reused"])
        runs.append(entry)
    sweeps = sweep_curves(axes, points, results, _affects(base))
    summary = {f"[{_point_label(p)}] {name}": value for p, r in zip(points, results)
               for name, value in r.items() if _is_headline(name)}
    meta = {**(metadata or {}), "sweep_axes": {k: list(v) for k, v in axes.items()},
            "points": runs}
    paths = write_report(out, summary, meta, sweeps=sweeps)
    return {"points": runs, "metrics": results, "sweeps": sweeps,
            "paths": {k: str(v) for k, v in paths.items()}}
