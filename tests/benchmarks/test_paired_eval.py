"""benchmarks/paired_eval.py: two eval runs of the same samples, compared per sample."""

import json
import math

import pytest

from benchmarks.paired_eval import main


def write_records(path, records):
    path.mkdir(parents=True)
    (path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_every_shared_score_is_compared_on_the_common_samples(tmp_path, capsys):
    # captions: a's recall minus b's per sample is 0.5, 0, -0.25 (sample 3 only in a: not counted)
    write_records(tmp_path / "a", [
        {"task": "caption", "index": i, "attribute_recall": r, "fact_precision": 1.0}
        for i, r in enumerate((1.0, 0.5, 0.25, 0.0))] + [
        {"task": "t2i", "index": 0, "correct": True}, {"task": "t2i", "index": 1, "correct": False}])
    write_records(tmp_path / "b", [
        {"task": "caption", "index": i, "attribute_recall": r, "fact_precision": 0.5}
        for i, r in enumerate((0.5, 0.5, 0.5))] + [
        {"task": "t2i", "index": 0, "correct": False}, {"task": "t2i", "index": 1, "correct": False}])
    result = main(["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--label-a", "slot",
                   "--label-b", "plain", "--out", str(tmp_path / "r.json")])
    rows = {(r["task"], r["score"]): r for r in result["comparisons"]}
    assert set(rows) == {("caption", "caption_attribute_recall"), ("caption", "caption_fact_precision"),
                         ("t2i", "compositional_accuracy/sample_accuracy")}
    recall = rows[("caption", "caption_attribute_recall")]
    assert recall["samples"] == 3 and recall["a"] == pytest.approx(7 / 12) and recall["b"] == 0.5
    diffs = (0.5, 0.0, -0.25)
    mean = sum(diffs) / 3
    assert recall["a_minus_b"] == pytest.approx(mean)
    assert recall["standard_error"] == pytest.approx(
        math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2 / 3))
    assert rows[("caption", "caption_fact_precision")]["standard_error"] == 0.0
    assert rows[("t2i", "compositional_accuracy/sample_accuracy")]["a_minus_b"] == 0.5
    assert result["a"] == {"label": "slot", "eval": str(tmp_path / "a")}
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["date"].endswith("+00:00") and set(written["versions"]) == {"unigen", "torch"}
    assert "slot 0.5833  plain 0.5000  diff +8.3" in capsys.readouterr().out


def test_runs_without_a_shared_score_are_one_clear_error(tmp_path):
    write_records(tmp_path / "a", [{"task": "t2i", "index": 0, "correct": True}])
    write_records(tmp_path / "b", [{"task": "vqa", "index": 0, "prediction": "x", "answer": "x"}])
    with pytest.raises(SystemExit, match="share no scored task") as err:
        main(["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--out", str(tmp_path / "r.json")])
    assert "\n" not in str(err.value)


def test_classifier_verdicts_pair_and_records_without_a_score_are_skipped(tmp_path):
    # Fashion-MNIST t2i records carry class_accuracy's verdict and no checker fields, VQA records
    # both scores' fields: each score pairs only the records that hold what it reads
    write_records(tmp_path / "a", [
        {"task": "t2i", "index": i, "class_correct": ok} for i, ok in enumerate((True, True, False))])
    write_records(tmp_path / "b", [
        {"task": "t2i", "index": i, "class_correct": ok} for i, ok in enumerate((True, False, False))]
        + [{"task": "t2i", "index": 3, "correct": True}])
    result = main(["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--out", str(tmp_path / "r.json")])
    [row] = result["comparisons"]
    assert (row["task"], row["score"], row["samples"]) == ("t2i", "class_accuracy", 3)
    assert result["mean_model_calls"] == {"a": {}, "b": {}}  # these records carry no calls
    assert row["a_minus_b"] == pytest.approx(1 / 3)


def test_whole_run_scores_are_reported_with_their_direction(tmp_path, capsys):
    write_records(tmp_path / "a", [{"task": "vqa", "index": i, "prediction": "x", "answer": "x",
                                    "model_calls": 1 + i} for i in range(2)])
    write_records(tmp_path / "b", [{"task": "vqa", "index": i, "prediction": "y", "answer": "x"}
                                   for i in range(2)])
    (tmp_path / "a" / "results.json").write_text(json.dumps({"metrics": {
        "fid": 40.5, "bleu4": 0.8, "vqa_exact_match": 1.0, "model_calls/t2i": 12.0, "only_a": 1.0,
        "caption_exact_match": 0.5}}))
    (tmp_path / "b" / "results.json").write_text(json.dumps({"metrics": {
        "fid": 38.0, "bleu4": 0.7, "vqa_exact_match": 0.0, "model_calls/t2i": 8.0,
        "caption_exact_match": 0.25}}))
    result = main(["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--out", str(tmp_path / "r.json")])
    # only whole-run (distribution, caption corpus) metrics that are not paired per sample
    assert result["whole_run"] == [
        {"task": "caption", "score": "bleu4", "a": 0.8, "b": 0.7, "a_minus_b": pytest.approx(0.1),
         "higher_is_better": True},
        {"task": "t2i", "score": "fid", "a": 40.5, "b": 38.0, "a_minus_b": 2.5, "higher_is_better": False}]
    assert result["mean_model_calls"] == {"a": {"vqa": 1.5}, "b": {}}
    [fid_line] = [line for line in capsys.readouterr().out.splitlines() if " fid " in line]
    assert "diff +2.5000 (whole run, lower is better)" in fid_line


def test_captions_pair_on_exact_reference_matches(tmp_path):
    refs = ["a bag", "a photo of a bag"]
    write_records(tmp_path / "a", [{"task": "caption", "index": i, "caption": c, "references": refs}
                                   for i, c in enumerate(("a photo of a bag", "A bag.", "a bag bag"))])
    write_records(tmp_path / "b", [{"task": "caption", "index": i, "caption": c, "references": refs}
                                   for i, c in enumerate(("a bag of a", "a bag", "a photo of a bag"))])
    result = main(["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--out", str(tmp_path / "r.json")])
    [row] = result["comparisons"]
    assert (row["score"], row["a"], row["b"]) == ("caption_exact_match", pytest.approx(2 / 3),
                                                  pytest.approx(2 / 3))
    assert row["a_minus_b"] == pytest.approx(0.0) and row["standard_error"] > 0  # +1, 0, -1


def test_exact_accuracy_is_scored_from_the_verdict_detections_and_prompt(tmp_path):
    """Records written before ``exact`` existed still give it: correct, and as many objects
    detected as the prompt names."""
    prompts = ["a red circle", "two blue squares", "a star and a circle"]
    write_records(tmp_path / "a", [
        {"task": "t2i", "index": i, "correct": True, "detected": d, "prompt": p}
        for i, (p, d) in enumerate(zip(prompts, (1, 3, 2)))])
    write_records(tmp_path / "b", [
        {"task": "t2i", "index": i, "correct": c, "detected": d, "prompt": p}
        for i, (p, c, d) in enumerate(zip(prompts, (True, False, True), (2, 2, 2)))])
    result = main(["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--out", str(tmp_path / "r.json")])
    rows = {r["score"]: r for r in result["comparisons"]}
    assert rows["exact_accuracy"]["a"] == pytest.approx(2 / 3)  # the squares' image shows a third
    assert rows["exact_accuracy"]["b"] == pytest.approx(1 / 3)  # only the star and circle is exact
    assert rows["unrequested_objects"]["a"] == pytest.approx(1 / 3)
    assert rows["unrequested_objects"]["b"] == pytest.approx(1 / 3)
