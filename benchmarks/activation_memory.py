"""Activation checkpointing: memory kept for backward and step time, with it and without.

For each case (model size x batch) the network of ``UnifiedModule`` is built twice from one seed,
once with ``activation_checkpointing: true``, and both train on the same pretokenized batch (random
image codes + shapes captions/QA, the task mixture of ``train_throughput.py``) with the same task,
mask and dropout draws.  Per side it measures, for one training step:

- ``saved_mb``: the bytes autograd keeps for backward during the forward pass, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` (each storage once, parameters excluded).  The
  inputs a checkpointed block keeps for its recomputation are saved through autograd too, so they
  are counted: this is what the activations cost, checkpoints included;
- ``cuda_peak_mb`` (CUDA only): ``torch.cuda.max_memory_allocated`` over the step, above what was
  allocated before it (weights, gradients and optimizer state are allocated by then);
- ``step_ms``: median wall time of forward + backward + AdamW step (``cpu_ms_per_step`` too: a
  shared CPU's wall clock counts other processes' load); runs alternate which side goes first;
- ``block_calls_per_step``: transformer block forwards per step (2 x depth when checkpointing:
  backward recomputes every block), and the largest gradient difference between the two sides.

Ratios (checkpointing / not) are printed per case; nothing asserts a speed.

    python benchmarks/activation_memory.py                          # CPU defaults, about a minute
    python benchmarks/activation_memory.py --device cuda --precision bf16-mixed \\
        --cases 34m:64,219m:32,1b:16 --steps 5
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time
from dataclasses import asdict, replace
from typing import Any, Iterable

import torch
from torch import Tensor

from benchmarks.common import (
    PRECISIONS, SIZES, PretokenizedSamples, TokenizerDirs, add_device_args, autocast, build_module,
    median, params_millions, print_table, save_result, setup, to_device,
)
from benchmarks.flops import synchronize
from benchmarks.train_throughput import DEFAULT_TASKS, parse_tasks
from unigen.training.optim import build_adamw

DEFAULT_CASES = "tiny:16,small:8,small:32"
MODES = ("off", "on")  # activation_checkpointing


class SavedActivations:
    """Bytes autograd saves for backward inside the ``with`` block: every storage once (views and
    repeated saves of one tensor cost its memory once), the ``exclude`` tensors' storages (the
    parameters: held anyway) left out."""

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._excluded:
            self._storages[ptr] = storage.nbytes()
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    def __enter__(self) -> "SavedActivations":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def _unpack(tensor: Tensor) -> Tensor:
    return tensor


class BlockCalls:
    """Counts the calls of a network's transformer blocks, recomputations included.  A pre-hook:
    a recomputation stops as soon as it has remade what backward needs (``torch.utils.checkpoint``'s
    early stop), before the block returns, so a forward hook would miss it."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.count = 0
        self._handles = [b.register_forward_pre_hook(self._hook) for b in net.blocks]

    def _hook(self, module, inputs) -> None:
        self.count += 1

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def parse_cases(text: str) -> list[tuple[str, int]]:
    """``"tiny:16,small:8"`` -> ``[("tiny", 16), ("small", 8)]`` (a size preset and a batch)."""
    cases = []
    for item in text.split(","):
        name, sep, batch = item.strip().partition(":")
        if name not in SIZES or not sep or not batch.isdigit() or int(batch) < 1:
            raise SystemExit(f"--cases: {item!r} is not SIZE:BATCH with SIZE one of {sorted(SIZES)}")
        cases.append((name, int(batch)))
    return cases


def loss_of(module, batch: dict[str, Any], step: int, device: torch.device, precision: str) -> Tensor:
    """One training step's loss, as ``UnifiedModule.training_step`` computes it; the task, mask
    and dropout draws depend on ``step`` only, so both sides make the same ones."""
    gen = torch.Generator().manual_seed(step)
    torch.manual_seed(step)  # dropout's draws (none at the presets' dropout 0)
    with autocast(device, precision):
        tb, assignment = module.mixture.build(module.task_inputs(batch), module.space, gen)
        loss, _ = module.diffusion_loss(tb, gen, assignment)
    return loss


def measure_step(module, batch: dict[str, Any], device: torch.device, precision: str
                 ) -> dict[str, Any]:
    """One step's saved bytes, CUDA peak and block calls; returns the gradients too."""
    net = module.net
    net.zero_grad(set_to_none=True)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    calls = BlockCalls(net)
    with SavedActivations(net.parameters()) as saved:
        loss = loss_of(module, batch, 0, device, precision)
    loss.backward()
    synchronize(device)
    calls.close()
    out = {"loss": loss.item(), "saved_mb": saved.bytes / 2**20, "block_calls_per_step": calls.count,
           "cuda_peak_mb": ((torch.cuda.max_memory_allocated(device) - before) / 2**20
                            if device.type == "cuda" else None)}
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    return {**out, "grads": grads}


def time_steps(module, batch: dict[str, Any], device: torch.device, precision: str, steps: int,
               warmup: int) -> tuple[float, float]:
    """Median wall and CPU seconds of a full training step (forward, backward, AdamW)."""
    opt = build_adamw(module.net, 1e-4, 0.0, (0.9, 0.95))
    wall, cpu = [], []
    for step in range(warmup + steps):
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = loss_of(module, batch, step, device, precision)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        synchronize(device)
        if step >= warmup:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    module.net.zero_grad(set_to_none=True)
    del opt
    return median(wall), median(cpu)


