"""Two ``unigen eval`` runs of the same samples, compared per sample: which model (or setting) is
better, by how much, and how sure that is.

Reads each run's ``records.jsonl`` and pairs every per-sample score both runs have (VQA exact match,
caption attribute recall and fact precision, text-to-image checker or classifier correctness) by task and sample
index.  For each score it reports both means over the common samples, their difference ``a - b``
and its paired standard error: the same questions, images and prompts on both sides, so the
sample-to-sample spread cancels and a 1,000-sample difference of a few points is resolvable.
``benchmarks/unification_cost.py`` (issue #5's unification bar) is this comparison with its own
labels.

    PYTHONPATH=. python benchmarks/paired_eval.py --a runs/eval/unified_shapes_cpu_qslot \\
        --b runs/eval/unified_shapes_cpu_desc --label-a question_slot --label-b no_slot \\
        --out benchmarks/results/question_slot_cpu.json
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
from unigen.data.checker import named_objects  # noqa: E402
from unigen.metrics import CAPTION, DISTRIBUTION, METRICS  # noqa: E402
from unigen.metrics.text_normalize import normalize_caption  # noqa: E402
from unigen.metrics.vqa import exact_matches  # noqa: E402

# (task, score name) -> (the record fields it needs, how a record gives the score); a record without
# those fields is not scored (shapes records have no class verdict, Fashion-MNIST ones no checker's)
SCORES = {
    ("vqa", "vqa_exact_match"): (("prediction", "answer"), lambda r: float(
        exact_matches([r["prediction"]], [r["answer"]])[0])),
    ("caption", "caption_attribute_recall"): (("attribute_recall",),
                                              lambda r: float(r["attribute_recall"])),
    ("caption", "caption_fact_precision"): (("fact_precision",), lambda r: float(r["fact_precision"])),
    ("caption", "caption_exact_match"): (("caption", "references"), lambda r: float(
        exact_matches([r["caption"]], [r["references"]], normalize_caption)[0])),
    ("t2i", "compositional_accuracy/sample_accuracy"): (("correct",), lambda r: float(r["correct"])),
    # from the verdict, the detections and the prompt: also for records written before "exact" was
    ("t2i", "exact_accuracy"): (("correct", "detected", "prompt"), lambda r: float(
        r["correct"] and r["detected"] == named_objects(r["prompt"]))),
    ("t2i", "unrequested_objects"): (("detected", "prompt"), lambda r: float(
        r["detected"] > named_objects(r["prompt"]))),
    ("t2i", "class_accuracy"): (("class_correct",), lambda r: float(r["class_correct"])),
}


def per_sample_scores(eval_dir: Path) -> dict[tuple[str, str], dict[int, float]]:
    """``(task, score) -> {sample index: score}`` from an eval directory's ``records.jsonl``."""
    path = eval_dir / "records.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (run `unigen eval ... --out {eval_dir}` first)")
    scores: dict[tuple[str, str], dict[int, float]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for (task, name), (fields, score) in SCORES.items():
            if record.get("task") == task and all(f in record for f in fields):
                scores.setdefault((task, name), {})[int(record["index"])] = score(record)
    return scores


def mean_calls(eval_dir: Path) -> dict[str, float]:
    """Mean network calls per sample of each task (the records' ``model_calls``): the cost side of
    a comparison of samplers or settings."""
    totals: dict[str, list[float]] = {}
    for line in (eval_dir / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "model_calls" in record:
            totals.setdefault(record["task"], []).append(float(record["model_calls"]))
    return {task: sum(calls) / len(calls) for task, calls in sorted(totals.items())}


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Means over the samples both runs scored, the difference ``a - b`` and its paired standard
    error."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise SystemExit("fewer than two samples in common: were both runs evaluated on the same split?")
    diffs = [a[i] - b[i] for i in common]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return {"samples": n, "a": sum(a[i] for i in common) / n, "b": sum(b[i] for i in common) / n,
            "a_minus_b": mean, "standard_error": math.sqrt(var / n)}


def compare(a_dir: Path, b_dir: Path) -> list[dict[str, Any]]:
    """One row per score that both runs have: ``task``, ``score`` and :func:`paired`'s fields."""
    a, b = per_sample_scores(a_dir), per_sample_scores(b_dir)
    rows = [{"task": key[0], "score": key[1], **paired(a[key], b[key])}
            for key in sorted(set(a) & set(b))]
    if not rows:
        raise SystemExit("the runs share no scored task")
    return rows


# whole-run metrics (no per-sample score to pair) -> the task they score
CORPUS_TASKS = {DISTRIBUTION: "t2i", CAPTION: "caption"}


def _metrics(eval_dir: Path) -> dict[str, Any]:
    path = eval_dir / "results.json"
    return json.loads(path.read_text())["metrics"] if path.is_file() else {}


def compare_corpus(a_dir: Path, b_dir: Path) -> list[dict[str, Any]]:
    """Whole-run scores both ``results.json`` hold (FID, KID, BLEU-4, CIDEr-D, ...): both values
    and ``a - b``, with the metric's direction; one number per run, so no standard error."""
    a, b = _metrics(a_dir), _metrics(b_dir)
    paired_names = {score for _, score in SCORES}  # compared sample by sample already
    rows = []
    for key in sorted(set(a) & set(b) - paired_names):
        name = key.split("/")[0]
        kind = METRICS.get(name).kind if name in METRICS else None
        if kind in CORPUS_TASKS and isinstance(a[key], (int, float)) and isinstance(b[key], (int, float)):
            rows.append({"task": CORPUS_TASKS[kind], "score": key, "a": a[key], "b": b[key],
                         "a_minus_b": a[key] - b[key],
                         "higher_is_better": bool(METRICS.get(name).higher_is_better)})
    return rows


def describe_corpus(row: dict[str, Any], label_a: str = "a", label_b: str = "b") -> str:
    better = "higher" if row["higher_is_better"] else "lower"
    return (f"{row['task']:8s} {row['score']:40s} {label_a} {row['a']:.4f}  {label_b} {row['b']:.4f}  "
            f"diff {row['a_minus_b']:+.4f} (whole run, {better} is better)")


def describe(row: dict[str, Any], label_a: str = "a", label_b: str = "b") -> str:
    return (f"{row['task']:8s} {row['score']:40s} {label_a} {row['a']:.4f}  {label_b} {row['b']:.4f}  "
            f"diff {100 * row['a_minus_b']:+.1f} ± {100 * row['standard_error']:.1f} points "
            f"(n={row['samples']})")


def write_result(payload: dict[str, Any], notes: str | None, out: str) -> dict[str, Any]:
    """Merge the ``--notes`` JSON file (if any) into ``payload`` and write it to ``out``."""
    if notes:
        payload.update(json.loads(Path(notes).read_text()))
    import datetime

    import torch

    import unigen
    # when and with what the comparison ran (each eval's own device and versions are in its results.json)
    payload = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "versions": {"unigen": unigen.__version__, "torch": torch.__version__}, **payload}
    io.write_json(Path(out), payload)
    print(f"wrote {out}")
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", required=True, help="eval directory of one run")
    parser.add_argument("--b", required=True, help="eval directory of the run it is compared with")
    parser.add_argument("--label-a", default="a", help="what run a is, in the printout and JSON")
    parser.add_argument("--label-b", default="b")
    parser.add_argument("--notes", default=None, help="JSON file merged into the result (recipes, minutes, caveats)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rows = compare(Path(args.a), Path(args.b))
    corpus = compare_corpus(Path(args.a), Path(args.b))
    for row in rows:
        print(describe(row, args.label_a, args.label_b))
    for row in corpus:
        print(describe_corpus(row, args.label_a, args.label_b))
    payload: dict[str, Any] = {"benchmark": "paired_eval", "a": {"label": args.label_a, "eval": args.a},
                               "b": {"label": args.label_b, "eval": args.b}, "comparisons": rows,
                               "whole_run": corpus,
                               "mean_model_calls": {args.label_a: mean_calls(Path(args.a)),
                                                    args.label_b: mean_calls(Path(args.b))}}
    return write_result(payload, args.notes, args.out)


if __name__ == "__main__":
    main()
