"""Codebook usage / perplexity on constructed code histograms."""

from __future__ import annotations

import math

import pytest
import torch

from unigen.tokenizers import CodebookUsage


def test_uniform_use_of_all_codes():
    metric = CodebookUsage(8)
    metric.update(torch.arange(8).repeat(5).reshape(2, 4, 5))
    out = metric.compute()
    assert float(out["usage"]) == 1.0 and int(out["used"]) == 8
    assert float(out["perplexity"]) == pytest.approx(8.0)


def test_partial_use_with_a_known_histogram():
    metric = CodebookUsage(10)
    metric.update(torch.tensor([[0, 0, 0, 1]]))  # p = (3/4, 1/4) over two codes
    out = metric.compute()
    assert float(out["usage"]) == pytest.approx(0.2)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(out["perplexity"]) == pytest.approx(math.exp(entropy))


def test_collapse_to_one_code():
    metric = CodebookUsage(1024)
    metric.update(torch.full((4, 16, 16), 7))
    out = metric.compute()
    assert float(out["perplexity"]) == pytest.approx(1.0)
    assert float(out["usage"]) == pytest.approx(1 / 1024)


def test_counts_accumulate_exactly_over_batches_and_reset():
    metric = CodebookUsage(6)
    metric.update(torch.tensor([[0, 1]]))
    metric.update(torch.tensor([[2, 2, 5]]))
    assert metric.counts.tolist() == [1, 1, 2, 0, 0, 1]
    assert float(metric.compute()["usage"]) == pytest.approx(4 / 6)
    metric.reset()
    metric.update(torch.tensor([3]))
    assert metric.counts.tolist() == [0, 0, 0, 1, 0, 0]


def test_bad_codes_are_refused():
    metric = CodebookUsage(4)
    with pytest.raises(ValueError, match="codes must lie in \\[0, 4\\)"):
        metric.update(torch.tensor([4]))
    with pytest.raises(ValueError, match="integer tensor"):
        metric.update(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="before any codes"):
        metric.compute()
