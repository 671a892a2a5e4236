"""benchmarks/host_threads.py: the host's share of a training step per intra-op thread count."""

import json

import pytest
import torch

from benchmarks.host_threads import host_step, main, thread_counts


def test_thread_counts_read_all_as_torchs_default():
    assert thread_counts(["all", "1"]) == [torch.get_num_threads(), 1]
    with pytest.raises(ValueError, match=">= 1"):
        thread_counts(["0"])


def test_every_count_is_timed_over_the_same_steps(tmp_path):
    before = torch.get_num_threads()
    out = tmp_path / "h.json"
    payload = main(["--size", "tiny", "--threads", "2,1", "--steps", "3", "--warmup", "1",
                    "--workers", "0", "--out", str(out)])
    assert torch.get_num_threads() == 1  # the last count stays set: the script ends there
    torch.set_num_threads(before)
    saved = json.loads(out.read_text())
    rows = saved["results"]
    assert [r["threads"] for r in rows] == [2, 1] and all(r["steps"] == 3 for r in rows)
    for r in rows:
        assert 0 < r["median_ms"] <= r["p90_ms"] <= r["max_ms"]
    assert rows[-1]["mean_over_last"] == 1.0
    assert rows[0]["mean_over_last"] == pytest.approx(rows[0]["mean_ms"] / rows[1]["mean_ms"])
    assert saved["settings"]["workers"] == 0 and saved["settings"]["complementary_masking"]
    assert saved == {**payload, "benchmark": "host_threads", "environment": saved["environment"]}


def test_the_timed_work_is_the_modules_own_masking_plan(monkeypatch):
    from benchmarks.common import SIZES, TokenizerDirs, build_module
    from unigen.training.unified_module import UnifiedModule

    size = SIZES["tiny"]
    module = build_module("masked", TokenizerDirs(size.fsq_levels), size, size.image_size, 0,
                          tasks={"t2i": 1.0, "vqa": 1.0}, complementary_masking=True)
    plans = []
    original = UnifiedModule.plan_masks
    monkeypatch.setattr(UnifiedModule, "plan_masks",
                        lambda self, tb, gen: plans.append(original(self, tb, gen)) or plans[-1])
    batch = {"caption": ["a red circle"] * 4, "question": ["is there a circle?"] * 4,
             "answer": ["yes"] * 4}
    codes = torch.randint(0, module.image_tokenizer.codebook_size, (4, *module.space.sequence.grid))
    host_step(module, batch, codes, step=0)
    (plan,) = plans
    assert plan.copies == 2 and plan.masked.shape[0] == 8
    assert plan.rows.numel() == plan.masked.sum()  # every masked position listed once
