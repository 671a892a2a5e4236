"""benchmarks/activation_memory.py: what it counts, and one run at the tiniest size (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.activation_memory import SavedActivations, parse_cases

ROOT = Path(__file__).resolve().parents[2]


def test_saved_bytes_count_each_storage_once_and_leave_out_the_excluded():
    weight = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8, requires_grad=True)
    with SavedActivations([weight]) as saved:
        h = x @ weight  # saves x (128 bytes) and the weight (excluded)
        y = (h * h).sum()  # saves h twice: one storage
        z = (x[:2] * 3).exp().sum()  # saves exp's output; x[:2] is a view of x, not saved here
    assert saved.bytes == 4 * 8 * 4 + 4 * 8 * 4 + 2 * 8 * 4
    (y + z).backward()  # the saved tensors are the real ones
    assert x.grad is not None and weight.grad is not None


def test_cases_are_checked():
    assert parse_cases("tiny:16, small:8") == [("tiny", 16), ("small", 8)]
    for bad in ("tiny", "huge:4", "tiny:0", "tiny:x"):
        with pytest.raises(SystemExit, match="SIZE:BATCH"):
            parse_cases(bad)


@pytest.mark.slow
def test_runs_at_the_tiniest_size(tmp_path):
    out = tmp_path / "a.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "activation_memory.py"), "--threads", "1",
                           "--cases", "tiny:2", "--steps", "1", "--warmup", "0", "--repeats", "1",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["environment"]["torch"] and result["environment"]["date"]
    off, on = result["results"]
    assert (off["activation_checkpointing"], on["activation_checkpointing"]) == ("off", "on")
    assert (off["block_calls_per_step"], on["block_calls_per_step"]) == (2, 4)  # tiny: depth 2
    assert 0 < on["saved_on_over_off"] < 1 and on["same_loss"] and on["max_grad_abs_diff"] == 0
    assert off["step_ms"] > 0 and on["step_time_on_over_off"] > 0  # no claim about speed
    assert "saved_on_over_off" in proc.stdout
