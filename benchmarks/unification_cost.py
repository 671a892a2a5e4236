"""The cost (or benefit) of unification, issue #5: one model trained on every task against models of
the same size trained on fewer tasks, scored on the same samples by ``unigen eval``.

Reads the ``records.jsonl`` that ``unigen eval`` writes for each model and compares every
per-sample score both runs have (VQA exact match, caption attribute recall and fact precision,
text-to-image checker correctness), paired by task and sample index: the difference of the means
and its paired standard error (the same questions, images and prompts on both sides, so the
sample-to-sample spread cancels). The issue's bar: the unified model is no more than 2 points
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
import json  # noqa: E402
import math  # noqa: E402
from typing import Any  # noqa: E402

from unigen import io  # noqa: E402
from unigen.metrics.vqa import exact_matches  # noqa: E402

# (task, score name) -> how one record gives the score
SCORES = {
    ("vqa", "vqa_exact_match"): lambda r: float(exact_matches([r["prediction"]], [r["answer"]])[0]),
    ("caption", "caption_attribute_recall"): lambda r: float(r["attribute_recall"]),
    ("caption", "caption_fact_precision"): lambda r: float(r["fact_precision"]),
    ("t2i", "compositional_accuracy/sample_accuracy"): lambda r: float(r["correct"]),
}
BAR_POINTS = 2.0


def per_sample_scores(eval_dir: Path) -> dict[tuple[str, str], dict[int, float]]:
    """``(task, score) -> {sample index: score}`` from an eval directory's ``records.jsonl``."""
    path = eval_dir / "records.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (run `unigen eval ... --out {eval_dir}` first)")
    scores: dict[tuple[str, str], dict[int, float]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for (task, name), score in SCORES.items():
            if record.get("task") == task:
                scores.setdefault((task, name), {})[int(record["index"])] = score(record)
    return scores


def paired(unified: dict[int, float], single: dict[int, float]) -> dict[str, Any]:
    """Means over the samples both runs scored, their difference and its paired standard error."""
    common = sorted(set(unified) & set(single))
    if len(common) < 2:
        raise SystemExit("fewer than two samples in common: were both runs evaluated on the same split?")
    diffs = [unified[i] - single[i] for i in common]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return {"samples": n, "unified": sum(unified[i] for i in common) / n,
            "single": sum(single[i] for i in common) / n, "unified_minus_single": mean,
            "standard_error": math.sqrt(var / n),
            f"no_worse_than_{BAR_POINTS:g}_points_below": mean >= -BAR_POINTS / 100}


def compare(unified_dir: Path, single_dirs: list[Path]) -> list[dict[str, Any]]:
    unified = per_sample_scores(unified_dir)
    rows = []
    for single_dir in single_dirs:
        single = per_sample_scores(single_dir)
        for key in sorted(set(unified) & set(single)):
            rows.append({"task": key[0], "score": key[1], "single_model": str(single_dir),
                         **paired(unified[key], single[key])})
    if not rows:
        raise SystemExit("the runs share no scored task")
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
        print(f"{r['task']:8s} {r['score']:40s} unified {r['unified']:.4f}  single {r['single']:.4f}  "
              f"diff {100 * r['unified_minus_single']:+.1f} ± {100 * r['standard_error']:.1f} points "
              f"(n={r['samples']})")
    payload: dict[str, Any] = {"benchmark": "unification_cost", "unified": args.unified,
                               "single": args.single, "comparisons": rows,
                               "all_no_worse_than_bar": all(r[f"no_worse_than_{BAR_POINTS:g}_points_below"]
                                                            for r in rows)}
    if args.notes:
        payload.update(json.loads(Path(args.notes).read_text()))
    io.write_json(Path(args.out), payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
