"""Exact resume: a run interrupted mid-step and resumed with ``--ckpt_path last`` is bit-identical
on CPU to the uninterrupted run (losses of every step, final weights, optimizer state, LR schedule),
for the unified model and the image-tokenizer recipes.

Two ways to interrupt: an in-process crash (an exception mid-step; default run) and a real
``kill -9`` of a ``python -m unigen fit`` subprocess (slow: three interpreter start-ups).  The same
runs show that two runs of a recipe with one seed write identical checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from kill_switch import SimulatedCrash
from resume_testkit import (ResumeCase, checkpoint, finish, kill_when, logged_losses,
                            losses_by_version, start_unigen, step_checkpoint, tokenizer_case,
                            training_state_difference, unified_case)

from unigen.cli import main


def _crash_and_resume(case: ResumeCase, ref: Path, cut: Path) -> None:
    main(case.argv(ref))
    with pytest.raises(SimulatedCrash):
        main(case.argv(cut, kill={"mode": "raise"}))
    main(case.argv(cut, resume=True))


def _sigkill_and_resume(case: ResumeCase, ref: Path, cut: Path) -> None:
    marker, logs = cut / "hanging", cut.parent
    reference = start_unigen(case.argv(ref), logs, logs / "ref.log")  # alongside the killed run
    killed = start_unigen(case.argv(cut, kill={"mode": "hang", "marker": str(marker)}), logs,
                       logs / "killed.log")
    kill_when(killed, marker, logs / "killed.log")
    resumed = start_unigen(case.argv(cut, resume=True), logs, logs / "resumed.log")
    finish(reference, logs / "ref.log")
    finish(resumed, logs / "resumed.log")


@pytest.fixture(scope="module", params=["crash", pytest.param("sigkill", marks=pytest.mark.slow)])
def interrupt(request):
    return request.param


@pytest.fixture(scope="module", params=["unified", "unified_muon", "tokenizer"])
def runs(request, interrupt, tokenizer_dirs, tmp_path_factory):
    """(case, reference run root, interrupted-then-resumed run root); ``unified_muon``: the
    Muon optimizer, whose state is two optimizers' in one."""
    tmp = tmp_path_factory.mktemp(f"{request.param}_{interrupt}")
    thorough = interrupt == "sigkill"
    case = (tokenizer_case(thorough) if request.param == "tokenizer"
            else unified_case(tokenizer_dirs, thorough, request.param.partition("_")[2] or "adamw"))
    ref, cut = tmp / "ref", tmp / "cut"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # anything a recipe writes relative to the working directory stays here
        run = _crash_and_resume if interrupt == "crash" else _sigkill_and_resume
        run(case, ref, cut)
    return case, ref, cut


def test_last_resolves_to_the_interrupted_runs_checkpoint(runs):
    case, _, cut = runs
    first_step = {version: min(losses) for version, losses in losses_by_version(cut).items()}
    # version_0 is the interrupted run, version_1 the resumed one: it starts at the killed step
    assert first_step == {0: 0, 1: case.kill_step}
    assert checkpoint(cut, "last.ckpt")["global_step"] == case.steps


def test_same_seed_same_checkpoints(runs):
    """Two runs of one recipe and seed (reference, and the interrupted run before its kill)."""
    case, ref, cut = runs
    for step in range(1, case.kill_step + 1):
        diff = training_state_difference(step_checkpoint(ref, step), step_checkpoint(cut, step))
        assert diff is None, f"step {step} differs at {diff}"


def test_resumed_run_logs_the_same_loss_at_every_step(runs):
    case, ref, cut = runs
    expected = logged_losses(ref)
    assert sorted(expected) == list(range(case.steps))
    assert logged_losses(cut) == expected  # float text compared exactly


def test_resumed_run_ends_with_bit_identical_state_and_export(runs):
    case, ref, cut = runs
    for step in range(case.kill_step + 1, case.steps + 1):
        diff = training_state_difference(step_checkpoint(ref, step), step_checkpoint(cut, step))
        assert diff is None, f"step {step} after the resume differs at {diff}"
    diff = training_state_difference(checkpoint(ref, "last.ckpt"), checkpoint(cut, "last.ckpt"))
    assert diff is None, f"final state differs at {diff}"
    from unigen.io import load_safetensors

    a, b = (load_safetensors(root / "export" / case.exported_weights) for root in (ref, cut))
    assert a and a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_export_of_the_resumed_checkpoint_matches_the_end_of_fit_export(runs, tmp_path):
    case, ref, cut = runs
    main(["export", "--ckpt", str(cut / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "x")])
    from unigen.io import load_safetensors

    a, b = (load_safetensors(root / case.exported_weights)
            for root in (ref / "export", tmp_path / "x"))
    assert a and a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_the_muon_case_trains_with_muon(runs):
    case, _, cut = runs
    groups = checkpoint(cut, "last.ckpt")["optimizer_states"][0]["param_groups"]
    assert any(g.get("use_muon") for g in groups) == ("muon" in case.args)
