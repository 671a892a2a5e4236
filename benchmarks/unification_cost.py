"""The cost (or benefit) of unification, issue #5: one model trained on every task against models of
the same size trained on fewer tasks, scored on the same samples by ``unigen eval``.

Compares the ``records.jsonl`` that ``unigen eval`` writes for each model sample by sample
(:mod:`benchmarks.paired_eval`: every score both runs have, the difference of the means and its
paired standard error). The issue's bar: the unified model is no more than 2 points
below the single-task one.

    PYTHONPATH=. python benchmarks/unification_cost.py --unified runs/eval/unified_shapes_cpu_desc \\
        --single runs/eval/understand_shapes_cpu --notes notes.json \\
        --out benchmarks/results/unification_cost_cpu.json
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import from the repository root, never from benchmarks/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.paired_eval import compare as compare_runs, describe, write_result  # noqa: E402

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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unified", required=True, help="eval directory of the model trained on every task")
    parser.add_argument("--single", action="append", required=True,
                        help="eval directory of a model trained on fewer tasks (repeat for several)")
    parser.add_argument("--notes", default=None, help="JSON file merged into the result (recipes, minutes, caveats)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rows = compare(Path(args.unified), [Path(p) for p in args.single])
    for r in rows:
        print(describe({"a": r["unified"], "b": r["single"], "a_minus_b": r["unified_minus_single"],
                        **r}, "unified", "single"))
    payload: dict[str, Any] = {"benchmark": "unification_cost", "unified": args.unified,
                               "single": args.single, "comparisons": rows,
                               "all_no_worse_than_bar": all(r[BAR_KEY] for r in rows)}
    return write_result(payload, args.notes, args.out)


if __name__ == "__main__":
    main()
