"""Validation and test as one evaluation: the same step and the same end-of-epoch sample logging,
told apart only by the stage name in the logged keys (``val/...``, ``test/...``)."""

from __future__ import annotations

from typing import Any


class EvaluationStages:
    """Mixin for LightningModules (listed before ``L.LightningModule``): ``validation_step`` /
    ``test_step`` call ``self._evaluation_step(stage, batch, batch_idx)``, which may keep a batch in
    ``self._sample_batch``; each epoch's end calls ``self._log_samples(stage)`` (grids, generation
    metrics), except during Lightning's sanity check."""

    _sample_batch: Any = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step("val", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # two batches before training: not worth a grid
            self._sample_batch = None
            return
        self._log_samples("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Validation's losses on the data module's test split, logged under ``test/``
        (``unigen test --config RECIPE --ckpt_path CKPT``)."""
        self._evaluation_step("test", batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_samples("test")
