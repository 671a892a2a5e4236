"""Where a training step's time goes: ``torch.profiler`` over a few Lightning steps, as operator
tables and as time per kind of work (matmuls, attention, fused elementwise, loss, optimizer, ...).

The per-kind split is what an MFU gap needs (issue #8: 0.41 at 219M against a 0.55 target): MFU
counts matmul and attention FLOPs, so time in the other kinds is what keeps it down.  On a GPU it
sums the kernels' device time; on a CPU the operators' own time.  Used by
``benchmarks/shapes_quality.py --profile-steps`` and ``benchmarks/train_throughput.py
--profile-steps``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

# first match wins: attention kernels also contain "gemm"-like names, so they come first
KINDS: tuple[tuple[str, str], ...] = (
    ("attention", r"attention|flash|fmha|sdpa"),
    ("matmul", r"gemm|matmul|aten::mm$|aten::addmm|aten::bmm|aten::linear|cutlass|xmma|nvjet|cublas"),
    ("loss_softmax", r"softmax|cross_entropy|nll_loss"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("fused_triton", r"triton"),
    ("copy_fill", r"memcpy|memset|copy|fill|aten::cat|index|gather|scatter"),
)


def kind_of(name: str) -> str:
    """The kind of work an operator or kernel name does (``other`` when none of :data:`KINDS`)."""
    low = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, low)), "other")


# ranges that enclose other work, not work of their own: ``Optimizer.step#AdamW.step`` spans the
# whole Lightning step (forward and backward run in its closure), and on the GPU timeline such a
# range is a row with the span as its "device time" (653 % of the kernels' time on an H200)
WRAPPERS = ("autograd::", "torch::autograd", "ProfilerStep", "Optimizer.", "## ")


def is_wrapper(row: Any) -> bool:
    """Whether a profile row is a range around other work (a user annotation or a wrapper)."""
    return bool(getattr(row, "is_user_annotation", False)) or row.key.startswith(WRAPPERS)


def time_by_kind(averages: Any, on_device: bool) -> dict[str, float]:
    """Milliseconds of self time per kind over the profiled steps.  ``averages``:
    ``profile.key_averages()``.  On a device, the rows that are kernels (each kernel counted once;
    the operators that launched them carry the same time again and are skipped); on a CPU, every
    operator's own time.  Ranges around other work (:func:`is_wrapper`) are left out either way."""
    totals: dict[str, float] = {}
    for row in averages:
        if is_wrapper(row):
            continue
        if on_device:
            if row.device_type != torch.autograd.DeviceType.CUDA:
                continue
            micros = row.self_device_time_total
        else:
            micros = row.self_cpu_time_total
        if micros > 0:
            kind = kind_of(row.key)
            totals[kind] = totals.get(kind, 0.0) + micros / 1e3
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def host_ops(averages: Any, top: int = 8) -> dict[str, dict[str, float]]:
    """The ``top`` operators by the host's own time (ms in all, calls, ms per call), wrappers left
    out.  A host-bound GPU step shows here: small tensor ops that take milliseconds a call."""
    rows = [r for r in averages if not is_wrapper(r) and r.self_cpu_time_total > 0]
    rows.sort(key=lambda r: -r.self_cpu_time_total)
    return {r.key: {"ms": round(r.self_cpu_time_total / 1e3, 3), "calls": int(r.count),
                    "ms_per_call": round(r.self_cpu_time_total / 1e3 / max(r.count, 1), 4)}
            for r in rows[:top]}


class StepProfiler(L.Callback):
    """``torch.profiler`` over training steps ``first + 1 .. first + count`` (after any timed
    steps, so the profiler's overhead does not enter a measured step time); writes the operators'
    totals, by device time and by host time, as text tables to ``path``, and the time per kind of
    work (ms per step, :func:`time_by_kind`), the profiled wall time per step, the fraction of it
    the kinds fill (``busy_fraction``: on a GPU, well under 1 means the device waits for the
    host) and the top host operators (:func:`host_ops`) to ``path`` + ``.json`` (also kept as
    ``summary``)."""

    def __init__(self, path: str, first: int, count: int, rows: int = 30) -> None:
        self.path, self.first, self.count, self.rows = path, first, count, rows
        self._prof: Any = None
        self._start = 0.0
        self.summary: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.first and self._prof is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                                   if pl_module.device.type == "cuda" else [])
            self._prof = profile(activities=activities)
            self._prof.__enter__()
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._prof is not None and trainer.global_step >= self.first + self.count:
            self._finish(pl_module, trainer.global_step - self.first)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._prof is not None:
            self._finish(pl_module, trainer.global_step - self.first)

    def _finish(self, pl_module, steps: int) -> None:
        on_device = pl_module.device.type == "cuda"
        if on_device:
            torch.cuda.synchronize(pl_module.device)
        wall_ms = (time.perf_counter() - self._start) * 1e3
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        averages = prof.key_averages()
        device_key = "device_time_total" if on_device else "cpu_time_total"
        self_key = "self_device_time_total" if on_device else "self_cpu_time_total"
        text = (f"{self.count} training steps after step {self.first}\n\n"
                f"by {device_key}:\n{averages.table(sort_by=device_key, row_limit=self.rows)}\n"
                + (f"by {self_key}:\n{averages.table(sort_by=self_key, row_limit=self.rows)}\n"
                   if on_device else "")
                + f"by self_cpu_time_total:\n"
                f"{averages.table(sort_by='self_cpu_time_total', row_limit=self.rows)}\n")
        try:
            steps = max(steps, 1)
            per_step = {k: round(v / steps, 3) for k, v in time_by_kind(averages, on_device).items()}
            self.summary = {"steps": steps, "clock": "device" if on_device else "cpu",
                            "ms_per_step_by_kind": per_step,
                            # profiled wall time (the profiler's overhead included): against the
                            # kinds' sum it says how much of a step the device is busy
                            "wall_ms_per_step": round(wall_ms / steps, 3),
                            "busy_fraction": round(sum(per_step.values()) * steps / wall_ms, 4),
                            "host_ops": host_ops(averages), "host_threads": torch.get_num_threads()}
        except Exception as err:  # the tables above are worth keeping whatever this meets
            self.summary = {"steps": steps, "error": repr(err)}
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        Path(f"{path}.json").write_text(json.dumps(self.summary, indent=1))


__all__ = ["KINDS", "StepProfiler", "WRAPPERS", "host_ops", "is_wrapper", "kind_of", "time_by_kind"]
