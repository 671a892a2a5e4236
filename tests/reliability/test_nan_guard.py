"""A NaN/inf loss stops training before the bad update, names the step and the last good
checkpoint, and nothing newer is saved over it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from unigen.cli import main
from unigen.training.checkpoint import read_checkpoint
from unigen.training.reliability import NonFiniteLossGuard, harden_trainer

BAD_STEP = 3


class Regression(L.LightningModule):
    """Fits y = 2x; its loss turns NaN at ``BAD_STEP`` (as an overflow would).  ``fused``: a fused
    AdamW (which can skip a step on the device) instead of SGD."""

    def __init__(self, manual: bool = False, fused: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.automatic_optimization = not manual
        self.fused = fused
        self.weights_seen: dict[int, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        self.weights_seen[self.global_step] = self.weight.detach().clone()
        x = torch.linspace(0, 1, 8)
        loss = ((self.weight * x - 2 * x) ** 2).mean()
        if self.global_step == BAD_STEP:
            loss = loss * float("nan")
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return None

    def configure_optimizers(self):
        if self.fused:
            return torch.optim.AdamW(self.parameters(), lr=0.1, fused=True)
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(100, 1), batch_size=1)


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual_backward"])
def test_guard_stops_before_the_update_and_keeps_the_last_good_checkpoint(tmp_path, manual):
    model = Regression(manual)
    trainer = harden_trainer(L.Trainer(
        accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(every_n_train_steps=1, save_top_k=-1)]))
    with pytest.raises(FloatingPointError) as err:
        trainer.fit(model)
    last = tmp_path / "checkpoints" / "last.ckpt"
    message = str(err.value)
    assert f"at step {BAD_STEP}" in message and str(last) in message and "\n" not in message
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert saved == [*(f"epoch=0-step={s}.ckpt" for s in range(1, BAD_STEP + 1)), "last.ckpt"]
    ckpt = read_checkpoint(last)
    assert ckpt["global_step"] == BAD_STEP
    good = model.weights_seen[BAD_STEP]
    assert torch.isfinite(good) and torch.equal(ckpt["state_dict"]["weight"], good)
    assert torch.equal(model.weight.detach(), good), "the NaN step must not update the weights"


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual_backward"])
def test_deferred_guard_skips_the_bad_update_on_the_device_and_stops_before_the_next_save(
        tmp_path, manual):
    """The GPU mode (forced here on the CPU, whose AdamW has the same fused kernel): no host read
    before backward, the bad step's update dropped through ``found_inf``, the error raised before
    the next checkpoint is written, the same files and weights as the immediate check."""
    model = Regression(manual, fused=True)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[NonFiniteLossGuard(defer=True, check_every_n_steps=100),
                   ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=1,
                                   save_top_k=-1, save_last=True)])
    with pytest.raises(FloatingPointError) as err:
        trainer.fit(model)
    message = str(err.value)
    assert f"at step {BAD_STEP}: its update was skipped" in message and "\n" not in message
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(last) in message
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert saved == [*(f"epoch=0-step={s}.ckpt" for s in range(1, BAD_STEP + 1)), "last.ckpt"]
    good = model.weights_seen[BAD_STEP]
    assert torch.equal(model.weight.detach(), good), "the NaN step must not update the weights"
    opt = trainer.optimizers[0]
    assert int(opt.state[model.weight]["step"]) == BAD_STEP, "a skipped step does not count"
    assert not hasattr(opt, "found_inf"), "no skip flag is left on the optimizer"


def test_deferred_guard_trains_on_after_a_bad_step_until_its_check(tmp_path):
    """Between checks a finite step after the bad one trains normally; the error names the bad
    step and where it was found."""
    model = Regression(fused=True)
    trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path,
                        callbacks=[NonFiniteLossGuard(defer=True, check_every_n_steps=5)])
    with pytest.raises(FloatingPointError, match=f"at step {BAD_STEP}: .*found at step 5"):
        trainer.fit(model)
    seen = model.weights_seen
    assert torch.equal(seen[BAD_STEP + 1], seen[BAD_STEP]), "the bad step changed the weights"
    assert torch.isfinite(model.weight) and not torch.equal(model.weight.detach(), seen[BAD_STEP + 1])
    assert int(trainer.optimizers[0].state[model.weight]["step"]) == 4  # 5 steps, one skipped


def test_deferred_guard_needs_an_optimizer_that_can_skip(tmp_path):
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=[NonFiniteLossGuard(defer=True)])
    with pytest.raises(ValueError, match="needs one process and one fused optimizer"):
        trainer.fit(Regression())  # SGD, not fused


def test_guard_without_any_checkpoint_says_so(tmp_path):
    trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, callbacks=[NonFiniteLossGuard()],
                        default_root_dir=tmp_path)
    with pytest.raises(FloatingPointError, match="at step 3.*no checkpoint had been written"):
        trainer.fit(Regression())


def _nan_at(step: int):
    def poison(loss: torch.Tensor, global_step: int) -> torch.Tensor:
        return loss * float("nan") if global_step == step else loss

    return poison


@pytest.mark.parametrize("recipe", ["unified", "tokenizer"])
def test_fit_reports_the_step_and_checkpoint_in_one_line(recipe, tokenizer_dirs, tmp_path,
                                                         monkeypatch, capsys):
    """Through ``unigen fit``: the unified model's own check, and the guard callback (tokenizer)."""
    from resume_testkit import tokenizer_case, unified_case

    monkeypatch.chdir(tmp_path)
    poison = _nan_at(2)
    if recipe == "unified":
        from unigen.training.unified_module import UnifiedModule

        case, cls, name = unified_case(tokenizer_dirs), UnifiedModule, "diffusion_loss"
        real = cls.diffusion_loss

        def patched(self, *args, **kwargs):
            loss, per_row = real(self, *args, **kwargs)
            return poison(loss, self.global_step), per_row
    else:
        from unigen.training.tokenizer_module import TokenizerModule

        case, cls, name = tokenizer_case(), TokenizerModule, "_pixel_loss"
        real = cls._pixel_loss

        def patched(self, *args, **kwargs):
            return poison(real(self, *args, **kwargs), self.global_step)
    monkeypatch.setattr(cls, name, patched)
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(case.argv(root))
    assert exc.value.code == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unigen:")]
    last = root / "checkpoints" / "last.ckpt"
    assert len(errors) == 1 and "non-finite training loss (nan) at step 2" in errors[0]
    assert str(last) in errors[0]
    assert read_checkpoint(last)["global_step"] == 2
    assert not (root / "export").exists(), "a run stopped by a NaN exports nothing"


def test_unified_module_brings_its_guard_and_keeps_the_trainers(tokenizer_dirs, tmp_path):
    """A plain Trainer gets the guard from the module; one already on the Trainer (as ``unigen
    fit`` installs, or a recipe's own settings) is kept, not replaced."""
    from unigen.training.unified_module import UnifiedModule

    module = UnifiedModule(image_size=32, max_text_len=24, dim=32, depth=1, heads=2, **tokenizer_dirs)
    plain = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    module.trainer = plain
    assert [type(cb) for cb in module.configure_callbacks()] == [NonFiniteLossGuard]
    own = NonFiniteLossGuard(defer=False, check_every_n_steps=7)
    hardened = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, callbacks=[own])
    module.trainer = hardened
    assert module.configure_callbacks() == []
