"""Run every benchmark at CPU-tiny sizes (``make bench``); JSON lands in benchmarks/results/.

Each benchmark runs as its own process (``python -m benchmarks.<name>``) so memory and thread
settings do not leak between them.  ``--quick`` shrinks everything to a smoke test (the slow tests
use it) and writes to runs/bench_quick/ unless told otherwise; ``--only`` picks benchmarks.
Defaults to one CPU thread: on a shared 2-core machine two threads spin against other processes
and the numbers scatter.

    python benchmarks/run_all.py
    python benchmarks/run_all.py --quick              # smoke test, JSON in runs/bench_quick/
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK_RESULTS = ROOT / "runs" / "bench_quick"  # git-ignored: --quick's smoke-test numbers

# the CPU-tiny settings: a few minutes in total on 2 cores
BENCHMARKS: dict[str, list[str]] = {
    "train_throughput": ["--size", "tiny", "--steps", "20", "--repeats", "2", "--compile", "--loader"],
    "sampling": ["--size", "tiny", "--batch-size", "64", "--steps", "16", "--repeats", "1", "--warmup", "1"],
    "scaling": ["--sizes", "tiny,small", "--resolutions", "32,64,128", "--batch-size", "4", "--steps", "3"],
    "tokenizer_throughput": ["--time-budget", "60"],
    "sampler_overhead": [],
    "text_decoding": [],
    "host_threads": [],
    "head_alignment": ["--shapes", "1001x64x1543,2001x128x15439", "--steps", "3"],
    "modality_encode": [],
    # random weights here: the calls and cache timings hold, the accuracies mean nothing
    "sampler_curves": ["--num-samples", "32", "--thresholds", "0.5,0.9", "--batch-size", "32",
                       "--repeats", "2"],
    "activation_memory": [],  # its defaults: tiny and small, about half a minute
}
QUICK: dict[str, list[str]] = {
    "train_throughput": ["--size", "tiny", "--steps", "2", "--warmup", "1", "--repeats", "1",
                         "--batch-size", "4", "--loader"],
    "sampling": ["--size", "tiny", "--batch-size", "4", "--steps", "2", "--repeats", "1", "--warmup", "0",
                 "--samplers", "maskgit,ancestral_cached"],
    "scaling": ["--sizes", "tiny", "--resolutions", "32,64", "--batch-size", "2", "--steps", "1"],
    "tokenizer_throughput": ["--steps", "2", "--only", "fsq", "--num-val", "16"],
    "sampler_overhead": ["--shapes", "4x8x1000", "--steps", "2", "--repeats", "1"],
    "text_decoding": ["--batch-size", "4", "--repeats", "1", "--caption-steps", "2", "--vqa-steps", "1"],
    "host_threads": ["--size", "tiny", "--steps", "2", "--warmup", "0", "--workers", "1"],
    "head_alignment": ["--shapes", "101x16x67", "--steps", "1", "--repeats", "1"],
    "modality_encode": ["--batch-sizes", "4,8", "--steps", "2", "--repeats", "1"],
    "sampler_curves": ["--num-samples", "4", "--steps", "2,4", "--reference-steps", "4",
                       "--thresholds", "0.9", "--threshold-budget", "4", "--vqa-steps", "1,2",
                       "--batch-size", "4", "--repeats", "1", "--grid-size", "0"],
    "activation_memory": ["--cases", "tiny:2", "--steps", "1", "--warmup", "0", "--repeats", "1"],
}
CPU_ONLY = {"tokenizer_throughput", "host_threads"}  # CPU work by design: no --device flag
OWN_THREADS = {"host_threads"}  # compares thread counts itself: no --threads flag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per benchmark (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument("--results-dir", default=None,
                        help="where the JSON goes (default benchmarks/results; with --quick "
                             f"{QUICK_RESULTS.relative_to(ROOT)}, so smoke numbers never replace "
                             "measured ones)")
    args = parser.parse_args(argv)
    if args.results_dir is None:
        args.results_dir = str(QUICK_RESULTS if args.quick else ROOT / "benchmarks" / "results")
    table = QUICK if args.quick else BENCHMARKS
    names = list(table) if args.only is None else [n.strip() for n in args.only.split(",")]
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise SystemExit(f"unknown benchmarks {unknown}; known: {list(table)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    threads = ["--threads", str(args.threads)] if args.threads > 0 else []
    failed = []
    for name in names:
        if name in CPU_ONLY and args.device != "cpu":
            print(f"=== {name}: skipped on {args.device} (a CPU benchmark)", flush=True)
            continue
        device = [] if name in CPU_ONLY else ["--device", args.device]
        out = Path(args.results_dir) / f"{name}_{args.device}.json"
        cmd = [sys.executable, "-m", f"benchmarks.{name}", *table[name], *device,
               *([] if name in OWN_THREADS else threads), "--out", str(out)]
        print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
