"""The cost (or benefit) of unification, issue #5: one model trained on every task against models of
the same size trained on fewer tasks, scored on the same samples by ``unigen eval``.

Compares the ``records.jsonl`` that ``unigen eval`` writes for each model sample by sample
(:mod:`benchmarks.paired_eval`: every score both runs have, the difference of the means and its
paired standard error). The issue's bar: the unified model is no more than 2 points
below the single-task one.

The paired standard error counts the evaluation samples, not the training seed, which moves these
scores by a few points at CPU scale.  ``--pair UNIFIED SINGLE`` (repeat it: one pair per training
seed) compares each pair and adds ``over_pairs``: per score the mean difference across pairs, the
smallest and largest, and the bar checked on the mean and on every pair.

    PYTHONPATH=. python benchmarks/unification_cost.py --unified runs/eval/unified_shapes_cpu_desc \\
        --single runs/eval/understand_shapes_cpu --notes notes.json \\
        --out benchmarks/results/unification_cost_cpu.json
    PYTHONPATH=. python benchmarks/unification_cost.py --pair runs/eval/seed0_all runs/eval/seed0_und \
        --pair runs/eval/seed1_all runs/eval/seed1_und --out unification_cost_seeds.json
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.paired_eval import (compare as compare_runs, compare_corpus, describe,  # noqa: E402
                                   describe_corpus, write_result)

BAR_POINTS = 2.0
BAR_KEY = f"no_worse_than_{BAR_POINTS:g}_points_below"


def compare(unified_dir: Path, single_dirs: list[Path]) -> list[dict[str, Any]]:
    """:func:`benchmarks.paired_eval.compare` of the unified run against each single-task run,
    with the issue's labels and bar."""
    rows = []
    for single_dir in single_dirs:
        for row in compare_runs(unified_dir, single_dir):
            rows.append({"task": row["task"], "score": row["score"], "single_model": str(single_dir),
                         "samples": row["samples"], "unified": row["a"], "single": row["b"],
                         "unified_minus_single": row["a_minus_b"],
                         "standard_error": row["standard_error"],
                         BAR_KEY: row["a_minus_b"] >= -BAR_POINTS / 100})
    return rows


def over_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, score): the mean of the pairs' differences, the smallest and largest, and the bar
    on the mean and on every pair (rows carry ``pair``)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["score"]), []).append(row)
    out = []
    for (task, score), group in groups.items():
        diffs = [r["unified_minus_single"] for r in group]
        mean = sum(diffs) / len(diffs)
        out.append({"task": task, "score": score, "pairs": len(group),
                    "unified_mean": sum(r["unified"] for r in group) / len(group),
                    "single_mean": sum(r["single"] for r in group) / len(group),
                    "mean_unified_minus_single": mean, "min": min(diffs), "max": max(diffs),
                    BAR_KEY: mean >= -BAR_POINTS / 100,
                    f"every_pair_{BAR_KEY}": all(r[BAR_KEY] for r in group)})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unified", help="eval directory of the model trained on every task")
    parser.add_argument("--single", action="append", default=[],
                        help="eval directory of a model trained on fewer tasks (repeat for several)")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("UNIFIED", "SINGLE"),
                        help="a unified and a single-task eval directory of one training seed "
                             "(repeat per seed; instead of --unified/--single)")
    parser.add_argument("--notes", default=None, help="JSON file merged into the result (recipes, minutes, caveats)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if bool(args.pair) == bool(args.unified or args.single):
        parser.error("give either --unified with --single, or --pair UNIFIED SINGLE (repeatable)")
    if not args.pair and not (args.unified and args.single):
        parser.error("--unified and --single go together")
    pairs = args.pair or [(args.unified, s) for s in args.single]
    rows, whole_run = [], []
    for index, (unified, single) in enumerate(pairs):
        for row in compare(Path(unified), [Path(single)]):
            rows.append({**row, "pair": index} if args.pair else row)
        # FID, BLEU-4, ...: reported beside the paired scores, outside the bar (no per-sample pairs)
        for row in compare_corpus(Path(unified), Path(single)):
            whole_run.append({"task": row["task"], "score": row["score"], "single_model": single,
                              "unified": row["a"], "single": row["b"],
                              "unified_minus_single": row["a_minus_b"],
                              "higher_is_better": row["higher_is_better"],
                              **({"pair": index} if args.pair else {})})
            print(describe_corpus(row, "unified", "single"))
    for r in rows:
        print(describe({"a": r["unified"], "b": r["single"], "a_minus_b": r["unified_minus_single"],
                        **r}, "unified", "single"))
    payload: dict[str, Any] = {"benchmark": "unification_cost", "comparisons": rows,
                               "whole_run": whole_run}
    if args.pair:
        payload["pairs"] = [list(p) for p in args.pair]
        payload["over_pairs"] = over_pairs(rows)
        for r in payload["over_pairs"]:
            print(f"{r['task']:8s} {r['score']:40s} mean over {r['pairs']} pairs "
                  f"{100 * r['mean_unified_minus_single']:+.1f} points "
                  f"(from {100 * r['min']:+.1f} to {100 * r['max']:+.1f})")
        payload["all_no_worse_than_bar"] = all(r[BAR_KEY] for r in payload["over_pairs"])
    else:
        payload.update(unified=args.unified, single=args.single,
                       all_no_worse_than_bar=all(r[BAR_KEY] for r in rows))
    return write_result(payload, args.notes, args.out)


if __name__ == "__main__":
    main()
