"""The FSDP preset trains, checkpoints, resumes and exports on one GPU (a one-process FSDP run: the
same wrapping, sharded state and full-state checkpoint as N GPUs, without needing N)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp_preset_fits_resumes_and_exports_on_one_gpu(tokenizer_dirs, tmp_path, monkeypatch):
    from unigen.cli import main
    from unigen.pipeline import UnifiedPipeline

    monkeypatch.chdir(tmp_path)
    common = ["--config", str(ROOT / "recipes" / "debug" / "unified_debug.yaml"),
              "--config", str(ROOT / "recipes" / "presets" / "fsdp.yaml"),
              "--trainer.devices", "1", "--trainer.limit_val_batches", "0",
              "--trainer.num_sanity_val_steps", "0", "--trainer.default_root_dir", "run",
              "--trainer.logger", "false",
              "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
              "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
              "--model.init_args.val_sampling", "{}"]
    assert main(["fit", *common, "--trainer.max_steps", "3"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert main(["fit", *common, "--trainer.max_steps", "5", "--ckpt_path", "last"]) == 0
    # FSDP checkpoints are consolidated (state_dict_type: full): export from one, as docs/scale.md says
    assert main(["export", "--ckpt", "run/checkpoints/last.ckpt", "--out", "model"]) == 0
    pipe = UnifiedPipeline.from_pretrained(tmp_path / "model")
    images = pipe.text_to_image(["a red circle"], num_steps=2, seed=0, output="tensor")
    assert images.shape[0] == 1 and torch.isfinite(images).all()
