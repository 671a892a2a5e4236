"""Gradient accumulation: each micro-batch of an optimizer step draws its own tasks, masks and
condition dropout, reproducibly, and a step without accumulation draws what it always drew."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from unigen.cli import instantiate_recipe

DEBUG = Path(__file__).resolve().parents[2] / "recipes" / "debug"


def _fit_recording_draws(tokenizer_dirs, root: Path, monkeypatch) -> list[tuple[int, list[int], int]]:
    """(global step, each row's task, generator seed) of every training batch of a 2-step run that
    accumulates 2 micro-batches per step."""
    from unigen.training.unified_module import UnifiedModule

    seen: list[tuple[int, list[int], int]] = []
    original = UnifiedModule._build_tasks

    def recording(self, inputs, generator):
        tb, assignment = original(self, inputs, generator)
        seen.append((self.global_step, assignment.tolist(), generator.initial_seed()))
        return tb, assignment

    monkeypatch.setattr(UnifiedModule, "_build_tasks", recording)
    cli = instantiate_recipe(DEBUG / "unified_debug.yaml", [
        "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
        "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
        "--data.init_args.image_size", "16", "--trainer.accumulate_grad_batches", "2",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(root), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false"])
    cli.trainer.fit(cli.model, cli.datamodule)
    return seen


def test_micro_batches_of_one_step_draw_differently_and_reproducibly(tokenizer_dirs, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = list(_fit_recording_draws(tokenizer_dirs, tmp_path / "a", monkeypatch))
    assert [step for step, _, _ in first] == [0, 0, 1, 1]
    for a, b in (first[0:2], first[2:4]):  # the two micro-batches of a step
        assert a[2] != b[2], "one seed for every micro-batch of the step"
        assert a[1] != b[1], "identical task draws for the micro-batches of one step"
    assert _fit_recording_draws(tokenizer_dirs, tmp_path / "b", monkeypatch) == first


def _seeds(module, accumulate: int, step: int, batch_indices: list[int]) -> list[int]:
    module._trainer = SimpleNamespace(accumulate_grad_batches=accumulate, global_step=step,
                                      global_rank=0)
    return [module._step_generator(i).initial_seed() for i in batch_indices]


def test_the_step_generator_of_both_models(tokenizer_dirs):
    from unigen.training.ar_module import AutoregressiveModule
    from unigen.training.unified_module import UnifiedModule

    for cls in (UnifiedModule, AutoregressiveModule):
        module = cls(**tokenizer_dirs, image_size=16, dim=32, depth=1, heads=4, seed=3)
        accumulating = _seeds(module, 2, step=5, batch_indices=[10, 11, 12])
        assert accumulating[0] != accumulating[1], cls.__name__
        assert accumulating[2] == accumulating[0], "a window's position repeats with its index"
        plain = _seeds(module, 1, step=5, batch_indices=[10, 11])
        # without accumulation every batch is a step of its own: the seed of (seed, step)
        assert plain[0] == plain[1] == accumulating[0] == module._generator(0).initial_seed()
        torch.testing.assert_close(torch.randn(3, generator=module._step_generator(11)),
                                   torch.randn(3, generator=module._step_generator(11)))