def run_case(name: str, batch_size: int, dirs: TokenizerDirs, args: argparse.Namespace,
             device: torch.device, tasks: dict[str, float]) -> list[dict[str, Any]]:
    size = replace(SIZES[name], batch_size=batch_size)
    if args.depth is not None:
        size = replace(size, depth=args.depth)
    modules = {mode: build_module("masked", dirs, size, size.image_size, args.seed, tasks=tasks,
                                  attention=args.attention,
                                  activation_checkpointing=mode == "on").to(device)
               for mode in MODES}
    net = modules["off"].net
    grid, codebook = modules["off"].space.sequence.grid, modules["off"].space.vocab.image_size
    batch = to_device(_collate(PretokenizedSamples(batch_size, grid, codebook, args.seed)), device)
    rows = {mode: {"size": name, "dim": size.dim, "depth": size.depth, "batch": batch_size,
                   "seq_len": modules[mode].space.sequence.length, "params_m": params_millions(net),
                   "activation_checkpointing": mode} for mode in MODES}
    measured = {mode: measure_step(modules[mode], batch, device, args.precision) for mode in MODES}
    max_diff = max((measured["on"]["grads"][k] - g).abs().max().item()
                   for k, g in measured["off"]["grads"].items())
    times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for rep in range(args.repeats):
        for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
            times[mode].append(time_steps(modules[mode], batch, device, args.precision, args.steps,
                                          args.warmup))
    for mode in MODES:
        m = measured[mode]
        rows[mode].update(loss=m["loss"], saved_mb=m["saved_mb"], cuda_peak_mb=m["cuda_peak_mb"],
                          block_calls_per_step=m["block_calls_per_step"],
                          step_ms=1e3 * median([w for w, _ in times[mode]]),
                          cpu_ms_per_step=1e3 * median([c for _, c in times[mode]]))
    off, on = rows["off"], rows["on"]
    on["saved_on_over_off"] = on["saved_mb"] / off["saved_mb"]
    on["cuda_peak_on_over_off"] = (on["cuda_peak_mb"] / off["cuda_peak_mb"]
                                   if device.type == "cuda" else None)
    on["step_time_on_over_off"] = on["step_ms"] / off["step_ms"]
    on["cpu_time_on_over_off"] = on["cpu_ms_per_step"] / off["cpu_ms_per_step"]
    on["max_grad_abs_diff"] = max_diff
    on["same_loss"] = on["loss"] == off["loss"]
    del modules
    return [off, on]


def _collate(dataset: PretokenizedSamples) -> dict[str, Any]:
    from torch.utils.data import default_collate

    return default_collate([dataset[i] for i in range(len(dataset))])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_args(parser)
    parser.add_argument("--precision", default="32-true", choices=sorted(PRECISIONS),
                        help="32-true or bf16-mixed (autocast, fp32 weights)")
    parser.add_argument("--cases", default=DEFAULT_CASES,
                        help=f"SIZE:BATCH,... with SIZE one of {sorted(SIZES)} (at the size's image size)")
    parser.add_argument("--depth", type=int, default=None, help="override every case's depth")
    parser.add_argument("--attention", default="sdpa", help="sdpa, flex or split")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help="task mixture, name=ratio,...")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating which goes first")
    args = parser.parse_args(argv)
    device = setup(args)
    cases = parse_cases(args.cases)
    tasks = parse_tasks(args.tasks)

    rows: list[dict[str, Any]] = []
    dirs: dict[tuple[int, ...], TokenizerDirs] = {}
    for name, batch_size in cases:
        levels = SIZES[name].fsq_levels
        if levels not in dirs:
            dirs[levels] = TokenizerDirs(levels)
        rows += run_case(name, batch_size, dirs[levels], args, device, tasks)
        print(f"{name} batch {batch_size}: done", flush=True)
    print_table(rows, ["size", "depth", "batch", "seq_len", "activation_checkpointing", "saved_mb",
                       "cuda_peak_mb", "step_ms", "cpu_ms_per_step", "block_calls_per_step"])
    ratios = [r for r in rows if r["activation_checkpointing"] == "on"]
    print("\ncheckpointing / not, measured in this run:")
    print_table(ratios, ["size", "depth", "batch", "saved_on_over_off", "cuda_peak_on_over_off",
                         "step_time_on_over_off", "cpu_time_on_over_off", "max_grad_abs_diff", "same_loss"])
    payload = {"settings": {"cases": [{"size": n, "batch": b, "model": asdict(SIZES[n])} for n, b in cases],
                            "depth_override": args.depth, "precision": args.precision,
                            "attention": args.attention, "tasks": tasks, "steps": args.steps,
                            "warmup": args.warmup, "repeats": args.repeats},
               "note": "saved_mb: bytes autograd keeps for backward (saved_tensors_hooks, each storage "
                       "once, parameters excluded; a checkpoint's kept inputs included); "
                       "cuda_peak_mb: max_memory_allocated over one step above the memory allocated "
                       "before it",
               "results": rows}
    save_result("activation_memory", device, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
