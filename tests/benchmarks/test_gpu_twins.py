"""benchmarks/gpu_twins.sh: its SMOKE mode runs the GPU commands (text tokenizer, both twins' fits
from the real recipes, sampling.py on the two trained pipelines) on the CPU at a tiny size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_smoke(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    """``SMOKE=1 bash benchmarks/gpu_twins.sh`` into ``tmp_path`` (work/ and out/), with
    ``settings`` as further environment variables (STEPS, MINUTES)."""
    env = {**os.environ, "SMOKE": "1", "PYTHON": sys.executable, "WORK": str(tmp_path / "work"),
           "OUT": str(tmp_path / "out"), **settings}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_twins.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_smoke_trains_both_twins_equally_and_scores_them(tmp_path):
    done = run_smoke(tmp_path, STEPS="3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for twin in ("t2i", "ar"):
        assert "`max_steps=3` reached" in (tmp_path / "work" / f"{twin}.log").read_text()
        assert (tmp_path / "work" / f"{twin}_pipeline").is_dir()
    result = json.loads((tmp_path / "out" / "sampling_twins_b8_smoke_cpu.json").read_text())
    assert result["settings"]["weights"] == {"masked": "trained", "autoregressive": "trained"}
    rows = {r["case"]: r for r in result["results"]}
    assert rows["autoregressive/ar/64steps/cache/cfg2"]["speed_vs_ar_cached"] == 1
    assert all(0 <= r["checker_accuracy"] <= 1 for r in rows.values())


def test_a_twin_stopped_early_fails_the_run(tmp_path):
    """max_time stopping one twin makes the comparison unequal: the script must say so and fail.
    Checked on the grep the script uses, against Lightning's two stop messages."""
    script = (ROOT / "benchmarks" / "gpu_twins.sh").read_text()
    assert 'grep -q "max_steps=$STEPS\\` reached"' in script
    log = tmp_path / "fit.log"
    for message, reached in (("`Trainer.fit` stopped: `max_steps=2500` reached.", True),
                             ("Time limit reached. Elapsed time is 0:03:18. Signaling Trainer to stop.", False)):
        log.write_text(message + "\n")
        found = subprocess.run(["bash", "-c", f'STEPS=2500; grep -q "max_steps=$STEPS\\` reached" {log}'])
        assert (found.returncode == 0) is reached


@pytest.mark.slow
def test_a_fit_that_max_time_stops_ends_the_run_before_the_second_twin(tmp_path):
    done = run_smoke(tmp_path, MINUTES="0")  # max_time 0: stopped at once
    assert done.returncode == 1
    assert "gpu_twins: fit t2i stopped before 4 steps (max_time): lower STEPS" in done.stdout
    assert not (tmp_path / "work" / "ar.log").exists()  # no device minutes on the second twin
