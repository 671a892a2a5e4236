"""benchmarks/unification_cost.py: paired per-sample comparison of two ``unigen eval`` runs."""

import json
import math

import pytest

from benchmarks.unification_cost import main


def write_records(path, records):
    path.mkdir(parents=True)
    (path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def vqa(index, prediction, answer="two"):
    return {"task": "vqa", "index": index, "prediction": prediction, "answer": answer}


def test_paired_difference_and_standard_error_are_exact(tmp_path):
    # unified right on 0, 1, 2; single right on 0 and 3: per-sample differences 0, 1, 1, -1
    write_records(tmp_path / "u", [vqa(0, "two"), vqa(1, "Two."), vqa(2, "two"), vqa(3, "one"),
                                   {"task": "caption", "index": 0, "attribute_recall": 0.5, "fact_precision": 1.0}])
    write_records(tmp_path / "s", [vqa(0, "two"), vqa(1, "one"), vqa(2, "three"), vqa(3, "two"),
                                   {"task": "t2i", "index": 0, "correct": True}])
    result = main(["--unified", str(tmp_path / "u"), "--single", str(tmp_path / "s"),
                   "--out", str(tmp_path / "r.json")])
    (row,) = result["comparisons"]  # only VQA is scored by both
    assert (row["task"], row["samples"], row["unified"], row["single"]) == ("vqa", 4, 0.75, 0.5)
    assert row["unified_minus_single"] == pytest.approx(0.25)
    var = sum((d - 0.25) ** 2 for d in (0, 1, 1, -1)) / 3
    assert row["standard_error"] == pytest.approx(math.sqrt(var / 4))
    assert row["no_worse_than_2_points_below"] and result["all_no_worse_than_bar"]
    assert json.loads((tmp_path / "r.json").read_text())["comparisons"] == result["comparisons"]


def test_missing_records_is_one_clear_error(tmp_path):
    write_records(tmp_path / "u", [vqa(0, "two"), vqa(1, "two")])
    with pytest.raises(SystemExit, match="records.jsonl: missing") as err:
        main(["--unified", str(tmp_path / "u"), "--single", str(tmp_path / "nope"), "--out", str(tmp_path / "r.json")])
    assert "\n" not in str(err.value)


def test_pairs_of_seeds_give_the_mean_and_spread_of_the_differences(tmp_path):
    # seed 0: unified 3/4 vs single 1/4 (+0.5); seed 1: unified 1/4 vs single 2/4 (-0.25)
    right, wrong = "two", "one"
    for name, predictions in {"u0": [right, right, right, wrong], "s0": [right, wrong, wrong, wrong],
                              "u1": [right, wrong, wrong, wrong], "s1": [right, right, wrong, wrong]
                              }.items():
        write_records(tmp_path / name, [vqa(i, p) for i, p in enumerate(predictions)])
    for name, fid in (("u0", 30.0), ("s0", 32.5)):  # whole-run scores only for seed 0
        (tmp_path / name / "results.json").write_text(json.dumps({"metrics": {"fid": fid}}))
    result = main(["--pair", str(tmp_path / "u0"), str(tmp_path / "s0"),
                   "--pair", str(tmp_path / "u1"), str(tmp_path / "s1"), "--out", str(tmp_path / "r.json")])
    assert [(r["pair"], r["unified_minus_single"]) for r in result["comparisons"]] == [(0, 0.5), (1, -0.25)]
    (summary,) = result["over_pairs"]
    assert summary["pairs"] == 2 and summary["mean_unified_minus_single"] == pytest.approx(0.125)
    assert (summary["min"], summary["max"]) == (-0.25, 0.5)
    assert (summary["unified_mean"], summary["single_mean"]) == (0.5, 0.375)
    # the mean passes the 2-point bar, seed 1 alone does not
    assert summary["no_worse_than_2_points_below"] and not summary["every_pair_no_worse_than_2_points_below"]
    assert result["all_no_worse_than_bar"]
    assert [(r["pair"], r["score"], r["unified_minus_single"], r["higher_is_better"])
            for r in result["whole_run"]] == [(0, "fid", -2.5, False)]


EITHER = "give either --unified with --single, or --pair UNIFIED SINGLE (repeatable)"


@pytest.mark.parametrize("args, message", [
    ([], EITHER),
    (["--unified", "u"], "--unified and --single go together"),
    (["--single", "s"], "--unified and --single go together"),
    (["--unified", "u", "--single", "s", "--pair", "u", "s"], EITHER),
])
def test_pairs_and_unified_single_are_exclusive(tmp_path, args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path / "r.json")])
    assert exc.value.code == 2  # the parser's error, not a failure further on
    # the usage line names --unified whatever went wrong: check the error line itself
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")
    assert not (tmp_path / "r.json").exists()
