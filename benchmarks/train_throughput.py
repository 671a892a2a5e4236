"""Training throughput: ``UnifiedModule`` through Lightning's ``Trainer`` vs a plain PyTorch loop.

Both loops train the same network (built twice from one seed), on the same pretokenized batches
(random image codes + shapes captions/QA, the task mixture of ``recipes/debug/unified_debug.yaml``),
with the same optimizer (``--optimizer``; AdamW, fused on CUDA, by default), LR schedule, gradient
clipping and precision, in one process.  The plain loop calls the module's own ``mixture.build`` +
``diffusion_loss``, so the ratio Lightning/plain is the framework's cost alone.  Runs alternate
the order (plain first, then Lightning first) and report medians.  Model FLOPs per step are
counted exactly (``flops.py``; the head's positions are counted as they run) and MFU is against a
matmul measured on the device.

``--loader`` adds the data-loading check: seconds per batch of the pretokenized loader and of the
raw-image loader (+ tokenizer encode), next to the compute time per step.

    python benchmarks/train_throughput.py --size tiny --device cpu --loader
    python benchmarks/train_throughput.py --size 219m --device cuda --precision bf16-mixed --compile
    python benchmarks/train_throughput.py --size compact --device cuda --precision bf16-mixed --compile \
        --no-eager --compile-mode default,reduce-overhead   # CUDA graphs vs not, the GPU leg's model
    python benchmarks/train_throughput.py --size 219m --device cuda --precision bf16-mixed --compile \
        --no-eager --attention sdpa,flex,split   # prefix attention: dense SDPA mask vs
                                                 # FlexAttention vs no mask on reordered rows
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself (a module
    # there named like a package, e.g. benchmarks/tokenizer_throughput.py, would shadow it)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import gc
import logging
import resource
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from benchmarks.common import (
    PRECISIONS, SIZES, PretokenizedSamples, TokenizerDirs, add_common_args, autocast, build_module,
    comma_list, median, params_millions, print_table, save_result, setup, to_device,
)
from benchmarks.flops import (
    TransformerShape, datasheet_peak, forward_flops, measure_matmul_peak, mfu, synchronize,
)
from benchmarks.profiling import StepProfiler
from unigen.modules.attention import check_attention_backend
from unigen.training.compilation import COMPILE_MODES, compile_mode, mark_step_begin
from unigen.training.optim import OPTIMIZERS, build_optimizer, warmup_cosine

DEFAULT_TASKS = "t2i=1,caption=0.5,vqa=1,joint=0.25,inpaint=0.25"
GRADIENT_CLIP = 1.0


def parse_tasks(text: str) -> dict[str, float]:
    """``"t2i=1,caption=0.5"`` -> ``{"t2i": 1.0, "caption": 0.5}``."""
    tasks = {}
    for item in text.split(","):
        name, sep, ratio = item.partition("=")
        if not sep:
            raise ValueError(f"--tasks entries look like name=ratio, got {item!r}")
        tasks[name.strip()] = float(ratio)
    return tasks


def mode_label(mode: str) -> str:
    """A run's ``mode`` in the results: ``compile`` for the default mode (as in earlier results)."""
    return "compile" if mode == "default" else f"compile:{mode}"


def run_label(mode: str, attention: str) -> str:
    """A run's ``mode`` in the results: the compile mode, ``+flex`` when FlexAttention runs."""
    return mode if attention == "sdpa" else f"{mode}+{attention}"


# ``full``: no prefix attention at all (``prefix_attention=False``), every query sees every key, as
# in the reference network (a plain bidirectional transformer); SDPA then runs its maskless
# flash kernels.  The network's FLOPs are the same (flops.py counts every score either way).
FULL_ATTENTION = "full"


def check_attention_choice(choice: str) -> str:
    """``choice`` if it is an attention backend or ``full``; one error naming the choices."""
    if choice != FULL_ATTENTION:
        check_attention_backend(choice)
    return choice


def run_options(label: str) -> dict[str, Any]:
    """The modules' ``compile`` and ``attention`` (and ``prefix_attention``) options for a run's
    ``mode`` label."""
    mode, _, attention = label.partition("+")
    options: dict[str, Any] = {"compile": False if mode == "eager" else mode.partition(":")[2] or True,
                               "attention": attention or "sdpa"}
    if attention == FULL_ATTENTION:
        options.update(attention="sdpa", prefix_attention=False)
    return options


class HeadPositions:
    """Counts the positions the output head runs on (the masked ones), for exact model FLOPs."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.count = 0
        self._handle = net.head.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        hidden = inputs[0]
        self.count += hidden.numel() // hidden.shape[-1]

    def close(self) -> None:
        self._handle.remove()


@dataclass
class LoopResult:
    loop: str  # "plain" | "lightning"
    mode: str  # "eager" | "compile" (default mode) | "compile:<mode>", e.g. compile:reduce-overhead;
    # "+flex" appended when the run used FlexAttention
    steps: int
    seconds: float  # wall clock over the timed steps
    cpu_seconds: float  # this process's CPU time over them: robust to other load on a shared CPU
    head_positions: int  # head rows over the timed steps
    peak_memory_mb: float | None


def _peak_memory_reset(device: torch.device) -> None:
    # the previous run's module, optimizer state and trainer die in reference cycles: free them first
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_plain(module, loader: DataLoader, device: torch.device, precision: str, steps: int,
              warmup: int, mode: str = "eager") -> LoopResult:
    """The hand-written loop: same batches, loss, optimizer, schedule and clipping as Lightning's."""
    hp, net = module.hparams, module.net
    module.to(device).train()
    opt = build_optimizer(hp.optimizer, net, hp.lr, hp.weight_decay, tuple(hp.betas),
                          hidden=net.blocks)
    sched = warmup_cosine(opt, hp.warmup_steps, warmup + steps, hp.min_lr_ratio)
    counter = HeadPositions(net)
    _peak_memory_reset(device)
    batches = iter(loader)
    start = cpu_start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start, cpu_start, counter.count = time.perf_counter(), time.process_time(), 0
        mark_step_begin(hp.compile)  # as the modules' on_train_batch_start
        batch = to_device(next(batches), device)
        gen = torch.Generator().manual_seed(step)
        with autocast(device, precision):
            tb, assignment = module.mixture.build(module.task_inputs(batch), module.space, gen)
            loss, _ = module.diffusion_loss(tb, gen, assignment)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), GRADIENT_CLIP)
        opt.step()
        sched.step()
    synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    counter.close()
    return LoopResult("plain", mode, steps, seconds, cpu_seconds, counter.count, _peak_memory_mb(device))


class _StepTimer(L.Callback):
    """Times from the end of the last warm-up step to the end of the last step (synchronised)."""

    def __init__(self, warmup: int, steps: int, device: torch.device, counter: HeadPositions) -> None:
        self.warmup, self.last, self.device, self.counter = warmup, warmup + steps - 1, device, counter
        self.start = self.cpu_start = self.seconds = self.cpu_seconds = 0.0
        self.head_positions = 0  # over the timed steps only: a profiler's steps after them do not count

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            synchronize(self.device)
            self.start, self.cpu_start, self.counter.count = time.perf_counter(), time.process_time(), 0
        elif batch_idx == self.last:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self.start
            self.cpu_seconds = time.process_time() - self.cpu_start
            self.head_positions = self.counter.count


def run_lightning(module, loader: DataLoader, device: torch.device, precision: str, steps: int,
                  warmup: int, mode: str = "eager", profiler: StepProfiler | None = None) -> LoopResult:
    """``Trainer.fit`` with everything that is not training off (no logger, checkpoints, progress
    bar or validation): the framework's per-step cost, not its extras.  A ``profiler`` runs its
    steps after the timed ones."""
    counter = HeadPositions(module.net)
    timer = _StepTimer(warmup, steps, device, counter)
    extra = profiler.count if profiler else 0
    trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision,
                        max_steps=warmup + steps + extra, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0,
                        gradient_clip_val=GRADIENT_CLIP, callbacks=[timer, *([profiler] if profiler else [])])
    _peak_memory_reset(device)
    trainer.fit(module, train_dataloaders=loader)
    counter.close()
    return LoopResult("lightning", mode, steps, timer.seconds, timer.cpu_seconds, timer.head_positions,
                      _peak_memory_mb(device))


RUNNERS = {"plain": run_plain, "lightning": run_lightning}


def summarize(results: list[LoopResult], shape: TransformerShape, batch: int, peak: float,
              datasheet: float | None) -> list[dict[str, Any]]:
    """One row per (mode, loop): median step time, tokens/s, model TFLOP/s, MFU; ``over_first_mode``
    is the throughput against the same loop in the first mode (eager, or the first compile mode)."""
    rows = []
    for mode in dict.fromkeys(r.mode for r in results):
        for loop in ("plain", "lightning"):
            runs = [r for r in results if r.mode == mode and r.loop == loop]
            step_s = median([r.seconds / r.steps for r in runs])
            cpu_step_s = median([r.cpu_seconds / r.steps for r in runs])
            flops_per_step = median([3 * forward_flops(shape, batch, r.head_positions / r.steps) for r in runs])
            rows.append({"mode": mode, "loop": loop, "runs": len(runs), "step_ms": 1e3 * step_s,
                         "cpu_ms_per_step": 1e3 * cpu_step_s,
                         "tokens_per_s": batch * shape.seq_len / step_s,
                         "model_tflops_per_step": flops_per_step / 1e12,
                         "model_tflops_per_s": flops_per_step / step_s / 1e12,
                         "mfu_vs_measured_matmul": mfu(flops_per_step, step_s, peak),
                         "mfu_vs_datasheet_bf16": mfu(flops_per_step, step_s, datasheet) if datasheet else None,
                         "peak_memory_mb": max((r.peak_memory_mb or 0) for r in runs) or None})
        plain, lightning = rows[-2], rows[-1]
        lightning["lightning_over_plain"] = lightning["tokens_per_s"] / plain["tokens_per_s"]
        # throughput ratio from CPU time: what a loaded CPU's wall clock blurs (CPU runs only)
        lightning["lightning_over_plain_cpu_time"] = plain["cpu_ms_per_step"] / lightning["cpu_ms_per_step"]
    for row in rows:
        row["over_first_mode"] = row["tokens_per_s"] / next(
            r["tokens_per_s"] for r in rows if r["loop"] == row["loop"])
    return rows


def loader_check(dataset: PretokenizedSamples, dirs: TokenizerDirs, batch: int, image_size: int,
                 num_workers: int, device: torch.device, compute_s: float, num_batches: int = 8
                 ) -> dict[str, Any]:
    """Seconds per batch of the pretokenized loader and of the raw-image loader (rendering) plus the
    image tokenizer's encode, against the compute time of one training step."""
    from unigen.data.shapes import ShapesDataset
    from unigen.tokenizers.base import ImageTokenizer

    def per_batch(loader: DataLoader, work=lambda b: b) -> float:
        it = iter(loader)
        work(to_device(next(it), device))  # the first batch pays worker start-up
        synchronize(device)
        start = time.perf_counter()
        for _ in range(num_batches):
            work(to_device(next(it), device))
        synchronize(device)
        return (time.perf_counter() - start) / num_batches

    num_batches = max(1, min(num_batches, len(dataset) // batch - 1))
    kwargs = dict(batch_size=batch, num_workers=num_workers, pin_memory=device.type == "cuda")
    codes_s = per_batch(DataLoader(dataset, **kwargs))
    images = ShapesDataset("train", batch * (num_batches + 1), image_size, seed=0)
    images_s = per_batch(DataLoader(images, **kwargs))
    tokenizer = ImageTokenizer.from_pretrained(dirs.image_tokenizer).to(device).eval()
    with torch.inference_mode():
        encode_s = per_batch(DataLoader(images, **kwargs), lambda b: tokenizer.encode(b["image"])) - images_s
    return {"num_workers": num_workers, "compute_s_per_step": compute_s,
            "pretokenized_loader_s_per_batch": codes_s,
            "pretokenized_loader_over_compute": codes_s / compute_s,
            "image_loader_s_per_batch": images_s, "image_encode_s_per_batch": encode_s,
            "image_path_over_compute": (images_s + encode_s) / compute_s,
            "note": "num_workers=0 loads synchronously: a ratio << 1 keeps the model busy even so; "
                    "the image tokenizer here is a small random FSQ model (a trained one costs more)"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--image-size", type=int, default=None, help="default: the size preset's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the size preset's")
    parser.add_argument("--heads", type=int, default=None,
                        help="attention heads (default: the size preset's); the same FLOPs, another "
                             "head width for the attention kernels (e.g. 219m: 16 heads of 64, 8 of 128)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per loop, alternating which goes first")
    parser.add_argument("--compile", action="store_true", help="also run with torch.compile (slow to start on CPU)")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager runs (with --compile)")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode(s) for --compile, comma-separated, each run in turn: "
                             f"{', '.join(COMPILE_MODES)} (reduce-overhead: CUDA graphs)")
    parser.add_argument("--attention", default="sdpa",
                        help="attention backends to run, comma-separated: sdpa (dense prefix mask), "
                             "flex (FlexAttention, trains on CUDA only), split (prefix moved first, "
                             "no mask), full (no prefix attention: every query sees every key, "
                             "as the issue's reference network)")
    parser.add_argument("--no-qk-norm", action="store_true",
                        help="build the network without qk-norm (RMSNorm on queries and keys), as the "
                             "issue's plain reference network: the elementwise work it costs")
    parser.add_argument("--optimizer", default="adamw", choices=sorted(OPTIMIZERS.names()),
                        help="both loops' optimizer: adamw (fused on CUDA) or muon (Newton-Schulz "
                             "iterations on the blocks' matrices: the step cost they add)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help="task mixture, name=ratio,...")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--loader", action="store_true", help="add the data-loading check")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="profile this many Lightning steps after the last run's timed ones: "
                             "operator tables and ms per step by kind of work (matmul, attention, "
                             "loss, optimizer, ...) go into the JSON")
    args = parser.parse_args(argv)
    device = setup(args)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")

    size = SIZES[args.size]
    if args.heads is not None:
        if args.heads < 1 or size.dim % args.heads:
            parser.error(f"--heads must divide the width {size.dim}, got {args.heads}")
        size = replace(size, heads=args.heads)
    image_size = args.image_size or size.image_size
    batch = args.batch_size or size.batch_size
    compile_modes = comma_list(args.compile_mode)
    for m in compile_modes:
        compile_mode(m)  # one error naming the choices
    attentions = comma_list(args.attention)
    for a in attentions:
        check_attention_choice(a)  # one error naming the choices
    compiled = ([] if args.no_eager else ["eager"]) + ([mode_label(m) for m in compile_modes]
                                                       if args.compile else [])
    if not compiled:
        raise SystemExit("--no-eager needs --compile: nothing to run")
    modes = [run_label(m, a) for m in compiled for a in attentions]
    tasks = parse_tasks(args.tasks)

    dirs = TokenizerDirs(size.fsq_levels)
    probe = build_module("masked", dirs, size, image_size, args.seed, tasks=tasks,
                         qk_norm=not args.no_qk_norm, optimizer=args.optimizer)
    shape = TransformerShape.of(probe.net)
    grid, codebook = probe.space.sequence.grid, probe.space.vocab.image_size
    dataset = PretokenizedSamples(batch * (args.warmup + args.steps + args.profile_steps + 1), grid,
                                  codebook, args.seed)
    peak = measure_matmul_peak(device, PRECISIONS[args.precision] or torch.float32)
    datasheet = datasheet_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    print(f"size {args.size}: {params_millions(probe.net)}M parameters, sequence {shape.seq_len} "
          f"({grid[0]}x{grid[1]} image tokens), batch {batch}, {args.precision}, {device}; "
          f"measured matmul peak {peak / 1e12:.3f} TFLOP/s")
    del probe

    results: list[LoopResult] = []
    work = tempfile.TemporaryDirectory(prefix="unigen-profile-") if args.profile_steps > 0 else None
    profiler = (StepProfiler(str(Path(work.name) / "profile.txt"), args.warmup + args.steps,
                             args.profile_steps) if work else None)
    for mode in modes:
        for rep in range(args.repeats):
            for loop in (("plain", "lightning") if rep % 2 == 0 else ("lightning", "plain")):
                module = build_module("masked", dirs, size, image_size, args.seed, tasks=tasks,
                                      qk_norm=not args.no_qk_norm, optimizer=args.optimizer,
                                      **run_options(mode))
                loader = DataLoader(dataset, batch_size=batch, num_workers=args.num_workers,
                                    drop_last=True, pin_memory=device.type == "cuda")
                last = mode == modes[-1] and rep == args.repeats - 1 and loop == "lightning"
                extra = {"profiler": profiler} if last and profiler else {}
                results.append(RUNNERS[loop](module, loader, device, args.precision, args.steps,
                                             args.warmup, mode, **extra))
                del module, loader
    rows = summarize(results, shape, batch, peak, datasheet)
    print_table(rows, ["mode", "loop", "step_ms", "cpu_ms_per_step", "tokens_per_s", "model_tflops_per_s",
                       "mfu_vs_measured_matmul", "peak_memory_mb", "over_first_mode", "lightning_over_plain",
                       "lightning_over_plain_cpu_time"])

    payload: dict[str, Any] = {
        "settings": {"size": args.size, "model": asdict(size), "image_size": image_size, "batch_size": batch,
                     "sequence_length": shape.seq_len, "precision": args.precision, "steps": args.steps,
                     "warmup": args.warmup, "repeats": args.repeats, "tasks": tasks,
                     "attention": attentions, "qk_norm": not args.no_qk_norm,
                     "optimizer": args.optimizer,
                     "parameters_millions": round((shape.block_params + shape.head_params) / 1e6, 3),
                     "gradient_clip": GRADIENT_CLIP, "num_workers": args.num_workers},
        "measured_matmul_peak_tflops": peak / 1e12,
        "datasheet_bf16_peak_tflops": datasheet / 1e12 if datasheet else None,
        "summary": rows, "runs": [asdict(r) for r in results]}
    if args.loader:
        compute_s = next(r["step_ms"] for r in rows if r["loop"] == "plain") / 1e3
        payload["loader"] = loader_check(dataset, dirs, batch, image_size, args.num_workers, device,
                                         compute_s)
        print({k: v for k, v in payload["loader"].items() if k != "note"})
    if profiler is not None and profiler.summary is not None:
        payload["profile"] = {"mode": modes[-1], "loop": "lightning", **profiler.summary,
                              "tables": Path(profiler.path).read_text()}
        print("ms per step by kind:", profiler.summary.get("ms_per_step_by_kind"))
    if work:
        work.cleanup()
    if device.type == "cpu":
        payload["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save_result("train_throughput", device, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
